"""Official LLaVA-NeXT (``LLaVA-VL/LLaVA-NeXT``) config keys -> vistune configuration.

The official code describes sizes as **(width, height)**: ``image_grid_pinpoints`` entries are ``[w, h]``
pixels, and the range syntax ``"(1x1),...,(6x6)"`` takes *width* factors first. vistune uses (height, width)
and (rows, cols) everywhere; this module is the only place that converts. Config mapping only: official
checkpoints store weights under their own key names and are not loaded here.

===============================  ==============================================================================
official key                     vistune
===============================  ==============================================================================
``image_aspect_ratio``           ``anyres`` -> AnyRes, no cap; ``anyres_max_N`` -> ``cap="total"``,
                                 ``max_tokens="N tiles"``, slack 1.1; ``pad`` -> one view padded to a square
                                 (mean colour); ``square`` -> one squashed view (SigLIP's processor; CLIP's
                                 resize + centre crop is refused)
``image_grid_pinpoints``         ``visual.grids`` (rows, cols) from ``[w, h]`` pixels or the range syntax
``mm_patch_merge_type``          ``spatial_unpad`` -> unpad + newline; ``spatial`` -> neither;
                                 ``*_nobase`` -> ``base_view="none"``; ``maxpool2x2`` refused, ``flat``
                                 only for single-view modes
``mm_vision_select_layer``       ``vision.feature_layer`` (CLIP); SigLIP ignores it and drops its last layer
``mm_vision_select_feature``     ``patch`` -> CLS dropped; ``cls_patch`` -> ``keep_cls``; multi-layer slices refused
``mm_projector_type``            ``linear`` | ``mlp2x_gelu`` (others refused)
===============================  ==============================================================================

Unpadding follows the official ``int(x)`` rule (``unpad_rounding="official"``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vistune.config import ModelConfig, validate
from vistune.model.interop.hf import InteropError

_PAIR = re.compile(r"\(\s*(\d+)\s*[xX]\s*(\d+)\s*\)")
_OFFICIAL_PATCH_SIZES = (224, 336, 384, 448, 512)
_PROJECTORS = {"linear": "linear", "mlp2x_gelu": "mlp2x_gelu"}


def official_pinpoints_to_grids(spec: Any, image_size: int) -> tuple[tuple[int, int], ...]:
    """Official ``image_grid_pinpoints`` -> vistune grids ``(rows, cols)``, in the official order.

    ``spec`` is a list of ``[width, height]`` pixel pairs (or its string form), or the range syntax
    ``"(AxB),...,(CxD)"``: only the first and last pairs count, the first factor is the *width* in tiles,
    and the official loop runs widths outer, heights inner (``[[i*p, j*p] for i in A..C for j in B..D]``).
    """
    if isinstance(spec, str) and "x" in spec.lower():
        pairs = _PAIR.findall(spec)
        if len(pairs) < 1:
            raise InteropError(
                f"image_grid_pinpoints: cannot read the range {spec!r}; expected '(1x1),...,(6x6)'"
            )
        (w0, h0), (w1, h1) = (int(pairs[0][0]), int(pairs[0][1])), (int(pairs[-1][0]), int(pairs[-1][1]))
        if w0 < 1 or h0 < 1 or w0 > w1 or h0 > h1:
            raise InteropError(f"image_grid_pinpoints: the range {spec!r} is empty or runs backwards")
        return tuple((j, i) for i in range(w0, w1 + 1) for j in range(h0, h1 + 1))
    if isinstance(spec, str):
        try:
            spec = json.loads(spec.replace("(", "[").replace(")", "]"))
        except json.JSONDecodeError:
            raise InteropError(f"image_grid_pinpoints: cannot read {spec!r}") from None
    if not isinstance(spec, list | tuple) or not spec:
        raise InteropError(f"image_grid_pinpoints: expected a list of [width, height] pairs, got {spec!r}")
    grids: list[tuple[int, int]] = []
    for item in spec:
        try:
            w, h = (int(x) for x in item)
        except (TypeError, ValueError):
            raise InteropError(f"image_grid_pinpoints: {item!r} is not a [width, height] pair") from None
        if w <= 0 or h <= 0 or w % image_size or h % image_size:
            raise InteropError(
                f"image_grid_pinpoints: [{w}, {h}] (width, height) is not a whole number of {image_size}-pixel tiles"
            )
        grid = (h // image_size, w // image_size)
        if grid not in grids:  # the official ablation lists repeat entries; the first occurrence decides ties
            grids.append(grid)
    return tuple(grids)


def official_visual_config(cfg: Mapping[str, Any], image_size: int, encoder: str) -> dict[str, Any]:
    """VisualConfig fields for an official config (``encoder``: ``siglip`` | ``clip``).

    Official merge semantics: ``spatial*`` stitches the crops row-major; ``unpad`` in the name adds unpadding
    and the newline column (also the newline after a single view); the ``anyres_max_N`` interpolation only runs
    on the unpad path, so ``anyres_max_N`` with plain ``spatial`` is uncapped.
    """
    aspect = str(cfg.get("image_aspect_ratio", "square"))
    merge = str(cfg.get("mm_patch_merge_type", "flat"))
    if "maxpool2x2" in merge or not (merge == "flat" or merge.startswith("spatial")):
        raise InteropError(
            f"mm_patch_merge_type: {merge!r} is not expressible in vistune (supported: spatial_unpad, spatial, "
            "their _nobase variants, and flat for single-view modes)"
        )
    unpad = merge.startswith("spatial") and "unpad" in merge
    out: dict[str, Any] = {"unpad_rounding": "official", "pool_method": "bilinear", "pool_position": "after"}
    m = re.fullmatch(r"anyres_max_(\d+)", aspect)
    if aspect == "anyres" or m:
        if merge == "flat":
            raise InteropError(
                "mm_patch_merge_type: 'flat' with AnyRes concatenates the crops one after another; vistune always "
                "stitches them into one map (use spatial or spatial_unpad)"
            )
        out.update(
            anyres=True,
            grids=[list(g) for g in official_pinpoints_to_grids(cfg.get("image_grid_pinpoints"), image_size)],
            base_view="none" if "nobase" in merge else "squash",
            unpad=unpad,
            newline=unpad,
        )
        if m and unpad:
            out.update(cap="total", max_tokens=f"{int(m.group(1))} tiles", cap_slack=1.1)
        else:
            out.update(cap="none", max_tokens=None)
        return out
    if aspect == "pad":
        out.update(anyres=False, base_view="pad", cap="none", max_tokens=None, newline=unpad)
        return out
    if aspect == "square":
        if encoder != "siglip":
            raise InteropError(
                "image_aspect_ratio: 'square' with a CLIP tower resizes the short side and centre-crops; vistune's "
                "single view squashes or pads (use 'pad')"
            )
        out.update(anyres=False, base_view="squash", cap="none", max_tokens=None, newline=unpad)
        return out
    raise InteropError(f"image_aspect_ratio: {aspect!r} is not supported (anyres, anyres_max_N, pad, square)")


def _encoder_of(tower: str | None, encoder: str | None) -> str:
    if encoder is not None:
        if encoder not in ("siglip", "clip"):
            raise InteropError(f"encoder: {encoder!r} is not siglip or clip")
        return encoder
    if tower and (Path(tower) / "config.json").is_file():
        from vistune.model.vision import encoder_type_for

        return encoder_type_for(json.loads((Path(tower) / "config.json").read_text())["model_type"])
    raise InteropError(
        f"mm_vision_tower: {tower!r} is not a local folder with a config.json; pass encoder='siglip' or 'clip'"
    )


def official_model_config(
    cfg: Mapping[str, Any],
    *,
    llm_path: str | Path,
    vision_path: str | Path | None = None,
    encoder: str | None = None,
    image_size: int | None = None,
) -> ModelConfig:
    """A vistune :class:`ModelConfig` for an official LLaVA-NeXT ``config.json`` (as a dict).

    ``llm_path`` is the LLM folder, ``vision_path`` the tower folder (default: ``mm_vision_tower``). The encoder
    family comes from the tower's config.json (or ``encoder``), never from its name; ``image_size`` defaults
    to the tower's.
    """
    tower = str(vision_path or cfg.get("mm_vision_tower") or "")
    enc = _encoder_of(tower or None, encoder)
    if image_size is None:
        tcfg = Path(tower) / "config.json"
        if not tcfg.is_file():
            raise InteropError("image_size: give it when the vision tower is not a local folder")
        data = json.loads(tcfg.read_text())
        image_size = int(data.get("vision_config", data)["image_size"])
    if image_size not in _OFFICIAL_PATCH_SIZES:
        raise InteropError(
            f"image_size: the official code only supports {_OFFICIAL_PATCH_SIZES}, got {image_size}"
        )
    feature = str(cfg.get("mm_vision_select_feature", "patch"))
    if feature not in ("patch", "cls_patch"):
        raise InteropError(
            f"mm_vision_select_feature: {feature!r} concatenates several layers; vistune selects one (patch, cls_patch)"
        )
    projector = str(cfg.get("mm_projector_type", "linear"))
    if projector not in _PROJECTORS:
        raise InteropError(f"mm_projector_type: {projector!r} is not one of {', '.join(_PROJECTORS)}")
    if enc == "siglip":  # the official SigLIP tower deletes its last layer and ignores mm_vision_select_layer
        vision = {"feature_layer": -1, "drop_last_layer": True, "keep_cls": False}
    else:
        vision = {
            "feature_layer": int(cfg.get("mm_vision_select_layer", -2)),
            "drop_last_layer": False,
            "keep_cls": feature == "cls_patch",
        }
    data = {
        "vision": {"path": tower, "type": enc, **vision},
        "connector": {"type": _PROJECTORS[projector]},
        "llm": {"path": str(llm_path)},
        "visual": official_visual_config(cfg, image_size, enc),
    }
    return validate(ModelConfig, data, prefix="model.", source="official config")
