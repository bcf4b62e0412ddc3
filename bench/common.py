"""Shared set-up for the benchmarks: the same model weights and the same samples for vistune and transformers.

Real shapes (default; needs a GPU): SigLIP-SO400M/384 truncated to 26 layers + Qwen2-0.5B, random weights,
``anyres_max_9`` over the 6x6 grid set, one image per sample of 1024x768, 640x480, 1920x1080 and 1200x800
(W x H) with 200-600 text tokens. ``--tiny``: the built-in tiny preset at the same image sizes scaled to its
32 px views (runs on a laptop CPU).
"""

from __future__ import annotations

import json
import platform
import random
import time
from typing import Any

import torch

IMAGE_SIZES_WH = [(1024, 768), (640, 480), (1920, 1080), (1200, 800)]
TEXT_LENGTHS = [200, 600, 350, 450]

SIGLIP_SO400M_26 = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "vision_use_head": False,
}
QWEN2_05B = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}


def model_config(tiny: bool) -> dict[str, Any]:
    if tiny:
        from vistune.model.presets import model_preset

        cfg = model_preset("tiny")
        cfg["visual"] = {"grids": "max:3x3", "cap": "total", "max_tokens": "4 tiles"}
        return cfg
    return {
        "vision": {"hf_config": SIGLIP_SO400M_26, "feature_layer": -1},
        "connector": {"type": "mlp2x_gelu"},
        "llm": {"hf_config": QWEN2_05B},
        "visual": {"grids": "(1x1),...,(6x6)", "cap": "total", "max_tokens": "9 tiles"},
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def build(tiny: bool, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """(vistune model, processor, transformers model with identical weights)."""
    from vistune import build_model
    from vistune.model.interop.hf import to_hf_model

    torch.manual_seed(seed)
    model, proc = build_model(model_config(tiny), device="cpu", dtype="float32")
    model.to(device=device, dtype=dtype)
    hf = to_hf_model(model, "llava_onevision", device=device)
    return model, proc, hf


def make_items(
    proc: Any, tiny: bool, seed: int = 0, supervised_fraction: float = 0.3
) -> list[dict[str, Any]]:
    """Assembled samples (image tokens expanded; the last 30% of each text supervised)."""
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    vocab = min(len(proc.tokenizer), 1000)
    scale = 12 if tiny else 1
    items = []
    for (w, h), n_text in zip(IMAGE_SIZES_WH, TEXT_LENGTHS, strict=True):
        w, h = max(1, w // scale), max(1, h // scale)
        arr = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (h, w, 3), dtype=np.uint8)
        processed = proc.preprocess_image(Image.fromarray(arr))
        text = [rng.randrange(20, vocab) for _ in range(n_text // (4 if tiny else 1))]
        text = [t for t in text if t != proc.image_token_id]
        ids = [proc.image_token_id] + text
        n_sup = int(len(text) * supervised_fraction)
        labels = [-100] * (len(ids) - n_sup) + ids[len(ids) - n_sup :]
        ids, labels = proc.expand_image_tokens(ids, [processed.plan], labels)
        items.append(
            {
                "input_ids": ids,
                "labels": labels,
                "pixel_values": processed.pixel_values,
                "image_sizes": [processed.plan.image_hw],
                "image_single_view": [False],
            }
        )
    return items


def to_hf_batch(batch: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """transformers' layout: crops zero-padded per image to a 5-D tensor, + image_sizes / batch_num_images."""
    views = [it["pixel_values"] for it in items]
    most = max(v.shape[0] for v in views)
    pix = torch.zeros(len(views), most, *views[0].shape[1:], dtype=views[0].dtype)
    for i, v in enumerate(views):
        pix[i, : v.shape[0]] = v
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": batch["labels"],
        "pixel_values": pix,
        "image_sizes": batch["image_sizes"],
        "batch_num_images": torch.ones(len(items), dtype=torch.long),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2))
