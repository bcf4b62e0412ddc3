"""Batched greedy generation: vistune vs transformers' LlavaOnevisionForConditionalGeneration.generate.

Same process, same weights, same prompts (one image each, left padding). Prints JSON with new tokens/s for
transformers, vistune with a dynamic cache, vistune with a static cache and (GPU) a compiled decode step, and
whether every variant produced exactly transformers' tokens. Each variant is also timed generating a single
token (vision + prefill + first token), so the decode phase is reported on its own: with ~9k-token prompts
the prefill is most of an end-to-end 64-token run.

    python bench/generate.py --tiny
    python bench/generate.py --device cuda --batch 16 --new-tokens 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IMAGE_SIZES_WH, build, device_name, emit, sync  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import time

    import numpy as np
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    model, proc, hf = build(args.tiny, device, dtype)
    model.eval()
    hf.eval()
    rng = np.random.default_rng(0)
    scale = 12 if args.tiny else 1
    words = " ".join(["the red circle is left of the blue square"] * (args.prompt_tokens // 9 + 1))
    prompts, images = [], []
    for i in range(args.batch):
        w, h = IMAGE_SIZES_WH[i % len(IMAGE_SIZES_WH)]
        arr = rng.integers(0, 256, (max(1, h // scale), max(1, w // scale), 3), dtype=np.uint8)
        images.append([Image.fromarray(arr)])
        prompts.append(f"<image>\n{words[: 40 * (i % 3 + 1) * 6]} Describe the image.")
    batch = proc(text=prompts, images=images, padding_side="left")
    batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    views = [len(p.crop_boxes) + 1 for p in model.plan(batch["image_sizes"], batch["image_single_view"])]
    most = max(views)
    pix = torch.zeros(len(views), most, *batch["pixel_values"].shape[1:], dtype=dtype, device=device)
    o = 0
    for i, n in enumerate(views):
        pix[i, :n] = batch["pixel_values"][o : o + n]
        o += n
    hf_inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "pixel_values": pix,
        "image_sizes": batch["image_sizes"],
        "batch_num_images": torch.ones(len(views), dtype=torch.long, device=device),
    }
    n_new = args.new_tokens
    never = {"eos_token_id": [], "pad_token_id": proc.tokenizer.pad_token_id}

    def run(fn):
        best, out = float("inf"), None
        for _ in range(args.repeats):
            sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                out = fn()
            sync(device)
            best = min(best, time.perf_counter() - t0)
        return best, out

    L = hf_inputs["input_ids"].shape[1]

    def hf_gen(n):
        return lambda: hf.generate(**hf_inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, **never)[
            :, L:
        ]

    def split(total_s: float, prefill_s: float) -> dict[str, Any]:
        """The decode phase alone: the run minus a run that generates one token (prefill + first token)."""
        decode_s = max(total_s - prefill_s, 1e-9)
        return {
            "prefill_s": round(prefill_s, 4),
            "decode_new_tokens_per_s": round(args.batch * (n_new - 1) / decode_s, 1),
        }

    t_hf, out_hf = run(hf_gen(n_new))
    p_hf, _ = run(hf_gen(1))
    variants = {"vistune_dynamic": {}, "vistune_static": {"cache_implementation": "static"}}
    if device.type == "cuda":
        variants["vistune_static_compiled"] = {"cache_implementation": "static", "compile_decode": True}
    hf_split = split(t_hf, p_hf)
    res: dict[str, Any] = {
        "transformers": {
            "s": round(t_hf, 4),
            "new_tokens_per_s": round(args.batch * n_new / t_hf, 1),
            **hf_split,
        }
    }
    for name, kw in variants.items():

        def gen(n, kw=kw):
            return lambda: model.generate(**batch, max_new_tokens=n, eos_token_id=[], **kw)

        t, out = run(gen(n_new))
        p, _ = run(gen(1))
        parts = split(t, p)
        res[name] = {
            "s": round(t, 4),
            "new_tokens_per_s": round(args.batch * n_new / t, 1),
            "ratio_vs_transformers": round(t_hf / t, 3),
            **parts,
            "decode_ratio_vs_transformers": round(
                parts["decode_new_tokens_per_s"] / hf_split["decode_new_tokens_per_s"], 3
            ),
            "identical_tokens": bool(torch.equal(out.cpu(), out_hf.cpu())),
        }
    result = {
        "bench": "generate",
        "device": device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "config": "tiny" if args.tiny else "siglip-so400m-26L + qwen2-0.5b, anyres_max_9, 6x6",
        "batch": args.batch,
        "prompt_tokens": L,
        "new_tokens": n_new,
        "torch": torch.__version__,
        "variants": res,
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
