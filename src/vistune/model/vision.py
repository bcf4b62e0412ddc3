"""Vision-encoder registry: Hugging Face CLIP and SigLIP vision towers, from a local folder or a config.

The encoder declares everything the rest of vistune needs — native resolution, patch size, token grid,
image normalisation — and nothing else inspects its internals.

Feature selection (``VisionConfig``):

* ``feature_layer`` — which hidden state to take (negative counts from the end; LLaVA's CLIP uses ``-2``).
  Layers after the selected one never run: the encoder is truncated at build time, so ``-2`` costs one layer
  less than ``-1``. The selected state is the raw layer output (no post-layernorm), as in LLaVA and HF.
* ``drop_last_layer`` — the OneVision variant: delete the last encoder layer first, then select (usually
  ``feature_layer=-1``), i.e. "take the output of the second-to-last layer".
* ``keep_cls`` — CLIP prepends a CLS token; it is dropped unless kept (SigLIP has none).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vistune.config import ConfigError, VisionConfig
from vistune.model.anyres import EncoderGeometry

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class EncoderSpec:
    """How one encoder family is built and what it declares."""

    name: str
    model_types: tuple[str, ...]  # HF model_type values this family accepts (exact names)
    vision_model_type: str  # the vision-only HF model_type used to build from a config
    has_cls: bool
    default_mean: tuple[float, float, float]
    default_std: tuple[float, float, float]


VISION_ENCODERS: dict[str, EncoderSpec] = {
    "siglip": EncoderSpec(
        "siglip", ("siglip", "siglip_vision_model"), "siglip_vision_model", False, SIGLIP_MEAN, SIGLIP_STD
    ),
    "clip": EncoderSpec(
        "clip", ("clip", "clip_vision_model"), "clip_vision_model", True, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    ),
}

#: HF model_type -> registry key (exact names; never a substring match)
_BY_MODEL_TYPE = {mt: spec.name for spec in VISION_ENCODERS.values() for mt in spec.model_types}


def encoder_type_for(model_type: str) -> str:
    if model_type not in _BY_MODEL_TYPE:
        raise ConfigError(
            f"vision: unsupported encoder model_type {model_type!r}; supported: {', '.join(sorted(_BY_MODEL_TYPE))}"
        )
    return _BY_MODEL_TYPE[model_type]


class VisionEncoder(nn.Module):
    """A HF vision tower plus the facts vistune needs about it."""

    def __init__(
        self,
        spec: EncoderSpec,
        model: nn.Module,
        *,
        feature_layer: int,
        keep_cls: bool,
        image_mean: tuple[float, ...],
        image_std: tuple[float, ...],
        num_layers_full: int,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.model = model
        cfg = model.config
        self.keep_cls = bool(keep_cls and spec.has_cls)
        self.geometry = EncoderGeometry(int(cfg.image_size), int(cfg.patch_size), 1 if self.keep_cls else 0)
        self.hidden_size = int(cfg.hidden_size)
        self.feature_layer = feature_layer
        self.image_mean = tuple(float(x) for x in image_mean)
        self.image_std = tuple(float(x) for x in image_std)
        self.num_layers_full = num_layers_full

    @property
    def type(self) -> str:
        return self.spec.name

    @property
    def num_layers(self) -> int:
        return len(_encoder_layers(self.model))

    @property
    def tokens_per_view(self) -> int:
        return self.geometry.tokens_per_view

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` -> ``(N, [1 +] s*s, C)`` features of the selected layer.

        The CLS token (CLIP) is dropped unless ``keep_cls``; when kept it stays at position 0 and the model
        keeps it only for the base (or single) view — grid views cannot stitch a CLS token.
        """
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        feats = out.hidden_states[-1]
        if self.spec.has_cls and not self.keep_cls:
            feats = feats[:, 1:]
        return feats

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "image_size": self.geometry.image_size,
            "patch_size": self.geometry.patch_size,
            "tokens_per_side": self.geometry.tokens_per_side,
            "hidden_size": self.hidden_size,
            "keep_cls": self.keep_cls,
            "layers_run": self.num_layers,
            "layers_in_checkpoint": self.num_layers_full,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    for path in ("encoder.layers", "vision_model.encoder.layers"):
        obj: Any = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise ConfigError(f"vision: cannot find the encoder layers of {type(model).__name__}")


