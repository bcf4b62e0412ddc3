"""The study's cost table: training-step time for its (max grids, max tokens) settings on an image-size mix.

For each setting — 2x2 (4+1)T without interpolation; 4x4, 5x5, 6x6 with (4+1)T; 6x6 with (9+1)T and
(16+1)T, all with the thresholded interpolation (per-grid cap) — the same samples are assembled under that
visual setting and one packed training step (forward + backward + AdamW) is timed. Prints JSON with the
predicted visual tokens per sample (the token-count function), the step time and its ratio to the first
setting, next to the study's training-time ratios (6h30m : 7h30m : 7h50m : 8h05m : 11h14m : 13h10m).

    python bench/cost_table.py --tiny
    python bench/cost_table.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build, device_name, emit, make_items, timed  # noqa: E402
from vistune.data.packing import collate_packed  # noqa: E402

SETTINGS = [
    ("2x2", "(4+1)*T", {"grids": "max:2x2", "cap": "none", "max_tokens": None}, 6 * 60 + 30),
    ("4x4", "(4+1)*T", {"grids": "max:4x4", "cap": "per_grid", "max_tokens": "5 tiles"}, 7 * 60 + 30),
    ("5x5", "(4+1)*T", {"grids": "max:5x5", "cap": "per_grid", "max_tokens": "5 tiles"}, 7 * 60 + 50),
    ("6x6", "(4+1)*T", {"grids": "max:6x6", "cap": "per_grid", "max_tokens": "5 tiles"}, 8 * 60 + 5),
    ("6x6", "(9+1)*T", {"grids": "max:6x6", "cap": "per_grid", "max_tokens": "10 tiles"}, 11 * 60 + 14),
    ("6x6", "(16+1)*T", {"grids": "max:6x6", "cap": "per_grid", "max_tokens": "17 tiles"}, 13 * 60 + 10),
]
_META = ("num_tokens", "num_padding", "seq_lens")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    model, proc, hf = build(args.tiny, device, dtype)
    del hf
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    rows = []
    for grids, tokens, visual, study_minutes in SETTINGS:
        model.set_visual(**visual)
        items = make_items(proc, args.tiny)
        batch = {
            k: (
                v.to(device, dtype)
                if isinstance(v, torch.Tensor) and v.is_floating_point()
                else v.to(device)
                if isinstance(v, torch.Tensor)
                else v
            )
            for k, v in collate_packed(items).items()
            if k not in _META
        }

        def step(batch=batch):
            out = model(**batch, return_logits=False)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        sec = timed(step, device, args.warmup, args.steps)
        vis = sum(proc.plan(it["image_sizes"][0]).num_tokens for it in items) / len(items)
        rows.append(
            {
                "max_grids": grids,
                "max_tokens": tokens,
                "visual_tokens_per_sample": round(vis, 1),
                "step_s": round(sec, 4),
                "study_minutes": study_minutes,
            }
        )
    for r in rows:
        r["step_ratio"] = round(r["step_s"] / rows[0]["step_s"], 3)
        r["study_ratio"] = round(r["study_minutes"] / rows[0]["study_minutes"], 3)
        r["visual_token_ratio"] = round(
            r["visual_tokens_per_sample"] / rows[0]["visual_tokens_per_sample"], 3
        )
    out = {
        "bench": "cost_table",
        "device": device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "config": "tiny" if args.tiny else "siglip-so400m-26L + qwen2-0.5b",
        "image_mix_wh": "1024x768, 640x480, 1920x1080, 1200x800" + (" (scaled 1/12)" if args.tiny else ""),
        "rows": rows,
    }
    emit(out)
    return out


if __name__ == "__main__":
    main()
