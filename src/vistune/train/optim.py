"""Trainable parts, optimizer parameter groups and the learning-rate schedule.

Rules:

* **Trainable parts.** The model's parameters belong to exactly one part (``model.part_of(name)``):
  ``vision``, ``connector``, ``llm`` (decoder, embeddings and head) or ``newline``. A stage trains the parts
  it lists; every other parameter gets ``requires_grad=False`` (and no optimizer state).
* **Groups.** Each trainable part gets two AdamW groups, ``<part>/decay`` and ``<part>/no_decay``, with the
  part's learning rate. Weight decay never applies to parameters with fewer than two dimensions — biases,
  every normalisation weight (LayerNorm, RMSNorm) and the newline vector — whatever their module is
  called. Empty groups are left out.
* **Schedule.** ``lr(step) = peak x factor(step)`` for the update made at 0-based step ``step`` of
  ``total`` steps, with ``warmup = warmup_steps or ceil(warmup_ratio x total)``:

  - warmup: ``factor = (step + 1) / (warmup + 1)``, rising linearly towards 1, never 0 — the very first
    update already moves the weights;
  - after warmup, with ``progress = (step - warmup) / max(1, total - warmup - 1)`` in ``[0, 1]``:
    ``cosine``: ``min + (1 - min) x 0.5 x (1 + cos(pi x progress))``; ``linear``: ``min + (1 - min) x
    (1 - progress)``; ``constant``: 1. So the first post-warmup step runs at the peak and the last at
    ``min_lr_ratio`` (0 by default, the reference's cosine-to-zero).

  The factor is a pure function of the step: resuming needs no scheduler state.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from vistune.config.train import PARTS, StageConfig


def set_trainable(model: nn.Module, parts: tuple[str, ...] | list[str]) -> dict[str, dict[str, int]]:
    """Freeze everything except ``parts``; return ``{part: {"trainable": n, "frozen": n}}`` (elements)."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown part(s) {sorted(unknown)}; parts are {PARTS}")
    counts = {p: {"trainable": 0, "frozen": 0} for p in PARTS}
    unused = model.unused_parameter_names() if hasattr(model, "unused_parameter_names") else set()
    for name, p in model.named_parameters():
        part = model.part_of(name)
        train = part in parts and name not in unused
        p.requires_grad_(train)
        counts[part]["trainable" if train else "frozen"] += p.numel()
    return counts


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, normalisation weights and other vectors/scalars get no weight decay (``ndim < 2``)."""
    return param.ndim < 2


def param_groups(model: nn.Module, stage: StageConfig) -> list[dict[str, Any]]:
    """AdamW groups ``<part>/decay`` and ``<part>/no_decay`` for the trainable parameters of ``model``.

    ``model`` may be the unwrapped model after FSDP2 sharding (names are kept); each group records its
    ``part``, ``name`` and peak learning rate ``initial_lr``.
    """
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = model.part_of(name)
        buckets.setdefault((part, no_decay(name, p)), []).append(p)
    groups = []
    for part in PARTS:
        for nd in (False, True):
            params = buckets.get((part, nd))
            if not params:
                continue
            lr = stage.lr_for(part)
            groups.append(
                {
                    "params": params,
                    "name": f"{part}/{'no_decay' if nd else 'decay'}",
                    "part": part,
                    "lr": lr,
                    "initial_lr": lr,
                    "weight_decay": 0.0 if nd else stage.weight_decay,
                }
            )
    if not groups:
        raise ValueError(f"stage {stage.name!r}: no trainable parameters in parts {list(stage.trainable)}")
    return groups


def build_optimizer(model: nn.Module, stage: StageConfig) -> torch.optim.AdamW:
    groups = param_groups(model, stage)
    return torch.optim.AdamW(
        groups, lr=groups[0]["lr"], betas=tuple(stage.adam_betas), eps=stage.adam_eps, foreach=True
    )


def warmup_steps(stage: StageConfig, total: int) -> int:
    if stage.warmup_steps is not None:
        return min(stage.warmup_steps, total)
    return min(total, math.ceil(stage.warmup_ratio * total))


def lr_factor(step: int, total: int, warmup: int, kind: str = "cosine", min_ratio: float = 0.0) -> float:
    """Multiplier of the peak LR for the update at 0-based ``step`` (rules in the module docstring)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    span = max(1, total - warmup - 1)
    progress = min(1.0, max(0.0, (step - warmup) / span))
    if kind == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "linear":
        shape = 1.0 - progress
    else:
        raise ValueError(f"unknown scheduler {kind!r}")
    return min_ratio + (1.0 - min_ratio) * shape


def apply_lr(optimizer: torch.optim.Optimizer, factor: float) -> dict[str, float]:
    """Set every group's LR to ``initial_lr x factor``; return ``{part: lr}`` for logging."""
    out: dict[str, float] = {}
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
        out[g["part"]] = g["lr"]
    return out


__all__ = [
    "apply_lr",
    "build_optimizer",
    "lr_factor",
    "no_decay",
    "param_groups",
    "set_trainable",
    "warmup_steps",
]
