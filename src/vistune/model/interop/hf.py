"""Import and export of the Hugging Face ``llava_onevision`` / ``llava_next`` formats.

Import (:func:`import_hf`) lets transformers load the folder (so its own key renames and legacy-checkpoint
mappings apply), maps the config onto a :class:`~vistune.config.ModelConfig` (:func:`hf_model_config`), builds
the vistune model from it and copies the state dicts of transformers' sub-modules into vistune's: vision
tower, projector, language-model decoder + ``lm_head`` and ``image_newline``. Vistune truncates its vision
tower after the selected layer, so the layers it never runs are dropped.

Export (:func:`export_hf`) is the reverse: a transformers model is built from the mapped config, vistune's
weights are copied into it, and transformers writes the folder itself (config, safetensors, generation
config); vistune adds the tokenizer and the processor files (PIL image processor, processor attributes and
a Jinja chat template that renders like vistune's template).

Config mapping (transformers -> vistune; every size is (height, width) on both sides):

============================================  ================================================================
transformers                                   vistune
============================================  ================================================================
``vision_config`` (SigLIP / CLIP)              ``vision.hf_config`` (+ ``image_mean/std`` from the processor)
``vision_feature_layer`` (an int)              ``vision.feature_layer`` (a list of layers: refused)
``vision_feature_select_strategy``             ``"default"`` on CLIP = drop CLS; ``"full"`` on SigLIP = all
                                               patches; ``"default"`` on SigLIP would drop a real patch and
                                               ``"full"`` on CLIP keeps CLS on every crop: both refused
``projector_hidden_act`` gelu / relu           ``connector.type`` mlp2x_gelu / mlp2x_relu
``multimodal_projector_bias``                  ``connector.bias``
``image_grid_pinpoints`` (h, w) pixels         ``visual.grids`` (rows, cols) = pinpoint / vision image_size
``vision_aspect_ratio`` ``anyres_max_N`` (OV)  ``visual.cap="total"``, ``max_tokens="N tiles"``, slack 1.1
llava_next                                     ``visual.cap="none"``
``image_token_index`` / ``video_token_index``  ``image_token`` / ``video_token`` (the tokenizer's strings)
``text_config`` (+ top-level tie flag)         ``llm.hf_config``; tokenizer = the folder
============================================  ================================================================

Always: AnyRes on, squashed base view, unpadding with transformers' ``round(x, 7)`` rule, a newline after
every row, bilinear resampling after the connector. Export refuses every vistune setting transformers cannot
express (see :func:`export_problems`); the error lists all of them at once, each naming its config field.

Known behavioural difference that is not a config knob: in a prompt with several images, vistune (like
the official code and transformers' OneVision) gives each image one padded square view; transformers'
LLaVA-NeXT tiles every image. Single-image prompts agree exactly in both formats.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vistune.config import ConfigError, ModelConfig, validate
from vistune.model.anyres import GeometryError, parse_budget

HF_FORMATS = ("llava_onevision", "llava_next")

#: transformers' projector activation -> vistune connector type
_CONNECTOR_FOR_ACT = {"gelu": "mlp2x_gelu", "relu": "mlp2x_relu"}
_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, as stored in preprocessor configs
_LAYER_KEY = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.")


class InteropError(ConfigError):
    """A folder or model cannot be converted; the message names the field and says why."""


# ----------------------------------------------------------------------------------------------------------
# Small pure helpers
# ----------------------------------------------------------------------------------------------------------
def pinpoints_to_grids(pinpoints: Any, image_size: int) -> tuple[tuple[int, int], ...]:
    """transformers' ``image_grid_pinpoints`` ((height, width) pixels) -> grids ((rows, cols)), order kept.

    Every pinpoint must be a positive multiple of the vision ``image_size`` in both directions.
    """
    if not isinstance(pinpoints, list | tuple) or not pinpoints:
        raise InteropError(
            f"image_grid_pinpoints: expected a non-empty list of [height, width], got {pinpoints!r}"
        )
    grids: list[tuple[int, int]] = []
    for item in pinpoints:
        try:
            h, w = (int(x) for x in item)
        except (TypeError, ValueError):
            raise InteropError(
                f"image_grid_pinpoints: entry {item!r} is not a [height, width] pair"
            ) from None
        if h <= 0 or w <= 0 or h % image_size or w % image_size:
            raise InteropError(
                f"image_grid_pinpoints: [{h}, {w}] is not a whole number of {image_size}-pixel tiles in both "
                f"directions (vision_config.image_size={image_size}); vistune grids are rows x cols of tiles"
            )
        grids.append((h // image_size, w // image_size))
    return tuple(grids)


def grids_to_pinpoints(grids: Any, image_size: int) -> list[list[int]]:
    """Inverse of :func:`pinpoints_to_grids`: (rows, cols) -> [height, width] pixels."""
    return [[int(r) * image_size, int(c) * image_size] for r, c in grids]


def parse_anyres_max(value: Any) -> int:
    """``"anyres_max_9"`` -> 9. transformers supports nothing else (a bare ``"anyres"`` crashes it)."""
    m = re.fullmatch(r"anyres_max_(\d+)", str(value).strip())
    if not m or int(m.group(1)) < 1:
        raise InteropError(
            f"vision_aspect_ratio: {value!r} is not 'anyres_max_N' (N >= 1), the only form transformers' "
            "LLaVA-OneVision understands"
        )
    return int(m.group(1))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InteropError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InteropError(f"{path}: expected a JSON object")
    return data


# ----------------------------------------------------------------------------------------------------------
# Reading an HF folder
# ----------------------------------------------------------------------------------------------------------
@dataclass
class HFFolder:
    """The parts of an HF llava folder that vistune needs (no weights are read)."""

    path: Path
    format: str  # llava_onevision | llava_next
    config: Any  # the transformers config object
    image_processor: dict[str, Any]  # {} when the folder has none
    processor: dict[str, Any]  # processor attributes (image_token, num_image_tokens, ...), {} when none
    added_tokens: dict[str, int]  # special/added token strings -> ids, from the tokenizer files
    chat_template: str | None


def read_hf_folder(path: str | Path) -> HFFolder:
    """Parse ``config.json``, the processor files and the tokenizer's added tokens of an HF llava folder.

    Both processor layouts are accepted: the legacy one (``preprocessor_config.json`` + a flat
    ``processor_config.json``) and transformers 5's (the image processor nested in ``processor_config.json``).
    """
    from transformers import AutoConfig

    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise InteropError(f"{p}: no config.json (not a transformers model folder)")
    raw = _read_json(p / "config.json")
    fmt = raw.get("model_type")
    if fmt not in HF_FORMATS:
        raise InteropError(f"{p / 'config.json'}: model_type {fmt!r} is not one of {', '.join(HF_FORMATS)}")
    config = AutoConfig.from_pretrained(str(p))

    processor: dict[str, Any] = {}
    image_processor: dict[str, Any] = {}
    if (p / "processor_config.json").is_file():
        processor = _read_json(p / "processor_config.json")
        nested = processor.pop("image_processor", None)
        processor.pop("video_processor", None)
        if isinstance(nested, dict):
            image_processor = nested
    if (p / "preprocessor_config.json").is_file():
        image_processor = _read_json(p / "preprocessor_config.json")

    added: dict[str, int] = {}
    if (p / "tokenizer.json").is_file():
        for tok in _read_json(p / "tokenizer.json").get("added_tokens", []) or []:
            if isinstance(tok, dict) and "content" in tok and "id" in tok:
                added[str(tok["content"])] = int(tok["id"])
    if (p / "tokenizer_config.json").is_file():
        tcfg = _read_json(p / "tokenizer_config.json")
        for idx, tok in (tcfg.get("added_tokens_decoder") or {}).items():
            if isinstance(tok, dict) and "content" in tok:
                added.setdefault(str(tok["content"]), int(idx))
    chat = None
    if (p / "chat_template.jinja").is_file():
        chat = (p / "chat_template.jinja").read_text(encoding="utf-8")
    elif (p / "chat_template.json").is_file():
        chat = _read_json(p / "chat_template.json").get("chat_template")
    elif isinstance(processor.get("chat_template"), str):
        chat = processor["chat_template"]
    return HFFolder(p, fmt, config, image_processor, processor, added, chat)


def _sub_config_dict(cfg: Any) -> dict[str, Any]:
    """A transformers sub-config as a vistune ``hf_config`` dict: non-default fields + the geometry keys."""
    from vistune.model.lmm import hf_config_dict

    d = hf_config_dict(cfg)
    for key in ("hidden_size", "num_hidden_layers", "image_size", "patch_size", "vocab_size"):
        if hasattr(cfg, key) and key not in d:
            d[key] = getattr(cfg, key)
    return d


def _image_side(ip: dict[str, Any], key: str) -> tuple[int, int] | None:
    size = ip.get(key)
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    if isinstance(size, dict):
        if size.get("height") and size.get("width"):
            return int(size["height"]), int(size["width"])
        if size.get("shortest_edge"):
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    raise InteropError(f"image processor {key}: cannot read {size!r}")


def _check_image_processor(folder: HFFolder, S: int) -> None:
    """Refuse image-processor settings that vistune's processor would not reproduce."""
    ip = folder.image_processor
    if not ip:
        return
    where = "image processor"
    size = _image_side(ip, "size")
    if size is not None and size != (S, S):
        raise InteropError(
            f"{where} size: {ip.get('size')} does not make {S}x{S} views (vision_config.image_size={S}); "
            "vistune's views always have the encoder's native size"
        )
    crop = _image_side(ip, "crop_size")
    if (
        crop is not None
        and crop != (S, S)
        and (ip.get("do_center_crop") or folder.format == "llava_onevision")
    ):
        raise InteropError(f"{where} crop_size: {ip.get('crop_size')} differs from the encoder size {S}")
    if ip.get("resample", _BICUBIC) != _BICUBIC:
        raise InteropError(
            f"{where} resample: {ip.get('resample')!r}; vistune always resizes with PIL bicubic (3)"
        )
    if ip.get("do_resize") is False or ip.get("do_rescale") is False or ip.get("do_normalize") is False:
        raise InteropError(
            f"{where}: do_resize/do_rescale/do_normalize must be true (vistune always applies them)"
        )
    factor = ip.get("rescale_factor")
    if factor is not None and not math.isclose(float(factor), 1 / 255, rel_tol=1e-6):
        raise InteropError(f"{where} rescale_factor: {factor}; vistune always rescales by 1/255")
    model_pins = [list(map(int, x)) for x in folder.config.image_grid_pinpoints]
    pins = ip.get("image_grid_pinpoints")
    if pins is not None and [list(map(int, x)) for x in pins] != model_pins:
        raise InteropError(
            f"{where} image_grid_pinpoints differ from config.json's image_grid_pinpoints; transformers would cut "
            "the image with one set and stitch the features with the other"
        )


