"""Parallelism, applied from outside the (single-device) model: process groups, DDP, FSDP2, checkpointing.

Launch with torchrun; every rank runs the same program::

    torchrun --nproc-per-node 8 -m vistune train recipes/study/siglip-qwen15-0.5b.yaml --output runs/a
    # several machines: same command on each, plus
    #   --nnodes 4 --node-rank $RANK --rdzv-backend c10d --rdzv-endpoint $HEAD:29500 --rdzv-id run42

Strategies (``parallel.strategy``):

* ``single`` — one process; ``auto`` picks it when ``WORLD_SIZE`` is 1.
* ``ddp`` — ``DistributedDataParallel`` over the trainable parameters (``auto`` with several ranks). Frozen
  parameters are not synchronised. Every trainable parameter must receive a gradient in every backward, so
  the trainer adds a zero-weighted touch of each trainable parameter to the loss, and the model runs its
  vision tower on a dummy view for text-only batches (``always_run_vision``).
* ``fsdp`` — FSDP2 ``fully_shard`` with one unit per LLM decoder layer, one unit for the vision encoder and
  the root unit for the rest (embeddings, head, connector, newline). Frozen parameters are sharded like the
  rest and simply get no gradient. With bf16 precision the parameters stay fp32 (master weights) and the
  policy computes in bf16 with fp32 gradient reduction (``MixedPrecisionPolicy(bf16, reduce_dtype=fp32)``),
  matching the reference's DeepSpeed numerics.

Order (torchtitan's): activation checkpointing -> (compile) -> DDP/FSDP. Gradient checkpointing uses the
Hugging Face implementation of the LLM (and of the vision encoder when it trains), non-reentrant.

Per-step data sharding is not done here: :class:`vistune.train.sampler.BatchPlan` assigns micro-batches
to ranks, identically on every rank.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vistune.config import ConfigError
from vistune.config.train import ParallelConfig

log = logging.getLogger("vistune.train")


@dataclass
class DistInfo:
    """Where this process stands: rank, world size, its device, and whether we created the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(cfg: ParallelConfig | None = None, device: str | None = None) -> DistInfo:
    """Join the torchrun process group (if ``WORLD_SIZE > 1``) and pick this rank's device.

    The device is ``cuda:LOCAL_RANK`` when CUDA is available, else CPU (the gloo backend). ``device``
    forces one (e.g. ``"cpu"`` for tests on a GPU machine).
    """
    cfg = cfg or ParallelConfig()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device(device or "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    info = DistInfo(rank, world, local, dev)
    if world > 1:
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if use_cuda else "gloo")
        if not dist.is_initialized():
            dist.init_process_group(
                backend=backend,
                timeout=datetime.timedelta(minutes=cfg.timeout_minutes),
                device_id=dev if use_cuda else None,
            )
            info.owns_group = True
        info.backend = dist.get_backend()
        info.rank, info.world_size = dist.get_rank(), dist.get_world_size()
    return info


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def resolve_strategy(cfg: ParallelConfig, info: DistInfo) -> str:
    strategy = cfg.strategy
    if strategy == "auto":
        return "ddp" if info.distributed else "single"
    if strategy in ("ddp", "fsdp") and not info.distributed:
        log.info("parallel.strategy=%s with one process: running single-process", strategy)
        return "single"
    if strategy == "single" and info.distributed:
        raise ConfigError(
            f"parallel.strategy=single but {info.world_size} processes were launched; use ddp or fsdp"
        )
    return strategy


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on a GPU that supports it, fp32 otherwise; ``bf16``/``fp32`` as asked."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def enable_gradient_checkpointing(model: nn.Module, trainable: tuple[str, ...] | list[str]) -> None:
    """Non-reentrant activation checkpointing of the LLM decoder layers (and the vision encoder's when it
    trains), through the backbones' own Hugging Face switch."""
    kwargs = {"use_reentrant": False}
    targets = [model.llm]
    enc = model.vision.model
    if "vision" in trainable and getattr(enc, "supports_gradient_checkpointing", False):
        targets.append(enc)
    for m in targets:
        if hasattr(m, "activation_checkpointing_enable"):  # transformers >= 5.x name
            m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def apply_compile(model: nn.Module, backend: str | None = None) -> int:
    """``torch.compile`` each LLM decoder layer and each vision encoder layer in place (per-block compile,
    like torchtitan): shapes vary with AnyRes and packing, so ``dynamic=True``; the blocks are the hot path
    and compiling them separately keeps graph breaks (image splicing, Python loops) outside. Returns the
    number of compiled blocks. ``VISTUNE_COMPILE_BACKEND`` overrides the backend (tests use ``eager``)."""
    import os

    backend = backend or os.environ.get("VISTUNE_COMPILE_BACKEND", "inductor")
    blocks = list(model.llm.get_decoder().layers)
    enc = model.vision.model
    enc_layers = enc.encoder.layers if hasattr(enc, "encoder") else enc.vision_model.encoder.layers
    blocks += list(enc_layers)
    for b in blocks:
        b.compile(dynamic=True, backend=backend)
    return len(blocks)


def apply_parallelism(
    model: nn.Module,
    strategy: str,
    info: DistInfo,
    *,
    dtype: torch.dtype = torch.float32,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Wrap ``model`` (already on ``info.device``) for ``strategy``; returns the module to call."""
    if strategy == "single":
        return model
    model.always_run_vision = True
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids, broadcast_buffers=False, find_unused_parameters=False)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        kw: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
        if dtype != torch.float32:
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        fully_shard(model.vision, **kw)  # the wrapper, not the HF module (its output capture breaks)
        layers = model.llm.get_decoder().layers
        for i, layer in enumerate(layers):
            # the last layer's parameters are needed again at once by the backward: keep them gathered
            fully_shard(
                layer, **{**kw, "reshard_after_forward": reshard_after_forward and i < len(layers) - 1}
            )
        fully_shard(model, **kw)
        return model
    raise ConfigError(f"parallel.strategy: unknown strategy {strategy!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The VistuneModel inside a DDP wrapper (FSDP2 shards in place, so it is already the model)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return model.module if isinstance(model, DDP) else model


def no_sync(model: nn.Module, skip_sync: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` for the micro-batches before the last of an accumulation round."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if skip_sync and isinstance(model, DDP):
        return model.no_sync()
    return contextlib.nullcontext()


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a float64 vector over ranks (a no-op in one process). Runs on the communication device."""
    if not info.distributed:
        return values
    dev = info.device if info.backend == "nccl" else torch.device("cpu")
    t = values.to(dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(values.device)


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def grad_norm_value(norm: torch.Tensor) -> float:
    """A float from ``clip_grad_norm_``'s result (a DTensor under FSDP2)."""
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_reduce_sum",
    "apply_parallelism",
    "barrier",
    "broadcast_object",
    "apply_compile",
    "enable_gradient_checkpointing",
    "grad_norm_value",
    "init_distributed",
    "no_sync",
    "resolve_precision",
    "resolve_strategy",
    "shutdown",
    "unwrap",
]
