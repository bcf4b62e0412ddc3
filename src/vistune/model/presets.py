"""Built-in tiny backbones: construct with no files at all (random weights, the shipped tiny tokenizer).

Component presets (exact names):

* vision: ``tiny-siglip`` (32 px views, 4 px patches -> 8x8 tokens), ``tiny-clip`` (same + CLS),
  ``tiny-siglip-64`` (64 px views, 8 px patches -> 8x8 tokens at twice the resolution);
* LLM: ``tiny-qwen2``, ``tiny-llama``.

Model presets combine them into a full :class:`~vistune.config.ModelConfig` (``tiny``, ``tiny-clip-llama``)
and are accepted wherever a model path is (``vistune tokens --model tiny``).
"""

from __future__ import annotations

import copy
from typing import Any

from vistune.config import ConfigError

VISION_PRESETS: dict[str, dict[str, Any]] = {
    "tiny-siglip": {
        "model_type": "siglip_vision_model",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 4,
        "vision_use_head": False,
    },
    "tiny-siglip-64": {
        "model_type": "siglip_vision_model",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 64,
        "patch_size": 8,
        "vision_use_head": False,
    },
    "tiny-clip": {
        "model_type": "clip_vision_model",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 4,
        "projection_dim": 64,
    },
}

LLM_PRESETS: dict[str, dict[str, Any]] = {
    "tiny-qwen2": {
        "model_type": "qwen2",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1024,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        "rope_theta": 10000.0,
    },
    "tiny-llama": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 1024,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    },
}

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision": {"preset": "tiny-siglip", "feature_layer": -1},
        "connector": {"type": "mlp2x_gelu"},
        "llm": {"preset": "tiny-qwen2"},
        "visual": {"grids": "max:3x3", "cap": "total", "max_tokens": "4 tiles"},
        "chat_template": "qwen_1_5",
    },
    "tiny-clip-llama": {
        "vision": {"preset": "tiny-clip", "feature_layer": -2},
        "connector": {"type": "mlp2x_relu"},
        "llm": {"preset": "tiny-llama"},
        "visual": {"grids": "llava_next", "cap": "none", "max_tokens": None},
        "chat_template": "vicuna_v1",
    },
}


def _get(table: dict[str, dict[str, Any]], name: str, kind: str) -> dict[str, Any]:
    if name not in table:
        raise ConfigError(f"{kind}.preset: unknown preset {name!r}; known: {', '.join(sorted(table))}")
    return copy.deepcopy(table[name])


def vision_preset(name: str) -> dict[str, Any]:
    return _get(VISION_PRESETS, name, "vision")


def llm_preset(name: str) -> dict[str, Any]:
    return _get(LLM_PRESETS, name, "llm")


def model_preset(name: str) -> dict[str, Any]:
    """A built-in model preset, or a synthetic-world preset (``world-s`` ...) whose pretrained tiny backbones
    load from their folders (:mod:`vistune.data.synthetic.backbones`)."""
    if name in MODEL_PRESETS:  # built-in: no need to import the synthetic-world package
        return _get(MODEL_PRESETS, name, "model")
    from vistune.data.synthetic.backbones import WORLD_MODELS, BackboneNotFound, world_model_preset

    if name not in WORLD_MODELS:
        known = sorted([*MODEL_PRESETS, *WORLD_MODELS])
        raise ConfigError(f"model.preset: unknown preset {name!r}; known: {', '.join(known)}")
    try:
        return world_model_preset(name)
    except BackboneNotFound as e:
        raise ConfigError(f"model.preset: {e}") from e


def is_model_preset(name: str) -> bool:
    if name in MODEL_PRESETS:
        return True
    from vistune.data.synthetic.backbones import WORLD_MODELS

    return name in WORLD_MODELS
