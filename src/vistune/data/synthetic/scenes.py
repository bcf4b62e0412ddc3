"""Scenes of coloured shapes and the questions asked about them (colour, count, existence, spatial, MCQ).

Layout rule: a scene is divided into a 3x3 grid of layout cells; each object occupies its own cell (so
objects never overlap) and is jittered inside it. An object's *position* is the name of its cell
(``"top left"``, ``"top"``, ..., ``"center"``, ..., ``"bottom right"``), which is what captions state and
what spatial questions compare: object A is *left of* B when both share a layout row and A's column is
smaller; *above* when they share a column and A's row is smaller. Pairs in different rows and columns are
never asked about, so every spatial answer is unambiguous.

Shapes are rasterised here with numpy (pixel-centre inside tests, no anti-aliasing), so every object is
drawn in exactly its RGB colour and the image is bit-identical across machines and Pillow versions.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vistune.data.synthetic.base import PROMPT_SHORT, QA, make_mcq
from vistune.data.synthetic.config import PALETTE, WorldConfig

#: Position names of the 3x3 layout, indexed ``[row][col]``.
POSITIONS: tuple[tuple[str, str, str], ...] = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
POSITION_CELL: dict[str, tuple[int, int]] = {POSITIONS[r][c]: (r, c) for r in range(3) for c in range(3)}

#: Spatial relation words (answers of ``synth_spatial``).
RELATIONS = ("left", "right", "above", "below")

_PLURAL = {"cross": "crosses"}


def plural(shape: str) -> str:
    return _PLURAL.get(shape, shape + "s")


# --------------------------------------------------------------------------------------------------
# Scene model
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneObject:
    """One object: its facts (colour, shape, layout cell) and its geometry (centre and size in px)."""

    color: str
    shape: str
    row: int
    col: int
    cy: float
    cx: float
    size: float

    @property
    def position(self) -> str:
        return POSITIONS[self.row][self.col]

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    def fact(self) -> dict[str, Any]:
        return {
            "color": self.color,
            "shape": self.shape,
            "position": self.position,
            "center": [round(self.cy, 2), round(self.cx, 2)],
            "size": round(self.size, 2),
        }


@dataclass(frozen=True)
class Scene:
    """A scene: objects in reading order (top-to-bottom, left-to-right by layout cell)."""

    objects: tuple[SceneObject, ...]
    height: int
    width: int
    background: str

    def key(self) -> str:
        parts = sorted(f"{o.color}:{o.shape}:{o.row}{o.col}" for o in self.objects)
        return f"scene|{self.background}|{self.height}x{self.width}|" + ",".join(parts)

    def facts(self) -> dict[str, Any]:
        return {"objects": [o.fact() for o in self.objects], "background": self.background}

    def render(self, cfg: WorldConfig | None = None) -> Image.Image:
        pixels = np.empty((self.height, self.width, 3), dtype=np.uint8)
        pixels[:] = PALETTE[self.background]
        for o in self.objects:
            mask, (y0, x0) = shape_mask(o.shape, o.size, o.cy, o.cx, self.height, self.width)
            region = pixels[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
            region[mask] = PALETTE[o.color]
        return Image.fromarray(pixels, mode="RGB")

    def count(self, color: str | None = None, shape: str | None = None) -> int:
        return sum(
            1
            for o in self.objects
            if (color is None or o.color == color) and (shape is None or o.shape == shape)
        )

    def unique_by_shape(self) -> list[SceneObject]:
        counts = Counter(o.shape for o in self.objects)
        return [o for o in self.objects if counts[o.shape] == 1]

    def unique_by_color(self) -> list[SceneObject]:
        counts = Counter(o.color for o in self.objects)
        return [o for o in self.objects if counts[o.color] == 1]

    def unique_by_name(self) -> list[SceneObject]:
        counts = Counter(o.name for o in self.objects)
        return [o for o in self.objects if counts[o.name] == 1]


def relation(a: SceneObject, b: SceneObject) -> str | None:
    """Where ``a`` is relative to ``b`` (``left/right/above/below``), or None when not axis-aligned."""
    if a.row == b.row and a.col != b.col:
        return "left" if a.col < b.col else "right"
    if a.col == b.col and a.row != b.row:
        return "above" if a.row < b.row else "below"
    return None


# --------------------------------------------------------------------------------------------------
# Rasteriser
# --------------------------------------------------------------------------------------------------
def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    verts = []
    for k in range(2 * points):
        r = 1.0 if k % 2 == 0 else inner
        a = -math.pi / 2 + k * math.pi / points
        verts.append((r * math.cos(a), r * math.sin(a)))
    return verts


_POLYGONS: dict[str, list[tuple[float, float]]] = {
    # (u, v) = (x, y) offsets in units of the half-size; y grows downwards
    "triangle": [(0.0, -0.95), (1.0, 0.8), (-1.0, 0.8)],
    "star": _star(),
    "hexagon": [(math.cos(k * math.pi / 3), math.sin(k * math.pi / 3)) for k in range(6)],
}


def _in_polygon(u: np.ndarray, v: np.ndarray, verts: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule point-in-polygon test, vectorised over pixel centres."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(verts)
    for i in range(n):
        x1, y1 = verts[i]
        x2, y2 = verts[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > v) != (y2 > v)
        xint = x1 + (v - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (u < xint)
    return inside


def shape_mask(
    shape: str, size: float, cy: float, cx: float, height: int, width: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Boolean mask of ``shape`` (bounding square ``size`` px centred at ``(cy, cx)``), clipped to the canvas.

    Returns ``(mask, (top, left))``: the mask covers the pixels ``[top:top+h, left:left+w]``. A pixel is
    inked when its centre lies inside the shape.
    """
    r = size / 2.0
    y0, y1 = max(0, math.floor(cy - r)), min(height, math.ceil(cy + r) + 1)
    x0, x1 = max(0, math.floor(cx - r)), min(width, math.ceil(cx + r) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    v = (yy + 0.5 - cy) / r
    u = (xx + 0.5 - cx) / r
    if shape == "circle":
        m = u * u + v * v <= 1.0
    elif shape == "ring":
        d = u * u + v * v
        m = (d <= 1.0) & (d >= 0.55**2)
    elif shape == "square":
        m = (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    elif shape == "diamond":
        m = np.abs(u) + np.abs(v) <= 1.0
    elif shape == "cross":
        m = ((np.abs(u) <= 0.34) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.34) & (np.abs(u) <= 1.0))
    elif shape in _POLYGONS:
        m = _in_polygon(u, v, _POLYGONS[shape])
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return m, (y0, x0)


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------
def _place(rng: random.Random, cfg: WorldConfig, row: int, col: int) -> tuple[float, float, float]:
    h, w = cfg.scene_size
    ch, cw = h / 3.0, w / 3.0
    size = min(ch, cw) * rng.uniform(*cfg.object_size)
    slack_y, slack_x = (ch - size) / 2.0, (cw - size) / 2.0
    cy = (row + 0.5) * ch + rng.uniform(-slack_y, slack_y)
    cx = (col + 0.5) * cw + rng.uniform(-slack_x, slack_x)
    return cy, cx, size


def make_scene(
    rng: random.Random,
    cfg: WorldConfig,
    specs: list[tuple[str, str]],
    cells: list[tuple[int, int]] | None = None,
) -> Scene:
    """A scene with the given ``(color, shape)`` objects in random distinct (or the given) layout cells."""
    if len(specs) > 9:
        raise ValueError(f"a scene holds at most 9 objects, got {len(specs)}")
    if cells is None:
        cells = [divmod(i, 3) for i in rng.sample(range(9), len(specs))]
    objs = []
    for (color, shape), (row, col) in zip(specs, cells, strict=True):
        cy, cx, size = _place(rng, cfg, row, col)
        objs.append(SceneObject(color, shape, row, col, cy, cx, size))
    objs.sort(key=lambda o: (o.row, o.col))
    h, w = cfg.scene_size
    return Scene(tuple(objs), h, w, cfg.background)


def sample_scene(rng: random.Random, cfg: WorldConfig, min_objects: int = 1) -> Scene:
    """A scene with ``cfg.objects`` objects (at least ``min_objects``) of random colours and shapes."""
    lo, hi = cfg.objects
    n = rng.randint(max(lo, min_objects), max(hi, min_objects))
    specs = [(rng.choice(cfg.colors), rng.choice(cfg.shapes)) for _ in range(n)]
    return make_scene(rng, cfg, specs)


def sample_count_scene(rng: random.Random, cfg: WorldConfig) -> tuple[Scene, str, int]:
    """A scene with exactly ``k`` objects of a target shape, ``k`` uniform over ``cfg.count_range``."""
    k = rng.randint(*cfg.count_range)
    target = rng.choice(cfg.shapes)
    lo, hi = cfg.objects
    n = rng.randint(max(lo, k, 1), max(hi, k))
    others = [s for s in cfg.shapes if s != target]
    specs = [(rng.choice(cfg.colors), target) for _ in range(k)]
    specs += [(rng.choice(cfg.colors), rng.choice(others)) for _ in range(n - k)]
    return make_scene(rng, cfg, specs), target, k


# --------------------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------------------
def _short(question: str) -> str:
    return f"{question}\n{PROMPT_SHORT}"


def ask_color(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA | None:
    """``What color is the {shape}?`` about an object whose shape is unique in the scene."""
    cands = scene.unique_by_shape()
    if not cands:
        return None
    o = rng.choice(cands)
    return QA(_short(f"What color is the {o.shape}?"), o.color, "word", len(cfg.colors), {"target": o.fact()})


def count_question(shape: str) -> str:
    return _short(f"How many {plural(shape)} are there?")


def ask_count(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA | None:
    """``How many {shapes} are there?`` for a shape whose count lies in ``cfg.count_range``."""
    lo, hi = cfg.count_range
    cands = [s for s in cfg.shapes if lo <= scene.count(shape=s) <= hi]
    if not cands:
        return None
    s = rng.choice(cands)
    return QA(count_question(s), str(scene.count(shape=s)), "number", hi - lo + 1, {"shape": s})


def ask_exist(
    scene: Scene,
    rng: random.Random,
    cfg: WorldConfig,
    category: str | None = None,
    positive: bool | None = None,
) -> QA | None:
    """POPE-style ``Is there a {color} {shape} in the image?`` with balanced yes/no.

    Negatives are ``adversarial`` (an absent object sharing the colour or the shape of a present one, the
    hallucination-prone case) or ``random`` (any absent object); the category is drawn first so both
    categories hold yes and no answers, as in POPE.
    """
    category = category or rng.choice(("random", "adversarial"))
    positive = rng.random() < 0.5 if positive is None else positive
    present = {(o.color, o.shape) for o in scene.objects}
    if positive:
        color, shape = rng.choice(sorted(present))
    else:
        absent = [(c, s) for c in cfg.colors for s in cfg.shapes if (c, s) not in present]
        if category == "adversarial":
            absent = [(c, s) for c, s in absent if any(c == pc or s == ps for pc, ps in present)]
        if not absent:
            return None
        color, shape = rng.choice(absent)
    article = "an" if color[0] in "aeiou" else "a"
    q = _short(f"Is there {article} {color} {shape} in the image?")
    return QA(q, "yes" if positive else "no", "yesno", 2, {"category": category, "object": [color, shape]})


def ask_spatial(scene: Scene, rng: random.Random, cfg: WorldConfig, rel: str | None = None) -> QA | None:
    """``Where is the {A} relative to the {B}?`` -> left/right/above/below, balanced over relations."""
    rel = rel or rng.choice(RELATIONS)
    named = scene.unique_by_name()
    pairs = [(a, b) for a in named for b in named if a is not b and relation(a, b) == rel]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    q = _short(f"Where is the {a.name} relative to the {b.name}?")
    return QA(q, rel, "word", len(RELATIONS), {"subject": a.fact(), "reference": b.fact()})


def ask_mcq(scene: Scene, rng: random.Random, cfg: WorldConfig, kind: str | None = None) -> QA | None:
    """AI2D-style multiple choice about colour, shape, position or the number of objects."""
    n_opt = cfg.mcq_options
    kinds = ["color", "position", "count"]
    if len(cfg.shapes) >= n_opt:
        kinds.append("shape")
    kind = kind or rng.choice(kinds)
    if kind == "color":
        cands = scene.unique_by_shape()
        if not cands:
            return None
        o = rng.choice(cands)
        return make_mcq(rng, f"What color is the {o.shape}?", o.color, list(cfg.colors), n_opt, kind)
    if kind == "shape":
        cands = scene.unique_by_color()
        if not cands:
            return None
        o = rng.choice(cands)
        return make_mcq(rng, f"What shape is the {o.color} object?", o.shape, list(cfg.shapes), n_opt, kind)
    if kind == "position":
        cands = scene.unique_by_name()
        if not cands:
            return None
        o = rng.choice(cands)
        return make_mcq(rng, f"Where is the {o.name}?", o.position, list(POSITION_CELL), n_opt, kind)
    if kind == "count":
        n = len(scene.objects)
        return make_mcq(
            rng,
            "How many objects are there in the image?",
            str(n),
            [str(i) for i in range(1, 10)],
            n_opt,
            kind,
        )
    raise ValueError(f"unknown mcq kind {kind!r}")


# --------------------------------------------------------------------------------------------------
# Family builders: (rng, cfg) -> (scene, first turn) or None to redraw
# --------------------------------------------------------------------------------------------------
def build_color(rng: random.Random, cfg: WorldConfig) -> tuple[Scene, QA] | None:
    scene = sample_scene(rng, cfg)
    qa = ask_color(scene, rng, cfg)
    return (scene, qa) if qa else None


def build_count(rng: random.Random, cfg: WorldConfig) -> tuple[Scene, QA] | None:
    scene, shape, k = sample_count_scene(rng, cfg)
    lo, hi = cfg.count_range
    return scene, QA(count_question(shape), str(k), "number", hi - lo + 1, {"shape": shape})


def build_exist(rng: random.Random, cfg: WorldConfig) -> tuple[Scene, QA] | None:
    scene = sample_scene(rng, cfg)
    qa = ask_exist(scene, rng, cfg)
    return (scene, qa) if qa else None


def build_spatial(rng: random.Random, cfg: WorldConfig) -> tuple[Scene, QA] | None:
    rel = rng.choice(RELATIONS)
    scene = sample_scene(rng, cfg, min_objects=2)
    qa = ask_spatial(scene, rng, cfg, rel)
    return (scene, qa) if qa else None


def build_mcq(rng: random.Random, cfg: WorldConfig) -> tuple[Scene, QA] | None:
    scene = sample_scene(rng, cfg)
    qa = ask_mcq(scene, rng, cfg)
    return (scene, qa) if qa else None