def _set_encoder_layers(model: nn.Module, layers: nn.ModuleList) -> None:
    enc = model.encoder if hasattr(model, "encoder") else model.vision_model.encoder
    enc.layers = layers
    model.config.num_hidden_layers = len(layers)


def layers_to_keep(num_layers: int, feature_layer: int, drop_last_layer: bool) -> int:
    """How many encoder layers must run to produce the selected hidden state."""
    n = num_layers - (1 if drop_last_layer else 0)
    # hidden_states has n + 1 entries (embeddings + one per layer)
    idx = feature_layer if feature_layer >= 0 else n + 1 + feature_layer
    if not 0 <= idx <= n:
        raise ConfigError(
            f"vision.feature_layer: {feature_layer} is out of range for an encoder with {n} usable layers "
            f"(allowed {-(n + 1)}..{n})"
        )
    if idx == 0:
        raise ConfigError("vision.feature_layer: selecting the patch embeddings (layer 0) is not supported")
    return idx


def _read_preprocessor(path: Path) -> dict[str, Any]:
    f = path / "preprocessor_config.json"
    if f.is_file():
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{f}: invalid JSON ({exc})") from None
    return {}


def _vision_sub_config(config: Any) -> Any:
    return getattr(config, "vision_config", config)


def build_vision_encoder(
    cfg: VisionConfig,
    *,
    hf_config: dict[str, Any] | None = None,
    image_mean: tuple[float, ...] | None = None,
    image_std: tuple[float, ...] | None = None,
    load_weights: bool = True,
) -> VisionEncoder:
    """Build the encoder named by ``cfg`` (local folder, preset or HF config dict)."""
    from transformers import AutoConfig, AutoModel

    from vistune.model.presets import vision_preset

    pre: dict[str, Any] = {}
    if cfg.preset is not None:
        hf_dict = vision_preset(cfg.preset)
    elif cfg.hf_config is not None:
        hf_dict = dict(cfg.hf_config)
    else:
        hf_dict = None
    if hf_config is not None:
        hf_dict = dict(hf_config)

    if hf_dict is not None:
        if "model_type" not in hf_dict:
            raise ConfigError(
                "vision.hf_config: needs a 'model_type' (siglip_vision_model | clip_vision_model)"
            )
        enc_type = encoder_type_for(hf_dict["model_type"])
        spec = VISION_ENCODERS[enc_type]
        kwargs = {k: v for k, v in hf_dict.items() if k != "model_type"}
        hf_cfg = AutoConfig.for_model(spec.vision_model_type, **kwargs)
        model = AutoModel.from_config(hf_cfg)
    else:
        path = Path(cfg.path).expanduser()
        if not path.is_dir():
            raise ConfigError(f"vision.path: {path} is not a folder (expected a local HF checkpoint)")
        full_cfg = AutoConfig.from_pretrained(str(path))
        enc_type = encoder_type_for(full_cfg.model_type)
        spec = VISION_ENCODERS[enc_type]
        sub = _vision_sub_config(full_cfg)
        if load_weights:
            from transformers import CLIPVisionModel, SiglipVisionModel

            cls = SiglipVisionModel if enc_type == "siglip" else CLIPVisionModel
            model = cls.from_pretrained(str(path))
        else:
            model = AutoModel.from_config(sub)
        pre = _read_preprocessor(path)

    if cfg.type is not None and cfg.type != spec.name:
        raise ConfigError(
            f"vision.type: {cfg.type!r} does not match the checkpoint/config, which is a {spec.name!r} encoder"
        )
    if hasattr(model.config, "vision_use_head") and getattr(model, "head", None) is not None:
        # the pooling head is never used by an LMM
        model.head = None
        model.config.vision_use_head = False

    num_full = len(_encoder_layers(model))
    keep = layers_to_keep(num_full, cfg.feature_layer, cfg.drop_last_layer)
    if keep < num_full:
        _set_encoder_layers(model, _encoder_layers(model)[:keep])

    mean = image_mean or tuple(pre.get("image_mean") or ()) or spec.default_mean
    std = image_std or tuple(pre.get("image_std") or ()) or spec.default_std
    return VisionEncoder(
        spec,
        model,
        feature_layer=cfg.feature_layer,
        keep_cls=cfg.keep_cls,
        image_mean=mean,
        image_std=std,
        num_layers_full=num_full,
    )


VisionBuilder = Callable[[VisionConfig], VisionEncoder]
