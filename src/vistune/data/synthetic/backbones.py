"""The world's pretrained tiny backbones: where they live and the model presets that use them.

``vistune world pretrain`` (:mod:`vistune.data.synthetic.pretrain`) makes them; the results ship in
``vistune/assets/world/<name>/`` as ordinary Hugging Face folders, so they load through exactly the code path
of real checkpoints (``VisionConfig(path=...)``, ``LLMConfig(path=...)``):

==================  ==================================================================================
``world-vit-32``    SigLIP vision tower, 32 px views, 8 px patches (4x4 tokens per view)
``world-vit-64``    SigLIP vision tower, 64 px views, 8 px patches (8x8 tokens per view; twice the resolution)
``world-lm-s``      Qwen2 LM, small
``world-lm-m``      Qwen2 LM, medium (the "LLM size" ablation)
``connector-<m>``   a pretrained ``mlp2x_gelu`` connector (+ image newline) for model preset ``<m>``
                    (:mod:`vistune.data.synthetic.align`): the world's released ``mm_projector``
==================  ==================================================================================

Model presets (:data:`WORLD_MODELS`) combine an encoder and an LM with their pretrained connector (a fresh
one when the backbones folder has none), the ``chatml_nosys`` template and the world's visual configuration
(AnyRes up to 3x3 crops, squashed base view, row newlines, a 9-tile cap that never resamples a world image):

* ``world-s`` — ``world-vit-32`` + ``world-lm-s`` (the demo's model)
* ``world-m`` — ``world-vit-32`` + ``world-lm-m``
* ``world-s-vit64`` — ``world-vit-64`` + ``world-lm-s``

``VISTUNE_WORLD_BACKBONES`` points at another folder of backbones (e.g. the output of
``vistune world pretrain --output DIR``) instead of the shipped ones.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Any

#: Folder of the shipped backbones.
SHIPPED_DIR = Path(__file__).resolve().parent.parent.parent / "assets" / "world"
ENV = "VISTUNE_WORLD_BACKBONES"

#: backbone name -> kind ("vision" | "llm" | "connector")
BACKBONES: dict[str, str] = {
    "world-vit-32": "vision",
    "world-vit-64": "vision",
    "world-lm-s": "llm",
    "world-lm-m": "llm",
    "connector-world-s": "connector",
    "connector-world-m": "connector",
    "connector-world-s-vit64": "connector",
}

#: the visual configuration the backbones were pretrained for (see ``pretrain.world_visual``)
WORLD_VISUAL: dict[str, Any] = {"grids": "max:3x3", "cap": "total", "max_tokens": "9 tiles"}

#: model preset name -> (vision backbone, LLM backbone)
WORLD_MODELS: dict[str, tuple[str, str]] = {
    "world-s": ("world-vit-32", "world-lm-s"),
    "world-m": ("world-vit-32", "world-lm-m"),
    "world-s-vit64": ("world-vit-64", "world-lm-s"),
}


class BackboneNotFound(FileNotFoundError):
    """A world backbone folder is missing (not shipped in this install, or not pretrained yet)."""


def backbones_dir() -> Path:
    """``$VISTUNE_WORLD_BACKBONES`` if set, else the shipped folder."""
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else SHIPPED_DIR


def backbone_path(name: str, root: str | Path | None = None) -> Path:
    """The folder of backbone ``name`` (an exact name from :data:`BACKBONES`); raises if it is missing."""
    if name not in BACKBONES:
        raise KeyError(f"unknown world backbone {name!r}; known: {', '.join(BACKBONES)}")
    folder = Path(root) if root is not None else backbones_dir()
    path = folder / name
    marker = "connector.safetensors" if BACKBONES[name] == "connector" else "config.json"
    if not (path / marker).is_file():
        raise BackboneNotFound(
            f"world backbone {name!r} not found in {folder} (no {name}/{marker}); reproduce the backbones with "
            f"`vistune world pretrain --output DIR` and point {ENV}=DIR at them"
        )
    return path


def backbone_manifest(name: str, root: str | Path | None = None) -> dict[str, Any]:
    """The ``manifest.json`` written by pretraining (seed, settings, metrics, commit, wall time)."""
    return json.loads((backbone_path(name, root) / "manifest.json").read_text(encoding="utf-8"))


def world_model_config(
    vision: str = "world-vit-32",
    llm: str = "world-lm-s",
    root: str | Path | None = None,
    visual: dict[str, Any] | None = None,
    connector: str | None = None,
) -> dict[str, Any]:
    """A :class:`~vistune.config.ModelConfig` mapping that loads two world backbones from their folders
    (and the pretrained connector ``connector``, a ``connector-*`` backbone, when given and present)."""
    if BACKBONES.get(vision) != "vision":
        raise KeyError(
            f"{vision!r} is not a world vision backbone; known: "
            f"{', '.join(n for n, k in BACKBONES.items() if k == 'vision')}"
        )
    if BACKBONES.get(llm) != "llm":
        raise KeyError(
            f"{llm!r} is not a world LLM backbone; known: "
            f"{', '.join(n for n, k in BACKBONES.items() if k == 'llm')}"
        )
    conn: dict[str, Any] = {"type": "mlp2x_gelu"}
    if connector is not None:
        # a backbones folder without this connector: start from a fresh one
        with contextlib.suppress(BackboneNotFound):
            conn["path"] = str(backbone_path(connector, root) / "connector.safetensors")
    return {
        "vision": {"path": str(backbone_path(vision, root)), "feature_layer": -1},
        "connector": conn,
        "llm": {"path": str(backbone_path(llm, root))},
        "visual": {**WORLD_VISUAL, **(visual or {})},
        "chat_template": "chatml_nosys",
    }


def world_model_presets(root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Model presets for every combination whose backbones exist (``{}`` when none are installed)."""
    out: dict[str, dict[str, Any]] = {}
    for name, (vision, llm) in WORLD_MODELS.items():
        try:
            out[name] = world_model_config(vision, llm, root, connector=f"connector-{name}")
        except BackboneNotFound:
            continue
    return out


def world_model_preset(name: str, root: str | Path | None = None) -> dict[str, Any]:
    """One model preset by exact name (raises :class:`BackboneNotFound` when its backbones are missing)."""
    if name not in WORLD_MODELS:
        raise KeyError(f"unknown world model preset {name!r}; known: {', '.join(WORLD_MODELS)}")
    vision, llm = WORLD_MODELS[name]
    return copy.deepcopy(world_model_config(vision, llm, root, connector=f"connector-{name}"))