def _resolve_token(folder: HFFolder, attr: str, token_id: int | None, default: str) -> str:
    """The token string whose id is ``token_id`` (preferring the processor's declared string)."""
    declared = folder.processor.get(attr) or default
    if token_id is None or not folder.added_tokens:
        return declared
    if folder.added_tokens.get(declared) == token_id:
        return declared
    for text, idx in folder.added_tokens.items():
        if idx == token_id:
            return text
    return declared  # verified again once the tokenizer is loaded


def _guess_chat_template(folder: HFFolder, text_model_type: str) -> str:
    """vistune chat-template key for the folder: from the Jinja markup, else from the LLM family."""
    chat = folder.chat_template or ""
    if "<|im_start|>" in chat:
        # transformers' OneVision template has no default system prompt; match it exactly
        return "qwen_1_5" if "You are a helpful assistant." in chat else "chatml_nosys"
    if "<|start_header_id|>" in chat:
        return "llama_3"
    if "USER:" in chat or "ASSISTANT:" in chat:
        return "vicuna_v1"
    return "qwen_1_5" if text_model_type.startswith("qwen") else "vicuna_v1"


def model_config_from_folder(folder: HFFolder, chat_template: str | None = None) -> ModelConfig:
    """Map a parsed HF folder onto a vistune :class:`ModelConfig` (see the module docstring's table)."""
    from vistune.model.vision import VISION_ENCODERS, encoder_type_for

    cfg = folder.config
    vc, tc = cfg.vision_config, cfg.text_config
    where = str(folder.path / "config.json")
    enc = encoder_type_for(vc.model_type)
    S, patch = int(vc.image_size), int(vc.patch_size)

    layer = cfg.vision_feature_layer
    if not isinstance(layer, int):
        raise InteropError(
            f"{where}: vision_feature_layer={layer!r} concatenates several layers; vistune selects exactly one"
        )
    strategy = cfg.vision_feature_select_strategy
    has_cls = VISION_ENCODERS[enc].has_cls
    if strategy == "default" and not has_cls:
        raise InteropError(
            f"{where}: vision_feature_select_strategy='default' drops the first token, but a {enc} tower has no "
            "CLS token, so it would drop a real image patch (and break the patch grid); use 'full'"
        )
    if strategy == "full" and has_cls:
        raise InteropError(
            f"{where}: vision_feature_select_strategy='full' with a CLIP tower keeps the CLS token of every crop, "
            "which cannot be stitched into the AnyRes grid; vistune supports 'default' (CLS dropped) for CLIP"
        )
    if strategy not in ("default", "full"):
        raise InteropError(f"{where}: unknown vision_feature_select_strategy {strategy!r}")

    act = cfg.projector_hidden_act
    if act not in _CONNECTOR_FOR_ACT:
        raise InteropError(
            f"{where}: projector_hidden_act={act!r}; vistune's connectors use {', '.join(sorted(_CONNECTOR_FOR_ACT))}"
        )

    grids = pinpoints_to_grids(cfg.image_grid_pinpoints, S)
    if folder.format == "llava_onevision":
        n = parse_anyres_max(cfg.vision_aspect_ratio)
        proc_ratio = folder.processor.get("vision_aspect_ratio")
        if proc_ratio is not None and str(proc_ratio) != str(cfg.vision_aspect_ratio):
            raise InteropError(
                f"{folder.path}: processor vision_aspect_ratio={proc_ratio!r} differs from config.json's "
                f"{cfg.vision_aspect_ratio!r}; transformers would count and produce different token numbers"
            )
        visual = {"cap": "total", "max_tokens": f"{n} tiles", "cap_slack": 1.1}
        n_img = folder.processor.get("num_image_tokens")
        if n_img is not None and int(n_img) != (S // patch) ** 2:
            raise InteropError(
                f"{folder.path}: processor num_image_tokens={n_img} but the encoder makes {(S // patch) ** 2} tokens "
                "per view"
            )
    else:
        visual = {"cap": "none", "max_tokens": None}
        extra = folder.processor.get("num_additional_image_tokens")
        if extra is not None and int(extra) != (1 if has_cls else 0):
            raise InteropError(
                f"{folder.path}: processor num_additional_image_tokens={extra} but a {enc} tower adds "
                f"{1 if has_cls else 0}; transformers itself would miscount image tokens"
            )
        p_patch = folder.processor.get("patch_size")
        if p_patch is not None and int(p_patch) != patch:
            raise InteropError(
                f"{folder.path}: processor patch_size={p_patch} but vision_config.patch_size={patch}; transformers "
                "itself would miscount image tokens"
            )
    p_strategy = folder.processor.get("vision_feature_select_strategy")
    if p_strategy is not None and p_strategy != strategy:
        raise InteropError(
            f"{folder.path}: processor vision_feature_select_strategy={p_strategy!r} differs from config.json's "
            f"{strategy!r}"
        )
    _check_image_processor(folder, S)

    visual.update(
        anyres=True,
        grids=[list(g) for g in grids],
        base_view="squash",
        unpad=True,
        newline=True,
        pool_method="bilinear",
        pool_position="after",
        pool_ratio=None,
        min_long_edge_tiles=None,
        unpad_rounding="hf",
    )
    text = _sub_config_dict(tc)
    text["tie_word_embeddings"] = bool(getattr(cfg, "tie_word_embeddings", False))
    mean = folder.image_processor.get("image_mean")
    std = folder.image_processor.get("image_std")
    dtype = str(getattr(cfg, "dtype", None) or getattr(tc, "dtype", None) or "float32").replace("torch.", "")
    image_token = _resolve_token(folder, "image_token", cfg.image_token_index, "<image>")
    video_id = getattr(cfg, "video_token_index", None)
    video_token = _resolve_token(folder, "video_token", video_id, "<video>")
    data = {
        "vision": {
            "hf_config": _sub_config_dict(vc),
            "type": enc,
            "feature_layer": layer,
            "keep_cls": False,
            "drop_last_layer": False,
            "image_mean": list(mean) if mean else None,
            "image_std": list(std) if std else None,
        },
        "connector": {"type": _CONNECTOR_FOR_ACT[act], "bias": bool(cfg.multimodal_projector_bias)},
        "llm": {"hf_config": text, "tokenizer": str(folder.path.resolve())},
        "visual": visual,
        "chat_template": chat_template or _guess_chat_template(folder, tc.model_type),
        "image_token": image_token,
        "video_token": video_token,
        "dtype": dtype if dtype in ("float32", "bfloat16", "float16") else "float32",
    }
    return validate(ModelConfig, data, prefix="model.", source=where)


def hf_model_config(path: str | Path, chat_template: str | None = None) -> ModelConfig:
    """The vistune :class:`ModelConfig` of an HF ``llava_onevision`` / ``llava_next`` folder (no weights read).

    Refuses, naming the field, what vistune cannot reproduce exactly (a list of feature layers, a 'default'
    strategy on SigLIP, non-tile pinpoints, an unknown projector activation, inconsistent processor files).
    """
    return model_config_from_folder(read_hf_folder(path), chat_template)


# ----------------------------------------------------------------------------------------------------------
# Import
# ----------------------------------------------------------------------------------------------------------
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _torch_dtype(dtype: str | torch.dtype | None, default: str) -> torch.dtype:
    if dtype is None:
        return _DTYPES[default]
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise InteropError(f"dtype: {dtype!r} is not one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _hf_class(fmt: str) -> type:
    from transformers import LlavaNextForConditionalGeneration, LlavaOnevisionForConditionalGeneration

    return (
        LlavaOnevisionForConditionalGeneration
        if fmt == "llava_onevision"
        else LlavaNextForConditionalGeneration
    )


def _copy_into(dst: nn.Module, src_sd: dict[str, torch.Tensor], what: str, *, allow_drop: Any = None) -> None:
    """``dst.load_state_dict(src_sd)`` with a clear error. ``allow_drop(key)`` marks source keys that vistune
    deliberately does not hold (vision layers after the selected one, an unused pooling head)."""
    own = dst.state_dict()
    sd: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in src_sd.items():
        if key in own:
            target = own[key]
            if target.shape != value.shape:
                if (
                    target.dim() == 2
                    and value.dim() == 2
                    and target.shape[1] == value.shape[1]
                    and target.shape[0] > value.shape[0]
                ):
                    # vistune added tokens (e.g. <video>) after the checkpoint's vocabulary: keep its extra rows
                    value = torch.cat([value.to(target.dtype), target[value.shape[0] :].detach().cpu()])
                else:
                    raise InteropError(
                        f"{what}: {key} has shape {tuple(value.shape)}, vistune expects {tuple(target.shape)}"
                    )
            sd[key] = value
        elif allow_drop is None or not allow_drop(key):
            unexpected.append(key)
    missing = [k for k in own if k not in sd and not _is_alias(dst, k, sd)]
    if unexpected or missing:
        raise InteropError(
            f"{what}: weights do not line up (missing in source: {missing[:5]}, unexpected: {unexpected[:5]})"
        )
    dst.load_state_dict(sd, strict=False)


def _is_alias(module: nn.Module, key: str, sd: dict[str, torch.Tensor]) -> bool:
    """A tied weight stored under another name that is being loaded (e.g. a tied ``lm_head``)."""
    own = module.state_dict()
    ptr = own[key].data_ptr()
    return any(k in sd and own[k].data_ptr() == ptr for k in own if k != key)


def _vision_drop_rule(num_kept: int):
    def drop(key: str) -> bool:
        m = _LAYER_KEY.search(key)
        if m is not None:
            return int(m.group(1)) >= num_kept
        return key.startswith(("head.", "vision_model.head."))

    return drop


def import_hf(
    path: str | Path,
    visual_overrides: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    chat_template: str | None = None,
):
    """Load an HF ``llava_onevision`` / ``llava_next`` folder as ``(VistuneModel, VistuneProcessor)``.

    transformers loads the folder; its sub-modules' state dicts are copied into the vistune model built from
    :func:`hf_model_config` (plus ``visual_overrides``). The tokenizer comes from the folder, the image
    mean/std from its image processor. Peak memory is about twice the model (both copies live briefly).
    """
    from vistune.model.lmm import build_model

    folder = read_hf_folder(path)
    cfg = model_config_from_folder(folder, chat_template)
    if visual_overrides:
        try:
            cfg = cfg.with_visual(**visual_overrides)
        except ValueError as exc:
            raise ConfigError(f"visual overrides: {exc}") from None
    torch_dtype = _torch_dtype(dtype, cfg.dtype)
    hf = _hf_class(folder.format).from_pretrained(str(folder.path), dtype=torch_dtype)
    hf.eval()
    model, processor = build_model(cfg, device=device, dtype=torch_dtype)

    want = int(folder.config.image_token_index)
    if model.image_token_id != want:
        raise InteropError(
            f"{folder.path}: image_token_index={want} but the tokenizer maps {cfg.image_token!r} to "
            f"{model.image_token_id}"
        )
    video_want = getattr(folder.config, "video_token_index", None)
    if video_want is not None and model.video_token_id != int(video_want):
        raise InteropError(
            f"{folder.path}: video_token_index={video_want} but the tokenizer maps {cfg.video_token!r} to "
            f"{model.video_token_id}"
        )
    inner = hf.model
    with torch.no_grad():
        _copy_into(
            model.vision.model,
            inner.vision_tower.state_dict(),
            "vision tower",
            allow_drop=_vision_drop_rule(model.vision.num_layers),
        )
        _copy_into(model.connector, inner.multi_modal_projector.state_dict(), "projector")
        _copy_into(model.llm.get_decoder(), inner.language_model.state_dict(), "language model")
        _copy_into(model.llm.get_output_embeddings(), hf.lm_head.state_dict(), "lm_head")
        model.image_newline.copy_(inner.image_newline.to(model.image_newline.dtype))
    gen = getattr(hf, "generation_config", None)
    if gen is not None and getattr(model.llm, "generation_config", None) is not None:
        for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
            value = getattr(gen, key, None)
            if value is not None:
                setattr(model.llm.generation_config, key, value)
    del hf
    model.eval()
    return model, processor


# ----------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------
def export_problems(model: Any, fmt: str) -> list[str]:
    """Every reason why ``model`` cannot be written as ``fmt`` (empty when it can), one per config field."""
    if fmt not in HF_FORMATS:
        return [f"format: {fmt!r} is not one of {', '.join(HF_FORMATS)}"]
    v = model.visual
    geo = model.geometry
    s = geo.tokens_per_side
    out: list[str] = []
    if not v.anyres:
        out.append("visual.anyres=False: transformers always tiles single images into an AnyRes grid")
    if v.base_view != "squash":
        out.append(
            f"visual.base_view={v.base_view!r}: transformers always adds the base view squashed to a square "
            "(aspect not preserved)"
        )
    if not v.unpad:
        out.append("visual.unpad=False: transformers always removes the feature rows/columns of the padding")
    if not v.newline:
        out.append("visual.newline=False: transformers always appends image_newline after every row")
    if v.unpad_rounding != "hf":
        out.append(
            f"visual.unpad_rounding={v.unpad_rounding!r}: transformers rounds with int(round(x, 7)) ('hf')"
        )
    if v.pool_ratio is not None:
        out.append(f"visual.pool_ratio={v.pool_ratio}: transformers has no fixed per-view pooling for images")
    if v.min_long_edge_tiles is not None:
        out.append(
            f"visual.min_long_edge_tiles={v.min_long_edge_tiles}: transformers has no resolution lifting"
        )
    if v.cap == "per_grid":
        out.append(
            "visual.cap='per_grid': transformers only has the OneVision total cap (anyres_max_N); use cap='total'"
        )
    elif v.cap == "total":
        if fmt == "llava_next":
            out.append(
                "visual.cap='total': transformers' llava_next has no token cap; export with "
                "format='llava_onevision' or set visual.cap='none'"
            )
        else:
            if not math.isclose(v.cap_slack, 1.1):
                out.append(f"visual.cap_slack={v.cap_slack}: transformers hard-codes the 1.1 slack")
            try:
                tau = parse_budget(v.max_tokens, s * s)
            except GeometryError as exc:
                out.append(str(exc))
            else:
                if tau is None or tau % (s * s):
                    out.append(
                        f"visual.max_tokens={v.max_tokens!r}: {tau} tokens is not a whole number of {s * s}-token "
                        "tiles; transformers' anyres_max_N needs an integer N"
                    )
    if v.cap != "none" or v.pool_ratio is not None:
        if v.pool_method != "bilinear":
            out.append(f"visual.pool_method={v.pool_method!r}: transformers resamples bilinearly")
        if v.pool_position != "after":
            out.append(
                f"visual.pool_position={v.pool_position!r}: transformers resamples after the connector"
            )
    ctype = model.config.connector.type
    if ctype not in ("mlp2x_gelu", "mlp2x_relu"):
        out.append(
            f"connector.type={ctype!r}: transformers' projector is a 2-layer MLP (mlp2x_gelu or mlp2x_relu)"
        )
    if model.vision.keep_cls:
        out.append(
            "vision.keep_cls=True: transformers would keep the CLS token of every crop ('full' strategy); "
            "only dropping it ('default') is expressible"
        )
    return out


def _hf_visual_fields(model: Any, fmt: str) -> dict[str, Any]:
    v = model.visual
    S = model.geometry.image_size
    s = model.geometry.tokens_per_side
    fields: dict[str, Any] = {"image_grid_pinpoints": grids_to_pinpoints(v.grids, S)}
    if fmt == "llava_onevision":
        if v.cap == "total":
            n = parse_budget(v.max_tokens, s * s) // (s * s)
        else:
            # no cap: any N at least the largest grid's tile count never triggers the 1.1 rule
            n = max(r * c for r, c in v.grids)
        fields["vision_aspect_ratio"] = f"anyres_max_{n}"
    return fields


def hf_config_for(model: Any, fmt: str = "llava_onevision") -> Any:
    """The transformers config (``LlavaOnevisionConfig`` / ``LlavaNextConfig``) equivalent to ``model``.

    The vision tower is described as vistune holds it: truncated after the selected layer, so the exported
    ``vision_feature_layer`` is always -1 (the layers it drops are never run).
    """
    from transformers import LlavaNextConfig, LlavaOnevisionConfig

    from vistune.model.connector import HF_ACTIVATION
    from vistune.model.lmm import hf_config_dict

    problems = export_problems(model, fmt)
    if problems:
        raise InteropError(f"cannot express this model as {fmt}:\n  " + "\n  ".join(problems))
    vision = hf_config_dict(model.vision.model.config)
    if "vision_use_head" in vision or model.vision.type == "siglip":
        vision["vision_use_head"] = False
    text = hf_config_dict(model.llm.config)
    text["vocab_size"] = int(model.llm.get_input_embeddings().num_embeddings)
    tie = bool(getattr(model.llm.config, "tie_word_embeddings", False))
    text["tie_word_embeddings"] = tie
    common: dict[str, Any] = {
        "vision_config": vision,
        "text_config": text,
        "image_token_index": int(model.image_token_id),
        "projector_hidden_act": HF_ACTIVATION[model.config.connector.type],
        "vision_feature_select_strategy": "default" if model.vision.spec.has_cls else "full",
        "vision_feature_layer": -1,
        "multimodal_projector_bias": bool(model.config.connector.bias),
        "tie_word_embeddings": tie,
        **_hf_visual_fields(model, fmt),
    }
    if fmt == "llava_onevision":
        cfg = LlavaOnevisionConfig(video_token_index=int(model.video_token_id), **common)
    else:
        cfg = LlavaNextConfig(image_seq_length=model.geometry.tokens_per_view, **common)
    cfg.dtype = str(model.dtype).replace("torch.", "")
    return cfg


# ----------------------------------------------------------------------------------------------------------
# Chat templates (vistune template -> equivalent Jinja)
# ----------------------------------------------------------------------------------------------------------
def _jinja_str(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Jinja string literal


def _flatten_macro(image_token: str, video_token: str) -> str:
    """Jinja macro turning a message content into text exactly like ``vistune.data.schema.flatten_content``:
    one image token + newline per image item, one video token + newline per video item, then the text items
    joined by newlines."""
    img, vid = _jinja_str(image_token + "\n"), _jinja_str(video_token + "\n")
    return (
        "{%- macro flat(c) -%}{%- if c is string -%}{{ c }}{%- else -%}"
        "{%- for it in c -%}{%- if it['type'] == 'image' -%}{{ " + img + " }}{%- endif -%}{%- endfor -%}"
        "{%- for it in c -%}{%- if it['type'] == 'video' -%}{{ " + vid + " }}{%- endif -%}{%- endfor -%}"
        "{%- set ns = namespace(first=true) -%}{%- for it in c -%}{%- if it['type'] == 'text' -%}"
        "{%- if not ns.first -%}{{ '\\n' }}{%- endif -%}{{ it['text'] }}{%- set ns.first = false -%}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}{%- endmacro -%}"
    )


def hf_chat_template(template: Any, image_token: str = "<image>", video_token: str = "<video>") -> str | None:
    """A Jinja chat template that renders conversations exactly like the vistune template ``template``
    (a registry name or :class:`~vistune.data.templates.ChatTemplate`), with ``{% generation %}`` around
    the supervised reply text so transformers' ``return_assistant_tokens_mask`` marks the same tokens.

    Supported families: chatml (``qwen_1_5``), vicuna (``vicuna_v1``), llama_3; ``None`` for others.
    """
    from vistune.data.templates import get_template

    tpl = get_template(template)
    family = getattr(tpl, "family", "")
    default = _jinja_str(tpl.default_system or "")
    bos = _jinja_str(tpl.bos)
    eot = _jinja_str(tpl.end_of_turn)
    head = (
        _flatten_macro(image_token, video_token) + "{%- set sysns = namespace(text=" + default + ") -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}{%- set sysns.text = flat(messages[0]['content']) -%}"
        "{%- endif -%}{{ " + bos + " }}"
    )
    loop_open = "{%- for m in messages -%}{%- if m['role'] != 'system' -%}"
    loop_close = "{%- endif -%}{%- endfor -%}"
    if family == "chatml":
        body = (
            "{%- if sysns.text -%}{{ '<|im_start|>system\\n' + sysns.text + '<|im_end|>\\n' }}{%- endif -%}"
            + loop_open
            + "{%- if m['role'] == 'user' -%}{{ '<|im_start|>user\\n' + flat(m['content']) + '<|im_end|>\\n' }}"
            "{%- else -%}{{ '<|im_start|>assistant\\n' }}{% generation %}{{ flat(m['content']) + "
            + eot
            + " }}"
            "{% endgeneration %}{{ '\\n' }}{%- endif -%}"
            + loop_close
            + "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
        )
    elif family == "llama_3":
        body = (
            "{%- if sysns.text -%}{{ '<|start_header_id|>system<|end_header_id|>\\n\\n' + sysns.text + "
            + eot
            + " }}{%- endif -%}"
            + loop_open
            + "{%- if m['role'] == 'user' -%}{{ '<|start_header_id|>user<|end_header_id|>\\n\\n' + "
            "flat(m['content']) + " + eot + " }}"
            "{%- else -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% generation %}"
            "{{ flat(m['content']) + "
            + eot
            + " }}{% endgeneration %}{%- endif -%}"
            + loop_close
            + "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
            "{%- endif -%}"
        )
    elif family == "vicuna":
        # a space separates a user turn from preceding system/user text, not from the BOS or a reply's end
        body = (
            "{%- set sp = namespace(on=false) -%}"
            "{%- if sysns.text -%}{{ sysns.text }}{%- set sp.on = true -%}{%- endif -%}"
            + loop_open
            + "{%- if m['role'] == 'user' -%}{%- if sp.on -%}{{ ' ' }}{%- endif -%}"
            "{{ 'USER: ' + flat(m['content']) }}{%- set sp.on = true -%}"
            "{%- else -%}{{ ' ASSISTANT:' }}{% generation %}{{ ' ' + flat(m['content']) + " + eot + " }}"
            "{% endgeneration %}{%- set sp.on = false -%}{%- endif -%}"
            + loop_close
            + "{%- if add_generation_prompt -%}{{ ' ASSISTANT:' }}{%- endif -%}"
        )
    else:
        return None
    return head + body


# ----------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------
def _no_init():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        return contextlib.nullcontext()
    return no_init_weights()


def _image_processor(model: Any, processor: Any, fmt: str) -> Any:
    from transformers import LlavaNextImageProcessorPil, LlavaOnevisionImageProcessorPil

    S = model.geometry.image_size
    common = {
        "image_grid_pinpoints": grids_to_pinpoints(model.visual.grids, S),
        "image_mean": list(processor.image_mean),
        "image_std": list(processor.image_std),
        "resample": _BICUBIC,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "do_pad": True,
    }
    if fmt == "llava_onevision":
        return LlavaOnevisionImageProcessorPil(size={"height": S, "width": S}, **common)
    return LlavaNextImageProcessorPil(
        size={"shortest_edge": S}, crop_size={"height": S, "width": S}, do_center_crop=True, **common
    )


def _processor_attributes(model: Any, processor: Any, fmt: str) -> dict[str, Any]:
    geo = model.geometry
    strategy = "default" if model.vision.spec.has_cls else "full"
    if fmt == "llava_onevision":
        return {
            "processor_class": "LlavaOnevisionProcessor",
            "image_token": processor.image_token,
            "video_token": processor.video_token,
            "num_image_tokens": geo.tokens_per_view,
            "vision_feature_select_strategy": strategy,
            "vision_aspect_ratio": _hf_visual_fields(model, fmt)["vision_aspect_ratio"],
        }
    return {
        "processor_class": "LlavaNextProcessor",
        "image_token": processor.image_token,
        "patch_size": geo.patch_size,
        "vision_feature_select_strategy": strategy,
        "num_additional_image_tokens": 1 if model.vision.spec.has_cls else 0,
    }


def _video_processor_config(model: Any, processor: Any) -> dict[str, Any]:
    """transformers' ``LlavaOnevisionVideoProcessor`` settings (frames squashed to one view, no AnyRes)."""
    S = model.geometry.image_size
    return {
        "video_processor_type": "LlavaOnevisionVideoProcessor",
        "processor_class": "LlavaOnevisionProcessor",
        "size": {"height": S, "width": S},
        "resample": _BICUBIC,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(processor.image_mean),
        "image_std": list(processor.image_std),
        "do_convert_rgb": True,
        "do_sample_frames": False,
    }


def to_hf_model(model: Any, format: str = "llava_onevision", device: Any = None) -> Any:  # noqa: A002
    """An in-memory transformers ``LlavaOnevisionForConditionalGeneration`` / ``LlavaNextForConditionalGeneration``
    holding a copy of ``model``'s weights (same dtype; on ``device``, default the model's). Used by
    :func:`export_hf` and by the benchmarks that compare both implementations on the same weights."""
    cfg = hf_config_for(model, format)
    with _no_init():
        hf = _hf_class(format)(cfg)
    hf.to(dtype=model.dtype)
    inner = hf.model
    with torch.no_grad():
        _copy_into(inner.vision_tower, _cpu(model.vision.model.state_dict()), "vision tower")
        _copy_into(inner.multi_modal_projector, _cpu(model.connector.state_dict()), "projector")
        _copy_into(inner.language_model, _cpu(model.llm.get_decoder().state_dict()), "language model")
        _copy_into(hf.lm_head, _cpu(model.llm.get_output_embeddings().state_dict()), "lm_head")
        inner.image_newline.copy_(model.image_newline.detach().cpu())
    gen = getattr(model.llm, "generation_config", None)
    if gen is not None:
        for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
            value = getattr(gen, key, None)
            if value is not None:
                setattr(hf.generation_config, key, value)
    return hf.to(device if device is not None else model.device)


def export_hf(model: Any, processor: Any, dst: str | Path, format: str = "llava_onevision") -> Path:  # noqa: A002
    """Write ``model`` as an HF ``llava_onevision`` or ``llava_next`` folder that transformers loads and that
    gives the same logits.

    The folder holds ``config.json`` + ``model.safetensors`` + ``generation_config.json`` (written by
    transformers itself), the tokenizer, ``preprocessor_config.json`` (a PIL-backend image processor),
    ``processor_config.json`` (processor attributes; the layout both transformers 4 and 5 load),
    ``video_preprocessor_config.json`` (OneVision) and ``chat_template.jinja``. The write is atomic.
    Raises :class:`InteropError` listing every setting transformers cannot express.
    """
    from vistune.fsutil import atomic_dir

    hf = to_hf_model(model, format, device="cpu")
    image_processor = _image_processor(model, processor, format)
    chat = hf_chat_template(model.config.chat_template, processor.image_token, processor.video_token)
    dst = Path(dst)
    with atomic_dir(dst) as tmp:
        hf.save_pretrained(str(tmp))
        processor.tokenizer.save_pretrained(str(tmp))
        image_processor.save_pretrained(str(tmp))
        attrs = _processor_attributes(model, processor, format)
        (tmp / "processor_config.json").write_text(json.dumps(attrs, indent=2) + "\n")
        if format == "llava_onevision":
            video = _video_processor_config(model, processor)
            (tmp / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n")
        if chat is not None:
            (tmp / "chat_template.jinja").write_text(chat)
    return dst


def _cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in sd.items()}
