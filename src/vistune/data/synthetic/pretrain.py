"""Pretraining the world's tiny backbones: a vision encoder with dense per-patch heads and a language model
that reads *text-only renderings* of the world's images.

The LLaVA recipe starts from a pretrained encoder and a pretrained LLM. This module makes the world's own
pair, offline, the way real ones are made — each from its own kind of data — so that ``vistune demo`` can run
Stage-1 / 1.5 / 2 on top of them in minutes (the demo only has to learn the connector and adapt).

**Patch facts.** Every image is cut exactly as the processor cuts it (:func:`vistune.model.anyres.plan_image`),
and every patch of every view gets four labels from the sample's ground truth, in original-image pixels:

* ``ink`` — the most frequent non-background palette colour in the patch if it covers at least
  :data:`INK_MIN_COVER` of it, else ``none``;
* ``obj_color`` / ``obj_shape`` / ``obj_pos`` — the scene object whose *centre* lies in the patch, if the
  object lies entirely inside the view (an encoder cannot name a shape that a crop cuts in half), and where
  in the view it sits (thirds of the view, named like the scene layout: ``top left`` ... ``bottom right``;
  for the base view that is the object's position in the image);
* ``char`` — the printed character whose glyph centre lies in the patch, if the view shows text at full
  resolution (a squashed base view of a document is a blur: no characters there).

Rules that make this sound for the default world (tile 32, encoder 32 px / 8 px patches): scene layout cells
map to distinct base-view patches (so each object owns one base token), document text cells are exactly one
grid patch, and glyph centres are at least one cell apart, so no two facts compete for a patch.

**Encoder pretraining** (:func:`pretrain_encoder`): a SigLIP vision tower whose last hidden state feeds four
linear per-patch heads (the labels above) and a count head (objects fully inside the view, from the mean
patch feature). Dense, cheap, and exactly the information the LLaVA connector will need.

**Text-only renderings** (:func:`render_tokens`): the same patch facts laid out in the *same order as the
model's visual tokens* — base view in raster order, then the stitched grid with a newline after every row —
where each position is the sum of the LM's embeddings of its fact words: ``" red" + " circle"`` for an
object, ``"7"`` for a character, ``" blue"`` for ink, ``" "`` for an empty patch and ``"\\n"`` at row ends.
It is the world's analogue of the documents, tables and layouts a real LLM read during pretraining.

**LM pretraining** (:func:`pretrain_lm`): a Qwen2 causal LM trained from scratch on the world's train-split
text — captions, transcriptions, chart data, text-only questions, and every question family of the world
asked over text renderings in the demo's chat templates — so it arrives able to answer from its context.
Eval-split content never occurs (the world's structural train/eval split holds for every sample drawn here).

Everything is deterministic given the seed (per-sample random streams, seeded torch, fixed thread count).
Outputs are ordinary Hugging Face folders (``config.json`` + ``model.safetensors`` [+ tokenizer]) that load
through ``VisionConfig(path=...)`` / ``LLMConfig(path=...)``, plus ``manifest.json`` with seed, settings,
measured metrics, git commit and wall time.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vistune.data.synthetic import charts, documents, scenes
from vistune.data.synthetic.base import content_split, sample_rng
from vistune.data.synthetic.config import PALETTE, SHAPES, WorldConfig
from vistune.data.synthetic.font import ALNUM
from vistune.data.synthetic.world import FAMILIES, TextItem
from vistune.model.anyres import EncoderGeometry, ImagePlan, plan_image
from vistune.progress import ProgressBar

#: class names of the per-patch heads (index 0 is always "none")
COLORS: tuple[str, ...] = tuple(PALETTE)
INK_CLASSES: tuple[str, ...] = ("none", *COLORS)
SHAPE_CLASSES: tuple[str, ...] = ("none", *SHAPES)
CHAR_CLASSES: tuple[str, ...] = ("none", *ALNUM)
MAX_COUNT = 9
#: a colour must cover this fraction of a patch to be its ``ink``
INK_MIN_COVER = 0.125
#: views whose scale (view px per image px) is below this show no legible characters
LEGIBLE_SCALE = 0.99

#: where an object sits in the view: the layout names of scenes (thirds of the view), row-major
POSITION_NAMES: tuple[str, ...] = tuple(p for row in scenes.POSITIONS for p in row)
POSITION_CLASSES: tuple[str, ...] = ("none", *POSITION_NAMES)

HEADS: dict[str, tuple[str, ...]] = {
    "ink": INK_CLASSES,
    "obj_color": ("none", *COLORS),
    "obj_shape": SHAPE_CLASSES,
    "char": CHAR_CLASSES,
    "obj_pos": POSITION_CLASSES,
}

#: per-patch label tensor layout: one int per head, in this order
HEAD_NAMES: tuple[str, ...] = tuple(HEADS)


# ==================================================================================================
# Marks: what the ground truth says is where (original image pixels, (y, x))
# ==================================================================================================
@dataclass(frozen=True)
class ObjectMark:
    cy: float
    cx: float
    half: float  # half of the bounding square
    color: str
    shape: str


@dataclass(frozen=True)
class GlyphMark:
    cy: float
    cx: float
    half: float  # half of the text cell
    char: str


@dataclass
class Marks:
    objects: list[ObjectMark] = field(default_factory=list)
    glyphs: list[GlyphMark] = field(default_factory=list)


def content_marks(content: Any) -> Marks:
    """Object and glyph positions of a scene, document or chart (empty for anything else)."""
    marks = Marks()
    if isinstance(content, scenes.Scene):
        for o in content.objects:
            marks.objects.append(ObjectMark(o.cy, o.cx, o.size / 2.0, o.color, o.shape))
    elif isinstance(content, documents.Document):
        c = content.cell
        for line in content.lines:
            for k, ch in enumerate(line.text):
                if ch != " ":
                    marks.glyphs.append(GlyphMark((line.row + 0.5) * c, (line.col + k + 0.5) * c, c / 2, ch))
    elif isinstance(content, charts.Chart):
        c = content.cell
        for bar, g in zip(content.bars, content.geometry(), strict=True):
            for k, ch in enumerate(str(bar.value)):
                marks.glyphs.append(
                    GlyphMark(g["label_top"] + c / 2, g["label_left"] + (k + 0.5) * c, c / 2, ch)
                )
    return marks


# ==================================================================================================
# Views and per-patch labels
# ==================================================================================================
@dataclass(frozen=True)
class ViewWindow:
    """Where one encoder view looks, in original-image pixels: ``top, left`` and pixel extent per view pixel."""

    top: float
    left: float
    step_y: float  # original pixels per view pixel
    step_x: float
    size: int  # view side in pixels

    @property
    def bottom(self) -> float:
        return self.top + self.size * self.step_y

    @property
    def right(self) -> float:
        return self.left + self.size * self.step_x

    @property
    def scale(self) -> float:
        """View pixels per image pixel (the smaller axis)."""
        return 1.0 / max(self.step_y, self.step_x)


def view_windows(plan: ImagePlan, geometry: EncoderGeometry) -> list[ViewWindow]:
    """The windows of a plan's views in the processor's order (base/single view first, then crops).

    Supports squashed base views and AnyRes crops; an aspect-padded base view (``base_view: pad``) is
    refused with a clear error, as is resolution lifting (neither is used by the world's models).
    """
    S = geometry.image_size
    H, W = plan.image_hw
    if plan.lifted_hw != plan.image_hw:
        raise ValueError("text renderings do not support resolution lifting (min_long_edge_tiles)")
    out: list[ViewWindow] = []
    if plan.single_view or plan.view_mode != "none":
        if plan.view_mode == "pad":
            raise ValueError("text renderings support base_view 'squash' or 'none', not 'pad'")
        out.append(ViewWindow(0.0, 0.0, H / S, W / S, S))
    if not plan.single_view:
        rh, rw = plan.resized_hw
        pt, pl = plan.pad_top_left
        sy, sx = H / rh, W / rw
        for top, left, _bottom, _right in plan.crop_boxes:
            out.append(ViewWindow((top - pt) * sy, (left - pl) * sx, sy, sx, S))
    return out


def _palette_index_map(image: Image.Image, background: str) -> np.ndarray:
    """``(H, W)`` int map: 0 for the background, ``1 + COLORS.index(c)`` for palette colour ``c``.

    World images use exact palette RGB values; anything else maps to the nearest palette colour.
    """
    arr = np.asarray(image.convert("RGB"), dtype=np.int32)
    pal = np.asarray([PALETTE[c] for c in COLORS], dtype=np.int32)
    d = ((arr[:, :, None, :] - pal[None, None]) ** 2).sum(-1)
    idx = d.argmin(-1) + 1
    idx[idx == COLORS.index(background) + 1] = 0
    return idx


def _integral_counts(colour_map: np.ndarray) -> np.ndarray:
    """Summed-area table ``(H+1, W+1, K)`` of the one-hot colour map (rectangle counts in O(1))."""
    k = len(COLORS) + 1
    onehot = np.eye(k, dtype=np.int32)[colour_map]
    table = np.zeros((colour_map.shape[0] + 1, colour_map.shape[1] + 1, k), dtype=np.int32)
    table[1:, 1:] = onehot.cumsum(0).cumsum(1)
    return table


def view_labels(
    window: ViewWindow, geometry: EncoderGeometry, marks: Marks, table: np.ndarray
) -> tuple[np.ndarray, int]:
    """Per-patch labels ``(s, s, 5)`` (heads in :data:`HEAD_NAMES` order) and the view's object count.

    ``table`` is :func:`_integral_counts` of the image's palette map. A patch's pixel rectangle is its
    window rectangle rounded outwards to whole image pixels.
    """
    s = geometry.tokens_per_side
    P = geometry.patch_size
    H, W = table.shape[0] - 1, table.shape[1] - 1
    labels = np.zeros((s, s, len(HEAD_NAMES)), dtype=np.int64)
    ph, pw = P * window.step_y, P * window.step_x
    eps = 1e-6
    edges_y = window.top + ph * np.arange(s + 1)
    edges_x = window.left + pw * np.arange(s + 1)
    y0 = np.clip(np.floor(edges_y[:-1] + eps), 0, H).astype(int)
    y1 = np.clip(np.ceil(edges_y[1:] - eps), 0, H).astype(int)
    x0 = np.clip(np.floor(edges_x[:-1] + eps), 0, W).astype(int)
    x1 = np.clip(np.ceil(edges_x[1:] - eps), 0, W).astype(int)
    counts = (
        table[y1[:, None], x1[None, :]]
        - table[y0[:, None], x1[None, :]]
        - table[y1[:, None], x0[None, :]]
        + table[y0[:, None], x0[None, :]]
    )  # (s, s, K)
    area = ((y1 - y0)[:, None] * (x1 - x0)[None, :]).clip(min=1)
    counts[:, :, 0] = 0
    best = counts.argmax(-1)
    cover = np.take_along_axis(counts, best[..., None], -1)[..., 0]
    labels[:, :, 0] = np.where((best > 0) & (cover >= INK_MIN_COVER * area), best, 0)
    n_objects = 0
    for o in marks.objects:
        inside = (
            o.cy - o.half >= window.top - 0.5
            and o.cy + o.half <= window.bottom + 0.5
            and o.cx - o.half >= window.left - 0.5
            and o.cx + o.half <= window.right + 0.5
        )
        if not inside:
            continue
        n_objects += 1
        r = int((o.cy - window.top) // ph)
        c = int((o.cx - window.left) // pw)
        if 0 <= r < s and 0 <= c < s:
            labels[r, c, 1] = COLORS.index(o.color) + 1
            labels[r, c, 2] = SHAPE_CLASSES.index(o.shape)
            third_r = min(2, int(3 * (o.cy - window.top) / (window.bottom - window.top)))
            third_c = min(2, int(3 * (o.cx - window.left) / (window.right - window.left)))
            labels[r, c, 4] = 1 + 3 * third_r + third_c
    if window.scale >= LEGIBLE_SCALE:
        for g in marks.glyphs:
            r = (g.cy - window.top) / ph
            c = (g.cx - window.left) / pw
            if 0 <= r < s and 0 <= c < s and g.char in CHAR_CLASSES:
                labels[int(r), int(c), 3] = CHAR_CLASSES.index(g.char)
    return labels, min(n_objects, MAX_COUNT)


# ==================================================================================================
# Items: one world content with its image, plan and labels
# ==================================================================================================
@dataclass
class Item:
    """One drawn content (``None`` for text-only samples), its conversation and its patch labels."""

    family: str
    content: Any
    turns: list[Any]
    image: Image.Image | None = None
    plan: ImagePlan | None = None
    labels: list[np.ndarray] = field(default_factory=list)  # per view (s, s, len(HEADS))
    counts: list[int] = field(default_factory=list)  # per view


#: extra questions per image of the ``qa-*`` pretraining families (many answers per rendered image)
QA_TURNS = {"scene": 8, "document": 4, "chart": 5}


def more_turns(content: Any, first: list[Any], rng: random.Random, cfg: WorldConfig) -> list[Any]:
    """``first`` plus distinct questions about the same content (scene, document or chart askers).

    Documents ask for every key in random order and sometimes end with a transcription; charts ask up to
    five chart questions and sometimes end with the chart data.
    """
    turns = list(first)
    seen = {t.question for t in turns}
    if isinstance(content, scenes.Scene):
        askers = [scenes.ask_color, scenes.ask_count, scenes.ask_exist, scenes.ask_spatial, scenes.ask_mcq]
        for _ in range(6 * QA_TURNS["scene"]):
            if len(turns) >= QA_TURNS["scene"]:
                break
            qa = rng.choice(askers)(content, rng, cfg)
            if qa is not None and qa.question not in seen:
                turns.append(qa)
                seen.add(qa.question)
    elif isinstance(content, documents.Document):
        for line in rng.sample(list(content.lines), len(content.lines)):
            qa = documents.ask_docvqa(
                content, rng, cfg, exclude={ln.key for ln in content.lines} - {line.key}
            )
            if qa is not None and qa.question not in seen:
                turns.append(qa)
                seen.add(qa.question)
        if rng.random() < 0.3:
            prompt = rng.choice(documents.TRANSCRIBE_PROMPTS)
            turns.append(type(first[0])(prompt, content.transcription, "text", None, {}))
    elif isinstance(content, charts.Chart):
        for _ in range(4 * QA_TURNS["chart"]):
            if len(turns) >= QA_TURNS["chart"]:
                break
            qa = charts.ask_chart(content, rng, cfg)
            if qa.question not in seen:
                turns.append(qa)
                seen.add(qa.question)
        if rng.random() < 0.3:
            turns.append(
                type(first[0])(rng.choice(charts.CHART_DATA_PROMPTS), content.data_text, "text", None, {})
            )
    return turns


def draw_content(
    family: str, seed: int, index: int, cfg: WorldConfig, stream: str = "pretrain", split: str = "train"
) -> tuple[Any, list[Any]]:
    """Content and turns of ``family`` from the private stream ``{stream}-{family}``.

    ``qa-<family>`` draws a ``<family>`` sample and adds questions (:func:`more_turns`). Training always uses
    ``split="train"``; ``"eval"`` content is drawn only to *measure* the backbones.
    """
    if family.startswith("qa-"):
        content, turns = draw_content(family[3:], seed, index, cfg, f"{stream}-qa", split)
        rng = sample_rng(seed, f"{stream}-{family}-turns", split, index)
        return content, more_turns(content, turns, rng, cfg)
    fam = FAMILIES[family]
    rng = sample_rng(seed, f"{stream}-{family}", split, index)
    for _ in range(1000):
        res = fam.build(rng, cfg)
        if res is None:
            continue
        content, turns = res
        if content_split(content.key(), cfg.eval_holdout) == split:
            turns = [turns] if not isinstance(turns, list) else list(turns)
            return content, turns
    raise RuntimeError(f"pretraining data: no {split}-split {family} sample for index {index}")


def make_item(
    family: str,
    seed: int,
    index: int,
    cfg: WorldConfig,
    visual: Any,
    geometry: EncoderGeometry,
    stream: str = "pretrain",
    split: str = "train",
) -> Item:
    """Draw one sample and label every patch of every view of its image."""
    base = family[len(TEXT_PREFIX) :] if family.startswith(TEXT_PREFIX) else family
    content, turns = draw_content(base, seed, index, cfg, stream, split)
    item = Item(family, content, turns)
    if isinstance(content, TextItem) or family.startswith(TEXT_PREFIX):
        return item
    item.image = content.render(cfg)
    h, w = item.image.height, item.image.width
    item.plan = plan_image((h, w), visual, geometry)
    table = _integral_counts(_palette_index_map(item.image, cfg.background))
    marks = content_marks(content)
    for win in view_windows(item.plan, geometry):
        lab, n = view_labels(win, geometry, marks, table)
        item.labels.append(lab)
        item.counts.append(n)
    return item


# ==================================================================================================
# Text-only renderings
# ==================================================================================================
class RenderVocab:
    """Token ids of the words a rendering is made of (each must be a single token of the tokenizer)."""

    def __init__(self, tokenizer: Any) -> None:
        def one(text: str) -> int:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(
                    f"text renderings need {text!r} to be a single token, but the tokenizer splits it into {ids}"
                )
            return int(ids[0])

        self.color = [one(" " + c) for c in COLORS]
        self.shape = [0] + [one(" " + s) for s in SHAPES]
        self.char = [0] + [one(ch) for ch in ALNUM]
        #: position class -> words (" top", " left", ...; " center" for the middle cell)
        self.position = [()] + [tuple(one(" " + w) for w in name.split()) for name in POSITION_NAMES]
        self.empty = one(" ")
        self.newline = one("\n")
        self.image_token_id = int(tokenizer.convert_tokens_to_ids("<image>"))

    def patch(self, lab: Sequence[int]) -> tuple[int, ...]:
        """The word ids of one patch: object (colour, shape, position words) > character > ink > empty."""
        ink, oc, osh, ch, pos = (int(x) for x in lab)
        if oc and osh:
            return (self.color[oc - 1], self.shape[osh], *self.position[pos])
        if ch:
            return (self.char[ch],)
        if ink:
            return (self.color[ink - 1],)
        return (self.empty,)


def token_grid(plan: ImagePlan, labels: Sequence[np.ndarray], geometry: EncoderGeometry) -> list[Any]:
    """Patch labels in the order of the model's visual tokens: a list of per-token label rows
    and ``None`` for every newline position (mirrors ``VistuneModel.encode_images``)."""
    s = geometry.tokens_per_side
    if geometry.cls_tokens:
        raise ValueError("text renderings do not support encoders that keep a CLS token")
    if plan.view_side != s:
        raise ValueError(
            f"text renderings need unpooled views ({s}x{s} tokens), but this plan pools them to {plan.view_side}"
        )
    out: list[Any] = []
    if plan.single_view:
        out.extend(labels[0].reshape(-1, labels[0].shape[-1]))
        if plan.newline:
            out.append(None)
        return out
    k = 0
    if plan.view_mode != "none":
        out.extend(labels[0].reshape(-1, labels[0].shape[-1]))
        k = 1
    rows, cols = plan.grid
    grid = np.stack(labels[k:]).reshape(rows, cols, s, s, -1).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * s, cols * s, -1)
    top, bottom, left, right = plan.unpad
    grid = grid[top:bottom, left:right]
    if tuple(plan.final_hw) != tuple(grid.shape[:2]):
        raise ValueError(
            f"text renderings need an uncapped grid, but this plan resamples {grid.shape[:2]} to {plan.final_hw}; "
            "raise visual.max_tokens"
        )
    for row in grid:
        out.extend(row)
        if plan.newline:
            out.append(None)
    if len(out) != plan.num_tokens:  # pragma: no cover - guarded by the checks above
        raise AssertionError(f"rendering has {len(out)} positions, the plan {plan.num_tokens}")
    return out


def render_tokens(
    item: Item,
    vocab: RenderVocab,
    geometry: EncoderGeometry,
    noise: float = 0.0,
    rng: random.Random | None = None,
) -> list[tuple[int, ...]]:
    """The text-only rendering of an item's image: one tuple of word ids per visual token.

    ``noise`` replaces that fraction of the positions by a random patch word (an empty patch, a random ink
    colour or a random character), so the LM learns to tolerate an imperfect encoder.
    """
    assert item.plan is not None
    out: list[tuple[int, ...]] = []
    for lab in token_grid(item.plan, item.labels, geometry):
        if lab is None:
            out.append((vocab.newline,))
            continue
        tok = vocab.patch(lab)
        if noise and rng is not None and rng.random() < noise:
            kind = rng.randrange(3)
            if kind == 0:
                tok = (vocab.empty,)
            elif kind == 1:
                tok = (rng.choice(vocab.color),)
            else:
                tok = (rng.choice(vocab.char[1:]),)
        out.append(tok)
    return out


# ==================================================================================================
# Shared helpers: seeding, weighted family streams, progress bars, manifests
# ==================================================================================================
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class FamilyStream:
    """A deterministic, weighted stream of items: item ``k`` picks its family from ``Random((seed, k))``."""

    def __init__(
        self,
        weights: dict[str, float],
        seed: int,
        cfg: WorldConfig,
        visual: Any,
        geometry: EncoderGeometry,
        stream: str,
        split: str = "train",
    ) -> None:
        self.names = sorted(n for n, w in weights.items() if w > 0)
        self.weights = [weights[n] for n in self.names]
        self.seed, self.cfg, self.visual, self.geometry = seed, cfg, visual, geometry
        self.stream, self.split = stream, split
        self.k = 0

    def item(self, k: int) -> Item:
        rng = random.Random(f"vistune-pretrain/{self.stream}/{self.seed}/{self.split}/{k}")
        fam = rng.choices(self.names, weights=self.weights)[0]
        return make_item(fam, self.seed, k, self.cfg, self.visual, self.geometry, self.stream, self.split)

    def __iter__(self) -> Iterator[Item]:
        return self

    def __next__(self) -> Item:
        it = self.item(self.k)
        self.k += 1
        return it


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def source_sha256() -> str:
    """SHA-256 of this module's source: pins the exact pretraining code next to the (HEAD) commit."""
    import hashlib

    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def git_commit() -> str | None:
    """The commit of the source tree this module lives in (``None`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _save_fp16(module: torch.nn.Module, out: Path, dtype: torch.dtype) -> None:
    """``save_pretrained`` with the weights stored as ``dtype`` (loading restores fp32 in ``build_model``)."""
    module.to(dtype)
    try:
        module.save_pretrained(str(out))
    finally:
        module.to(torch.float32)


# ==================================================================================================
# Encoder pretraining
# ==================================================================================================
@dataclass
class EncoderSettings:
    """Architecture and schedule of a world vision encoder (SigLIP vision tower)."""

    name: str = "world-vit-32"
    image_size: int = 32
    patch_size: int = 8
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    steps: int = 1500
    views_per_step: int = 192
    lr: float = 2e-3
    warmup: int = 30
    weight_decay: float = 0.01
    fact_weight: float = 6.0
    #: scenes dominate: shapes at base-view size are the hard part (characters and ink are learnt fast)
    mix: dict[str, float] = field(
        default_factory=lambda: {"color": 2.0, "count": 2.0, "docvqa": 0.5, "chart": 0.5}
    )
    eval_items: int = 200

    def hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "siglip_vision_model",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "vision_use_head": False,
        }

    @property
    def geometry(self) -> EncoderGeometry:
        return EncoderGeometry(self.image_size, self.patch_size)


class PatchHeads(torch.nn.Module):
    """Linear per-patch heads (one per :data:`HEADS` entry) and a count head on the mean patch feature."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(hidden, len(v)) for k, v in HEADS.items()})
        self.count = torch.nn.Linear(hidden, MAX_COUNT + 1)

    def forward(self, feats: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {k: h(feats) for k, h in self.heads.items()}, self.count(feats.mean(1))


def world_visual(**changes: Any) -> Any:
    """The visual configuration the world's backbones are made for: AnyRes up to 3x3 crops, squashed base
    view, unpadding, row newlines, and a cap (9 tiles) that never resamples a world image."""
    from vistune.config import VisualConfig
    from vistune.data.synthetic.backbones import WORLD_VISUAL

    return VisualConfig(**{**WORLD_VISUAL, **changes})


def _encoder_batch(
    stream: FamilyStream, processor: Any, n_views: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pix, labs, counts = [], [], []
    got = 0
    while got < n_views:
        it = next(stream)
        if it.image is None:
            continue
        pix.append(processor.preprocess_image(it.image).pixel_values)
        labs.extend(torch.from_numpy(lab.reshape(-1, lab.shape[-1])) for lab in it.labels)
        counts.extend(it.counts)
        got += len(it.labels)
    return torch.cat(pix), torch.stack(labs), torch.tensor(counts)


def _encoder_processor(settings: EncoderSettings, visual: Any) -> Any:
    from vistune.data.processor import VistuneProcessor, VisualState
    from vistune.model.tokenizer import load_tiny_tokenizer
    from vistune.model.vision import SIGLIP_MEAN, SIGLIP_STD

    return VistuneProcessor(
        load_tiny_tokenizer(), settings.geometry, SIGLIP_MEAN, SIGLIP_STD, VisualState(visual)
    )


def _encoder_losses(
    model: Any,
    heads: PatchHeads,
    pix: torch.Tensor,
    labs: torch.Tensor,
    counts: torch.Tensor,
    fact_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    feats = model(pixel_values=pix, output_hidden_states=True).hidden_states[-1]
    logits, count_logits = heads(feats)
    loss = torch.zeros(())
    stats: dict[str, Any] = {}
    for i, name in enumerate(HEAD_NAMES):
        target = labs[:, :, i]
        lg = logits[name]
        per = torch.nn.functional.cross_entropy(
            lg.reshape(-1, lg.shape[-1]), target.reshape(-1), reduction="none"
        )
        # facts are rare (most patches are empty): weight them up so the heads learn them, not "none"
        w = torch.where(target.reshape(-1) > 0, fact_weight, 1.0)
        loss = loss + (per * w).sum() / w.sum()
        pred = lg.argmax(-1)
        fact = target > 0
        stats[name] = (
            int((pred == target).sum()),
            target.numel(),
            int(((pred == target) & fact).sum()),
            int(fact.sum()),
        )
    loss = loss + torch.nn.functional.cross_entropy(count_logits, counts)
    stats["count"] = (int((count_logits.argmax(-1) == counts).sum()), counts.numel(), 0, 0)
    return loss, stats


def _accuracies(stats: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, (c, n, cf, nf) in stats.items():
        out[f"{k}_acc"] = round(c / max(1, n), 4)
        if nf:
            out[f"{k}_fact_acc"] = round(cf / nf, 4)
    return out


def pretrain_encoder(
    out_dir: str | Path,
    settings: EncoderSettings | None = None,
    cfg: WorldConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    threads: int | None = 2,
    log: Callable[[str], None] | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Pretrain a world vision encoder and write it as a Hugging Face SigLIP folder.

    Writes ``config.json`` + ``model.safetensors`` (fp16) + ``preprocessor_config.json`` (the encoder that
    ``VisionConfig(path=out_dir)`` loads), ``heads.safetensors`` (the pretraining heads, for analysis) and
    ``manifest.json``. Returns the manifest. Accuracies are measured on *eval-split* content.
    ``stop_after`` ends the run after that many steps and only returns ``{"history": ...}`` (nothing is
    written): :func:`verify_backbone` uses it to check that a shipped backbone reproduces.
    """
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel

    from vistune.fsutil import atomic_dir

    settings = settings or EncoderSettings()
    cfg = cfg or WorldConfig()
    say = log or (lambda _m: None)
    if threads:
        torch.set_num_threads(threads)
    _seed_all(seed)
    t0 = time.perf_counter()
    visual = world_visual()
    hf = settings.hf_config()
    model = AutoModel.from_config(
        AutoConfig.for_model(hf["model_type"], **{k: v for k, v in hf.items() if k != "model_type"})
    )
    heads = PatchHeads(settings.hidden_size)
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    processor = _encoder_processor(settings, visual)
    stream = FamilyStream(settings.mix, seed, cfg, visual, settings.geometry, "encoder")
    history: list[dict[str, Any]] = []
    model.train()
    with ProgressBar(progress, f"encoder {settings.name}", settings.steps) as bar:
        for step in range(settings.steps):
            lr = _lr_at(step, settings.steps, settings.lr, settings.warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            pix, labs, counts = _encoder_batch(stream, processor, settings.views_per_step)
            loss, stats = _encoder_losses(model, heads, pix, labs, counts, settings.fact_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            rec = {"step": step + 1, "loss": round(float(loss.detach()), 5), **_accuracies(stats)}
            history.append(rec)
            if stop_after is not None and step + 1 >= stop_after:
                return {"history": history}
            if (step + 1) % 10 == 0 or step + 1 == settings.steps:
                bar.update(
                    step + 1, f"loss {float(loss.detach()):.3f} char {rec.get('char_fact_acc', 0):.3f}"
                )
    train_s = time.perf_counter() - t0
    model.eval()
    probe = _encoder_batch(
        FamilyStream(settings.mix, seed, cfg, visual, settings.geometry, "encoder-rms"), processor, 256
    )[0]
    raw_rms = feature_rms(model, probe)
    alpha = FEATURE_RMS / raw_rms
    rescale_features(model, alpha)
    for head in heads.heads.values():  # the heads read the rescaled features (same predictions)
        head.weight.data.div_(alpha)
    heads.count.weight.data.div_(alpha)
    metrics = evaluate_encoder(model, heads, settings, cfg, seed, processor)
    metrics["feature_rms_before_rescale"] = round(raw_rms, 4)
    metrics["feature_rms"] = round(feature_rms(model, probe), 4)
    say(f"encoder {settings.name}: {metrics}")
    manifest = {
        "kind": "vision_encoder",
        "name": settings.name,
        "seed": seed,
        "settings": {k: v for k, v in settings.__dict__.items()},
        "world": cfg.model_dump(mode="json"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "metrics": metrics,
        "first_loss": history[0]["loss"],
        "final_loss": float(np.mean([h["loss"] for h in history[-10:]])),
        "history": history[:: max(1, len(history) // 60)],
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "train_time_s": round(train_s, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "commit": git_commit(),
        "source_sha256": source_sha256(),
    }
    with atomic_dir(out_dir) as tmp:
        _save_fp16(model, tmp, torch.float16)
        from vistune.model.vision import SIGLIP_MEAN, SIGLIP_STD

        pre = {"image_mean": list(SIGLIP_MEAN), "image_std": list(SIGLIP_STD), "size": settings.image_size}
        (tmp / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
        save_file(
            {k: v.detach().half().contiguous() for k, v in heads.state_dict().items()},
            str(tmp / "heads.safetensors"),
        )
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


#: RMS of the encoder features handed to the connector (see :func:`rescale_features`)
FEATURE_RMS = 0.5


@torch.no_grad()
def rescale_features(model: Any, alpha: float) -> None:
    """Multiply a SigLIP tower's residual stream by ``alpha``, exactly and function-preserving.

    Every layer normalises its input (pre-LayerNorm), so scaling the patch and position embeddings and the
    output projections of every attention and MLP block scales every hidden state by ``alpha`` and changes
    nothing else. Pretraining ends with this so that the features handed to the connector have RMS
    :data:`FEATURE_RMS` — the scale at which a freshly initialised ``mlp2x_gelu`` connector produces vectors
    of the LM's embedding scale, so Stage-1 learns a mapping instead of first shrinking its output 50-fold.
    """
    emb = model.embeddings if hasattr(model, "embeddings") else model.vision_model.embeddings
    enc = model.encoder if hasattr(model, "encoder") else model.vision_model.encoder
    for p in (emb.patch_embedding.weight, emb.patch_embedding.bias, emb.position_embedding.weight):
        p.mul_(alpha)
    for layer in enc.layers:
        for lin in (layer.self_attn.out_proj, layer.mlp.fc2):
            lin.weight.mul_(alpha)
            if lin.bias is not None:
                lin.bias.mul_(alpha)


@torch.no_grad()
def feature_rms(model: Any, pixel_values: torch.Tensor) -> float:
    feats = model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-1]
    return float(feats.pow(2).mean().sqrt())


@torch.no_grad()
def evaluate_encoder(
    model: Any,
    heads: PatchHeads,
    settings: EncoderSettings,
    cfg: WorldConfig,
    seed: int,
    processor: Any | None = None,
) -> dict[str, float]:
    """Per-head patch accuracy (all patches, and patches that hold a fact) and count accuracy on
    ``settings.eval_items`` eval-split images."""
    visual = world_visual()
    processor = processor or _encoder_processor(settings, visual)
    stream = FamilyStream(settings.mix, seed, cfg, visual, settings.geometry, "encoder-eval", split="eval")
    was = model.training
    model.eval()
    total: dict[str, list[int]] = {}
    n = 0
    while n < settings.eval_items:
        pix, labs, counts = _encoder_batch(stream, processor, 64)
        n = stream.k
        _, stats = _encoder_losses(model, heads, pix, labs, counts)
        for k, v in stats.items():
            acc = total.setdefault(k, [0, 0, 0, 0])
            for i in range(4):
                acc[i] += v[i]
    model.train(was)
    return _accuracies({k: tuple(v) for k, v in total.items()})


# ==================================================================================================
# LM pretraining
# ==================================================================================================
#: families rendered with the Stage-1 ``plain`` template (image, then the caption); the rest use ChatML
PLAIN_FAMILIES = frozenset({"alt"})
#: most words one rendered position sums (colour + shape + two position words)
SLOTS = 4
CHAT_TEMPLATE = "chatml_nosys"


@dataclass
class LMSettings:
    """Architecture, data mixture and schedule of a world language model (Qwen2)."""

    name: str = "world-lm-s"
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    steps: int = 3000
    batch_size: int = 16
    #: examples are drawn this many batches at a time and grouped by length (less padding)
    length_groups: int = 4
    #: 3e-3 learnt look-ups markedly slower (colour 20 % vs 65 % after 1000 steps)
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.01
    render_noise: float = 0.02
    max_turns: int = 8
    #: the encoder geometry whose token layout the renderings follow (view size, patch size)
    encoders: tuple[tuple[int, int], ...] = ((32, 8),)
    mix: dict[str, float] = field(
        default_factory=lambda: {
            "qa-color": 1.0,
            "qa-count": 1.0,
            "qa-exist": 2.0,
            "qa-spatial": 1.0,
            "qa-mcq": 1.0,
            "qa-docvqa": 1.5,
            "qa-chart": 1.0,
            "instruct": 1.0,
            "alt": 0.6,
            "caption": 0.8,
            "recap": 0.3,
            "ocr": 0.8,
            "transcribe": 0.3,
            "chart_data": 0.3,
            "text": 0.1,
            # the same questions over plain-text layouts (see TEXT_PREFIX): cheap copy / look-up practice
            "txt-qa-color": 0.5,
            "txt-qa-count": 0.3,
            "txt-qa-exist": 1.0,
            "txt-qa-spatial": 0.3,
            "txt-qa-mcq": 0.3,
            "txt-qa-docvqa": 1.0,
            "txt-ocr": 0.5,
            "txt-qa-chart": 0.5,
        }
    )
    #: curriculum: the first ``copy_steps`` steps draw only from ``copy_mix`` — copying codes out of a text
    #: context. Measured: on that mixture alone the loss sits on a plateau (~2.8), then drops within ~100 steps
    #: around step 500 (0.3 by step 800), while the same examples diluted in the full mixture formed no copying
    #: in 3000 steps. With it (+ txt-* families + split capitals) world-lm-s reads *perfect* document
    #: renderings at DocVQA ANLS 0.33 / nTED 0.60 (without: 0.03 / 0.22). Putting scene questions into the copy
    #: mixture instead (txt-qa-exist, txt-qa-color) kept copying from forming by step 2000.
    copy_steps: int = 800
    #: pre-split capitals so codes tokenise letter by letter in renderings, contexts and answers alike
    #: (:func:`vistune.model.tokenizer.split_capitals`)
    split_capitals: bool = True
    copy_mix: dict[str, float] = field(default_factory=lambda: {"txt-ocr": 1.0, "txt-qa-docvqa": 1.0})
    eval_items: int = 40
    #: score the LM every N steps on a quarter of ``eval_items`` (0 = only at the end)
    eval_every: int = 1000

    def hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "qwen2",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "vocab_size": 1024,
            "max_position_embeddings": 1024,
            "tie_word_embeddings": True,
            "rope_theta": 10000.0,
        }


#: ``txt-<family>``: the same content and questions with the image replaced by a plain-text layout of its facts
#: (document lines, one ``colour shape position`` line per object, chart data). Copying from a text context,
#: tokenised exactly like the answers, is the cheapest way for a small LM to form the look-up / copy
#: circuits that reading a rendering needs.
TEXT_PREFIX = "txt-"


def text_layout(content: Any) -> str:
    """Plain-text stand-in for an image: what a perfect reader would write down, in reading order."""
    if isinstance(content, documents.Document):
        return "\n".join(line.text for line in content.lines)
    if isinstance(content, scenes.Scene):
        # a leading space gives the words the same tokens as in a rendering (" red", " circle", " top")
        return "\n".join(f" {o.color} {o.shape} {o.position}" for o in content.objects)
    if isinstance(content, charts.Chart):
        return content.data_text
    raise TypeError(f"no text layout for {type(content).__name__}")


def conversation(item: Item) -> tuple[str, list[dict[str, str]]]:
    """``(template, messages)`` of an item: its turns, the image placeholder leading the first question."""
    template = "plain" if item.family in PLAIN_FAMILIES else CHAT_TEMPLATE
    messages: list[dict[str, str]] = []
    for i, qa in enumerate(item.turns):
        q = qa.question
        if i == 0 and item.image is not None:
            q = f"<image>\n{q}"
        elif i == 0 and item.family.startswith(TEXT_PREFIX):
            q = f"{text_layout(item.content)}\n{q}"
        messages.append({"role": "user", "content": q})
        messages.append({"role": "assistant", "content": qa.answer})
    return template, messages


def splice_rendering(
    ids: Sequence[int],
    labels: Sequence[int] | None,
    item: Item,
    vocab: RenderVocab,
    geometry: EncoderGeometry,
    noise: float = 0.0,
    rng: random.Random | None = None,
) -> tuple[list[tuple[int, ...]], list[int]]:
    """Replace the ``<image>`` id by the item's rendering (labels -100 there); text ids become 1-tuples."""
    out_ids: list[tuple[int, ...]] = []
    out_lab: list[int] = []
    for j, t in enumerate(ids):
        if t == vocab.image_token_id:
            r = render_tokens(item, vocab, geometry, noise, rng)
            out_ids.extend(r)
            out_lab.extend([-100] * len(r))
        else:
            out_ids.append((int(t),))
            out_lab.append(int(labels[j]) if labels is not None else -100)
    return out_ids, out_lab


def lm_example(
    item: Item,
    vocab: RenderVocab,
    geometry: EncoderGeometry,
    tokenizer: Any,
    noise: float,
    rng: random.Random,
) -> tuple[list[tuple[int, ...]], list[int]]:
    from vistune.data.templates import tokenize_conversation

    template, messages = conversation(item)
    ids, labels = tokenize_conversation(template, messages, tokenizer)
    return splice_rendering(ids, labels, item, vocab, geometry, noise, rng)


def _collate(examples: Sequence[tuple[list[tuple[int, ...]], list[int]]], left: bool = False):
    T = max(len(e[0]) for e in examples)
    B = len(examples)
    ids = torch.full((B, T, SLOTS), -1, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, (seq, lab) in enumerate(examples):
        n = len(seq)
        sl = slice(T - n, T) if left else slice(0, n)
        ids[b, sl] = torch.tensor([list(t) + [-1] * (SLOTS - len(t)) for t in seq], dtype=torch.long)
        labels[b, sl] = torch.tensor(lab, dtype=torch.long)
        mask[b, sl] = 1
    return ids, labels, mask


def rendered_embeddings(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """``(B, T, SLOTS)`` word ids (-1 = unused slot) -> summed input embeddings ``(B, T, H)``."""
    emb = model.get_input_embeddings()
    x = emb(ids.clamp(min=0)) * (ids >= 0).unsqueeze(-1).to(emb.weight.dtype)
    return x.sum(2)


def answer_weighted_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token loss where every *answer* (a maximal run of supervised tokens) weighs the same.

    A 60-token caption and a one-token colour answer then pull equally: with the usual per-token mean the
    long answers dominate the gradient and the short look-up answers (colour, yes/no, counts) that need the
    context most are learnt last.
    """
    targets = labels[:, 1:]
    lg = logits[:, :-1]
    per = torch.nn.functional.cross_entropy(
        lg.reshape(-1, lg.shape[-1]).float(), targets.reshape(-1), ignore_index=-100, reduction="none"
    ).view_as(targets)
    sup = targets != -100
    starts = sup & ~torch.nn.functional.pad(sup[:, :-1], (1, 0), value=False)
    run_id = starts.long().cumsum(1)  # answer index within the row (valid where sup)
    n_runs = int(starts.sum())
    if n_runs == 0:
        return per.sum() * 0.0
    offsets = torch.cumsum(torch.nn.functional.pad(starts.sum(1)[:-1], (1, 0)), 0)[:, None]
    flat_id = (run_id - 1 + offsets)[sup]
    run_len = torch.bincount(flat_id, minlength=n_runs).float()
    w = 1.0 / run_len[flat_id]
    return (per[sup] * w).sum() / n_runs


def _lm_cfg(cfg: WorldConfig, settings: LMSettings) -> WorldConfig:
    data = cfg.model_dump()
    data["max_turns"] = settings.max_turns
    return WorldConfig(**data)


def pretrain_lm(
    out_dir: str | Path,
    settings: LMSettings | None = None,
    cfg: WorldConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    threads: int | None = 2,
    log: Callable[[str], None] | None = None,
    snapshots: str | Path | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Pretrain a world LM on train-split text and renderings; write a Hugging Face Qwen2 folder.

    Writes ``config.json`` + ``model.safetensors`` (fp16) + ``generation_config.json``, the tokenizer files
    (the shipped tiny tokenizer) and ``manifest.json`` with per-task scores of the LM reading *perfect*
    renderings of eval-split images — the ceiling a perfect encoder + connector would let it reach.
    ``snapshots``: a folder that receives a copy of the model at every ``eval_every`` step; ``stop_after``
    as in :func:`pretrain_encoder`.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from vistune.fsutil import atomic_dir
    from vistune.model.tokenizer import load_tiny_tokenizer, split_capitals

    settings = settings or LMSettings()
    cfg = cfg or WorldConfig()
    say = log or (lambda _m: None)
    if threads:
        torch.set_num_threads(threads)
    _seed_all(seed)
    t0 = time.perf_counter()
    tok = load_tiny_tokenizer()
    if settings.split_capitals:
        tok = split_capitals(tok)
    vocab = RenderVocab(tok)
    visual = world_visual()
    hf = settings.hf_config()
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(hf["model_type"], **{k: v for k, v in hf.items() if k != "model_type"}),
        attn_implementation="sdpa",
    )
    lm_cfg = _lm_cfg(cfg, settings)
    geos = [EncoderGeometry(s, p) for s, p in settings.encoders]
    streams = [
        FamilyStream(settings.mix, seed, lm_cfg, visual, g, f"lm-{g.image_size}-{g.patch_size}") for g in geos
    ]
    copy_streams = [
        FamilyStream(settings.copy_mix, seed, lm_cfg, visual, g, f"lm-copy-{g.image_size}-{g.patch_size}")
        for g in geos
    ]
    rng = random.Random(f"vistune-pretrain/lm-noise/{seed}")
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    history: list[dict[str, Any]] = []
    pending: list[list[Any]] = []
    model.train()
    with ProgressBar(progress, f"LM {settings.name}", settings.steps) as bar:
        for step in range(settings.steps):
            lr = _lr_at(step, settings.steps, settings.lr, settings.warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            if not pending:
                group = []
                for b in range(settings.batch_size * settings.length_groups):
                    k = (step * settings.batch_size + b) % len(geos)
                    group.append(
                        lm_example(
                            next((copy_streams if step < settings.copy_steps else streams)[k]),
                            vocab,
                            geos[k],
                            tok,
                            settings.render_noise,
                            rng,
                        )
                    )
                group.sort(key=lambda e: len(e[0]))
                batches = [
                    group[i : i + settings.batch_size] for i in range(0, len(group), settings.batch_size)
                ]
                order = list(range(len(batches)))
                random.Random(f"vistune-pretrain/lm-order/{seed}/{step}").shuffle(order)
                pending.extend(batches[i] for i in order)
            examples = pending.pop(0)
            ids, labels, mask = _collate(examples)
            logits = model(inputs_embeds=rendered_embeddings(model, ids), attention_mask=mask).logits
            loss_t = answer_weighted_loss(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss_t.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss = float(loss_t.detach())
            history.append({"step": step + 1, "loss": round(loss, 5), "tokens": int(mask.sum())})
            if stop_after is not None and step + 1 >= stop_after:
                return {"history": history}
            if (step + 1) % 10 == 0 or step + 1 == settings.steps:
                recent = np.mean([h["loss"] for h in history[-10:]])
                bar.update(step + 1, f"loss {recent:.3f}")
            if settings.eval_every and (step + 1) % settings.eval_every == 0 and step + 1 < settings.steps:
                model.eval()
                quick = evaluate_lm(model, tok, geos[0], cfg, seed, max(4, settings.eval_items // 4))
                model.train()
                history[-1]["eval"] = quick
                say(f"LM {settings.name} step {step + 1}: {quick}")
                if snapshots is not None:
                    _save_fp16(model, Path(snapshots) / f"step-{step + 1:06d}", torch.float16)
                    tok.save_pretrained(str(Path(snapshots) / f"step-{step + 1:06d}"))
    train_s = time.perf_counter() - t0
    model.eval()
    scores = {
        f"{g.image_size}/{g.patch_size}": evaluate_lm(model, tok, g, cfg, seed, settings.eval_items)
        for g in geos
    }
    say(f"LM {settings.name}: {scores}")
    manifest = {
        "kind": "language_model",
        "name": settings.name,
        "seed": seed,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.__dict__.items()},
        "world": cfg.model_dump(mode="json"),
        "visual": visual.model_dump(mode="json"),
        "chat_templates": sorted({CHAT_TEMPLATE, "plain"}),
        "parameters": sum(p.numel() for p in model.parameters()),
        "metrics": {"perfect_rendering_scores": scores},
        "first_loss": history[0]["loss"],
        "final_loss": float(np.mean([h["loss"] for h in history[-20:]])),
        "history": history[:: max(1, len(history) // 100)],
        "tokens_seen": int(sum(h["tokens"] for h in history)),
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "train_time_s": round(train_s, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "commit": git_commit(),
        "source_sha256": source_sha256(),
    }
    with atomic_dir(out_dir) as tmp:
        _save_fp16(model, tmp, torch.float16)
        tok.save_pretrained(str(tmp))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@torch.no_grad()
def greedy_generate(
    model: Any, prompts: Sequence[list[tuple[int, ...]]], max_new_tokens: int, stop_ids: set[int]
) -> list[list[int]]:
    """Greedy decoding from rendered prompts (left-padded batch, KV cache)."""
    examples = [(p, [-100] * len(p)) for p in prompts]
    ids, _, mask = _collate(examples, left=True)
    x = rendered_embeddings(model, ids)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=True)
    cache = out.past_key_values
    logits = out.logits[:, -1]
    B = len(prompts)
    done = torch.zeros(B, dtype=torch.bool)
    result: list[list[int]] = [[] for _ in range(B)]
    last = pos[:, -1:]
    for _ in range(max_new_tokens):
        nxt = logits.argmax(-1)
        for b in range(B):
            if not done[b]:
                t = int(nxt[b])
                if t in stop_ids:
                    done[b] = True
                else:
                    result[b].append(t)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], 1)
        last = last + 1
        out = model(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=last,
            past_key_values=cache,
            use_cache=True,
        )
        cache = out.past_key_values
        logits = out.logits[:, -1]
    return result


@torch.no_grad()
def evaluate_lm(
    model: Any,
    tokenizer: Any,
    geometry: EncoderGeometry,
    cfg: WorldConfig,
    seed: int,
    n: int,
    batch: int = 20,
) -> dict[str, float]:
    """Score the LM on every ``synth_*`` task with *perfect* renderings of eval-split images (the same
    prompts, metrics and generation lengths as ``vistune eval``)."""
    from vistune.data.synthetic.world import EVAL_TASKS
    from vistune.data.templates import tokenize_prompt
    from vistune.eval.task import Doc
    from vistune.eval.tasks.synthetic import SyntheticTask

    vocab = RenderVocab(tokenizer)
    visual = world_visual()
    stop = {int(tokenizer.convert_tokens_to_ids("<|im_end|>")), int(tokenizer.eos_token_id)}
    scores: dict[str, float] = {}
    for name, spec in EVAL_TASKS.items():
        task = SyntheticTask(name, spec.metric)
        items = [make_item(spec.family, seed, i, cfg, visual, geometry, "lm-eval", "eval") for i in range(n)]
        records = []
        for s in range(0, n, batch):
            chunk = items[s : s + batch]
            prompts = []
            for it in chunk:
                q = it.turns[0].question
                ids = tokenize_prompt(
                    CHAT_TEMPLATE, [{"role": "user", "content": f"<image>\n{q}"}], tokenizer
                )
                prompts.append(splice_rendering(ids, None, it, vocab, geometry)[0])
            outs = greedy_generate(model, prompts, task.generation.max_new_tokens, stop)
            for it, o in zip(chunk, outs, strict=True):
                qa = it.turns[0]
                doc = Doc(
                    it.family,
                    [],
                    qa.answer,
                    {"question": qa.question, "meta": {**qa.meta, **it.content.facts()}},
                )
                records.append(task.score(doc, tokenizer.decode(o, skip_special_tokens=True)))
        agg = task.aggregate(records)
        scores[name] = round(float(agg[task.primary_metric]), 4)
    return scores


# ==================================================================================================
# All backbones, and the `vistune world pretrain` command
# ==================================================================================================
def backbone_settings() -> dict[str, EncoderSettings | LMSettings | Any]:
    """The shipped backbones' settings, by name (see :mod:`vistune.data.synthetic.backbones`); the
    connectors (:class:`~vistune.data.synthetic.align.ConnectorSettings`) come last: they join an encoder
    and an LM that must exist first."""
    from vistune.data.synthetic.align import ConnectorSettings
    from vistune.data.synthetic.backbones import WORLD_MODELS

    connectors = {
        f"connector-{m}": ConnectorSettings(name=f"connector-{m}", vision=v, llm=lm)
        for m, (v, lm) in WORLD_MODELS.items()
    }
    return {
        "world-vit-32": EncoderSettings(name="world-vit-32", image_size=32, patch_size=8),
        "world-vit-64": EncoderSettings(name="world-vit-64", image_size=64, patch_size=8, steps=1000),
        "world-lm-s": LMSettings(name="world-lm-s"),
        "world-lm-m": LMSettings(
            name="world-lm-m",
            hidden_size=160,
            intermediate_size=448,
            num_hidden_layers=4,
            num_attention_heads=5,
            num_key_value_heads=1,
            steps=2000,
        ),
        **connectors,
    }


#: how ``pretrain_backbones(jobs=2)`` splits the work: each chain runs in its own process, in order
CHAINS: tuple[tuple[str, ...], ...] = (("world-vit-32", "world-lm-s"), ("world-vit-64", "world-lm-m"))


def _pretrain_one(
    name: str,
    out: Path,
    seed: int,
    cfg: WorldConfig | None,
    progress: bool,
    threads: int | None,
    scale: float,
    log: Callable[[str], None] | None,
) -> dict[str, Any]:
    from vistune.data.synthetic.align import ConnectorSettings, align_connector

    st = backbone_settings()[name]
    st.steps = max(2, round(st.steps * scale))
    if isinstance(st, ConnectorSettings):
        if scale < 1:
            st.images = max(4, round(st.images * scale * 10))
        return align_connector(out / name, st, out, cfg, seed, threads, log)
    if scale < 1:
        st.eval_items = max(4, round(st.eval_items * scale * 10))
        if isinstance(st, LMSettings):
            st.eval_every = 0
    if isinstance(st, EncoderSettings):
        return pretrain_encoder(out / name, st, cfg, seed, progress, threads, log)
    return pretrain_lm(out / name, st, cfg, seed, progress, threads, log)


def _chain_worker(args: tuple[Any, ...]) -> list[str]:
    names, out, seed, cfg_json, threads, scale = args
    cfg = WorldConfig(**cfg_json) if cfg_json is not None else None
    for name in names:
        _pretrain_one(name, Path(out), seed, cfg, False, threads, scale, None)
    return list(names)


def pretrain_backbones(
    output: str | Path,
    names: Sequence[str] | None = None,
    seed: int = 0,
    cfg: WorldConfig | None = None,
    progress: bool = True,
    threads: int | None = 1,
    scale: float = 1.0,
    log: Callable[[str], None] | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Pretrain the named backbones (default: all) into ``output/<name>/`` and write ``output/manifest.json``.

    ``jobs=2`` runs the two :data:`CHAINS` (each encoder then its LM) in two processes of ``threads`` threads
    each — on a 2-core machine all four backbones take about one hour. Every backbone's result depends only
    on its own settings and seed, so the split changes nothing but the wall time. ``scale`` multiplies every
    step count (``0.01`` gives a smoke run in seconds).
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    table = backbone_settings()
    chosen = list(names) if names else list(table)
    unknown = [n for n in chosen if n not in table]
    if unknown:
        raise KeyError(f"unknown backbone(s) {unknown}; known: {', '.join(table)}")
    t0 = time.perf_counter()
    say = log or (lambda _m: None)
    # connectors join an encoder and an LM of this folder: they run last, in this process
    from vistune.data.synthetic.align import ConnectorSettings

    connectors = [n for n in chosen if isinstance(table[n], ConnectorSettings)]
    chosen = [n for n in chosen if n not in connectors]
    if jobs > 1:
        import multiprocessing as mp

        chains = [[n for n in chain if n in chosen] for chain in CHAINS]
        rest = [n for n in chosen if not any(n in c for c in chains)]
        chains = [c for c in chains if c] + ([rest] if rest else [])
        cfg_json = cfg.model_dump(mode="json") if cfg is not None else None
        with mp.get_context("spawn").Pool(min(jobs, len(chains))) as pool:
            for done in pool.imap_unordered(
                _chain_worker, [(tuple(c), str(out), seed, cfg_json, threads, scale) for c in chains]
            ):
                say(f"finished {', '.join(done)}")
    else:
        for name in chosen:
            _pretrain_one(name, out, seed, cfg, progress, threads, scale, log)
    for name in connectors:
        _pretrain_one(name, out, seed, cfg, progress, threads, scale, log)
    return write_index(out, wall_time_s=round(time.perf_counter() - t0, 1), jobs=jobs)


def verify_backbone(path: str | Path, steps: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Rerun the first steps of a backbone's pretraining from its ``manifest.json`` and compare the losses.

    Rebuilds the settings, world config and seed from the manifest, trains ``steps`` steps (default: up to
    the second logged history entry) with the manifest's thread count, and returns
    ``{"steps", "compared", "max_abs_diff", "match"}`` over the history entries both runs logged.
    """
    path = Path(path)
    m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    logged = {h["step"]: h["loss"] for h in m["history"]}
    steps = steps or sorted(logged)[min(1, len(logged) - 1)]
    cfg = WorldConfig(**m["world"])
    threads = threads or m.get("threads") or 1
    raw = dict(m["settings"])
    if m["kind"] == "connector":  # seconds: refit it whole into a scratch folder beside it
        import shutil
        import tempfile

        from vistune.data.synthetic.align import ConnectorSettings, align_connector

        scratch = Path(tempfile.mkdtemp(prefix="verify-", dir=path.parent))
        try:
            run = align_connector(
                scratch / path.name, ConnectorSettings(**raw), path.parent, cfg, m["seed"], threads
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    elif m["kind"] == "vision_encoder":
        st = EncoderSettings(**raw)
        run = pretrain_encoder(path, st, cfg, m["seed"], False, threads, stop_after=steps)
    else:
        raw["encoders"] = tuple(tuple(e) for e in raw.get("encoders", ((32, 8),)))
        st = LMSettings(**raw)
        run = pretrain_lm(path, st, cfg, m["seed"], False, threads, stop_after=steps)
    pairs = [(logged[h["step"]], h["loss"]) for h in run["history"] if h["step"] in logged]
    diff = max((abs(a - b) for a, b in pairs), default=float("nan"))
    return {
        "steps": steps,
        "compared": len(pairs),
        "max_abs_diff": diff,
        "match": bool(pairs) and diff < 1e-3,
    }


def write_index(folder: str | Path, **extra: Any) -> dict[str, Any]:
    """(Re)write ``folder/manifest.json``: an index of the backbone manifests found in ``folder``."""
    out = Path(folder)
    found: dict[str, Any] = {}
    for sub in sorted(out.iterdir()):
        f = sub / "manifest.json"
        if sub.is_dir() and f.is_file():
            m = json.loads(f.read_text(encoding="utf-8"))
            found[sub.name] = {
                k: m.get(k)
                for k in (
                    "kind",
                    "seed",
                    "parameters",
                    "metrics",
                    "final_loss",
                    "wall_time_s",
                    "threads",
                    "commit",
                )
            }
    manifest = {
        "format": "vistune-world-backbones",
        "backbones": found,
        "total_wall_time_s": round(sum(b.get("wall_time_s") or 0 for b in found.values()), 1),
        **extra,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
