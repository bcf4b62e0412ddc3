"""LLM + tokenizer loading and the multimodal special tokens.

Any transformers causal LM loads from a local folder (``AutoModelForCausalLM``); presets and HF config dicts
build random-initialised models with the shipped tiny tokenizer. ``<image>``/``<video>`` are added to the
tokenizer when missing; if the embedding matrix has no spare row for them it is resized and the new rows are
initialised from the mean and covariance of the existing embeddings (transformers' ``mean_resizing``), so the
new token starts "typical" rather than random-large. Models with spare rows (Qwen) need no resize.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vistune.config import ConfigError, LLMConfig


def build_llm(
    cfg: LLMConfig,
    *,
    hf_config: dict[str, Any] | None = None,
    tokenizer_path: str | Path | None = None,
    load_weights: bool = True,
) -> tuple[nn.Module, Any]:
    """Return ``(causal_lm, tokenizer)`` for an LLM config (local folder, preset or HF config dict)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from vistune.model.presets import llm_preset
    from vistune.model.tokenizer import load_tiny_tokenizer

    hf_dict: dict[str, Any] | None
    if hf_config is not None:
        hf_dict = dict(hf_config)
    elif cfg.preset is not None:
        hf_dict = llm_preset(cfg.preset)
    elif cfg.hf_config is not None:
        hf_dict = dict(cfg.hf_config)
    else:
        hf_dict = None

    attn = cfg.attn_implementation
    if attn == "sdpa":
        from vistune.model.attention import register

        attn = register()  # sdpa + document-isolated attention for packed rows
    if hf_dict is not None:
        if "model_type" not in hf_dict:
            raise ConfigError("llm.hf_config: needs a 'model_type' (e.g. qwen2, llama)")
        kwargs = {k: v for k, v in hf_dict.items() if k != "model_type"}
        try:
            hf_cfg = AutoConfig.for_model(hf_dict["model_type"], **kwargs)
        except ValueError as exc:
            raise ConfigError(f"llm.hf_config: {exc}") from None
        hf_cfg._attn_implementation = attn
        model = AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=attn)
        tok = AutoTokenizer.from_pretrained(str(tokenizer_path)) if tokenizer_path else load_tiny_tokenizer()
    else:
        path = Path(cfg.path).expanduser()
        if not path.is_dir():
            raise ConfigError(f"llm.path: {path} is not a folder (expected a local HF checkpoint)")
        if load_weights:
            model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation=attn)
        else:
            model = AutoModelForCausalLM.from_config(
                AutoConfig.from_pretrained(str(path)), attn_implementation=attn
            )
        tok = AutoTokenizer.from_pretrained(str(tokenizer_path or path))
    if tok.pad_token is None:
        # never fall back to id 0 (the reference's quirk): reuse an existing end/unknown token
        tok.pad_token = tok.eos_token or tok.unk_token
    return model, tok


def ensure_special_tokens(model: nn.Module, tokenizer: Any, tokens: list[str]) -> dict[str, int]:
    """Make sure each token exists in the tokenizer and has an embedding row; return their ids."""
    missing = [t for t in tokens if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in tokens}
    emb = model.get_input_embeddings()
    need = max(max(ids.values()) + 1, len(tokenizer))
    if need > emb.num_embeddings:
        model.resize_token_embeddings(need, mean_resizing=True)
    return ids


_CACHE_KWARG: dict[type, str] = {}


def cache_kwarg(module: nn.Module) -> str:
    """Name of the KV-cache argument (``cache`` in recent transformers, ``past_key_values`` before)."""
    cls = type(module)
    if cls not in _CACHE_KWARG:
        params = inspect.signature(module.forward).parameters
        _CACHE_KWARG[cls] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KWARG[cls]


def output_cache(out: Any) -> Any:
    for name in ("cache", "past_key_values"):
        val = getattr(out, name, None)
        if val is not None:
            return val
    return None


def lm_head_weight(model: nn.Module) -> torch.Tensor:
    head = model.get_output_embeddings()
    if head is None:
        raise ConfigError("llm: the language model has no output embedding (lm_head)")
    return head.weight
