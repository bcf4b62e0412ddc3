"""Training-step throughput: vistune vs transformers' LlavaOnevisionForConditionalGeneration.

Same process, same weights, same four samples. One "step" = forward + backward over all four samples (in the
mode's micro-batches) + one AdamW step. Prints JSON with real (non-padding) tokens/s, the ratio to
transformers at batch 2, MFU counting vision FLOPs (GPU), peak memory and padding fraction, and the device.

    python bench/train_step.py --tiny            # CPU, seconds
    python bench/train_step.py --device cuda     # real shapes (SigLIP-SO400M-26L + Qwen2-0.5B), bf16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build, device_name, emit, make_items, sync, timed, to_hf_batch  # noqa: E402
from vistune.data.packing import collate_packed, collate_padded  # noqa: E402
from vistune.train.monitor import FlopsModel, peak_flops  # noqa: E402

_META = ("num_tokens", "num_padding", "seq_lens")


def _vistune_step(model, batches, opt):
    def step():
        for b in batches:
            kwargs = {k: v for k, v in b.items() if k not in _META}
            out = model(**kwargs, return_logits=False)
            out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _hf_step(hf, batches, opt):
    def step():
        for b in batches:
            out = hf(**b)
            out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _profile(fn, device, top: int) -> dict[str, Any]:
    """One profiled step: share of device time per kernel family and the ``top`` costliest kernels."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    if device.type == "cuda":  # kernels only (device-side events), not the CPU-side op wrappers
        events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA] or events
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    families = {"attention": 0.0, "gemm": 0.0, "softmax/loss": 0.0, "other": 0.0}
    for e in events:
        name = e.key.lower()
        fam = (
            "attention"
            if any(w in name for w in ("flash", "fmha", "attention", "cudnn", "sdpa", "mem_eff"))
            else "gemm"
            if any(
                w in name for w in ("gemm", "matmul", "aten::mm", "bmm", "cutlass", "nvjet", "xmma", "addmm")
            )
            else "softmax/loss"
            if any(w in name for w in ("softmax", "cross_entropy", "nll", "log_softmax"))
            else "other"
        )
        families[fam] += getattr(e, key)
    return {
        "device_time_ms": round(total / 1e3, 2),
        "share": {k: round(v / total, 4) for k, v in families.items()},
        "top": [
            {"kernel": e.key[:120], "share": round(getattr(e, key) / total, 4), "calls": e.count}
            for e in events[:top]
        ],
    }


def _to(batch: dict[str, Any], device, dtype) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true", help="built-in tiny preset on CPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="bfloat16 (GPU default) | float32 (CPU default)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing in both")
    ap.add_argument("--modes", default="transformers_b2,vistune_b2,vistune_packed,transformers_b1,vistune_b1")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after timing, profile one more step of each mode and report its N costliest kernels",
    )
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    model, proc, hf = build(args.tiny, device, dtype)
    model.train()
    hf.train()
    if args.grad_ckpt:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.vision.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    items = make_items(proc, args.tiny)
    pad = proc.tokenizer.pad_token_id
    real_tokens = sum(len(it["input_ids"]) for it in items)
    views = sum(int(it["pixel_values"].shape[0]) for it in items)
    supervised = sum(sum(1 for x in it["labels"][1:] if x != -100) for it in items)
    flops_model = FlopsModel(model, ["vision", "connector", "llm", "newline"])
    step_flops = flops_model.batch_flops([len(it["input_ids"]) for it in items], views, supervised)
    peak = peak_flops(device)

    def padded(bs):
        return [collate_padded(items[i : i + bs], pad) for i in range(0, len(items), bs)]

    results: dict[str, Any] = {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if mode.startswith("transformers"):
            bs = int(mode.split("_b")[1])
            batches = [
                _to(to_hf_batch(b, items[i * bs : (i + 1) * bs]), device, dtype)
                for i, b in enumerate(padded(bs))
            ]
            n_pad = sum(int(b["attention_mask"].numel() - b["attention_mask"].sum()) for b in batches)
            opt = torch.optim.AdamW([p for p in hf.parameters() if p.requires_grad], lr=1e-6)
            fn = _hf_step(hf, batches, opt)
        else:
            raw = [collate_packed(items)] if mode == "vistune_packed" else padded(int(mode.split("_b")[1]))
            n_pad = sum(b["num_padding"] for b in raw)
            batches = [_to(b, device, dtype) for b in raw]
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
            fn = _vistune_step(model, batches, opt)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            sec = timed(fn, device, args.warmup, args.steps)
            prof = _profile(fn, device, args.profile) if args.profile else None
        except torch.OutOfMemoryError:
            results[mode] = {"error": "out of memory"}
            continue
        finally:
            del opt
            model.zero_grad(set_to_none=True)
            hf.zero_grad(set_to_none=True)
        sync(device)
        total = real_tokens + n_pad
        results[mode] = {
            "step_s": round(sec, 4),
            "real_tokens_per_s": round(real_tokens / sec, 1),
            "padding_fraction": round(n_pad / total, 4),
            "mfu": round(step_flops / sec / peak, 4) if peak else None,
            "tflops_per_s": round(step_flops / sec / 1e12, 3),
            "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if device.type == "cuda"
            else None,
        }
        if prof:
            results[mode]["profile"] = prof
    base = results.get("transformers_b2", {}).get("real_tokens_per_s")
    for r in results.values():
        if base and "real_tokens_per_s" in r:
            r["ratio_vs_transformers_b2"] = round(r["real_tokens_per_s"] / base, 3)
    out = {
        "bench": "train_step",
        "device": device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "config": "tiny" if args.tiny else "siglip-so400m-26L + qwen2-0.5b, anyres_max_9, 6x6",
        "grad_ckpt": args.grad_ckpt,
        "samples": len(items),
        "real_tokens": real_tokens,
        "visual_views": views,
        "flops_per_step": step_flops,
        "torch": torch.__version__,
        "modes": results,
    }
    emit(out)
    return out


if __name__ == "__main__":
    main()
