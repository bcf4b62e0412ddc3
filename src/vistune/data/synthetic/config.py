"""``WorldConfig``: every size and vocabulary knob of the synthetic world, validated.

Sizes are expressed in *tiles*: ``tile`` is the vision encoder's view size in pixels, and an image of
``(rows, cols)`` tiles is ``rows * tile`` by ``cols * tile`` pixels, so an AnyRes grid of that shape crops it
losslessly while the base view squashes it by ``max(rows, cols)``. Documents default to 3x3 tiles with
8 px text cells (tile 32): legible in 3x3 crops, collapsed in the base view (see
:func:`vistune.data.synthetic.font.legibility`). Scenes and charts default to 2x2 tiles and stay readable
from the base view, as their questions are about large coloured shapes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vistune.data.synthetic.font import ALNUM, FONTS

#: Named colours (RGB). Names are the answer vocabulary; keep them single tokens-friendly words.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "brown": (130, 80, 30),
    "pink": (245, 120, 190),
    "cyan": (20, 200, 210),
    "white": (255, 255, 255),
}

#: Shapes the rasteriser can draw (see ``scenes.shape_mask``).
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _pair(v: Any, name: str) -> tuple[int, int]:
    if isinstance(v, str):
        parts = v.lower().replace("x", ",").split(",")
        v = [p.strip() for p in parts]
    try:
        a, b = (int(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected two integers like [2, 3] or '2x3', got {v!r}") from None
    return a, b


class WorldSizes(_Strict):
    """Number of samples written per file by :func:`vistune.data.synthetic.write_world`."""

    stage1_alt: int = Field(400, ge=0, description="Stage-1 short alt-text captions")
    stage1_web: int = Field(400, ge=0, description="Stage-1 noisy web captions (pool with quality scores)")
    stage15_recap: int = Field(200, ge=0, description="Stage-1.5 detailed re-captions")
    stage15_docs: int = Field(200, ge=0, description="Stage-1.5 document transcription")
    stage15_charts: int = Field(150, ge=0, description="Stage-1.5 chart-to-data")
    stage2_instruct: int = Field(800, ge=0, description="Stage-2 mixed instruction data")
    eval: int = Field(100, ge=0, description="samples per eval task")


class WorldConfig(_Strict):
    """Configuration of the procedural world (images, vocabularies, noise, sizes)."""

    tile: int = Field(32, ge=16, le=1024, description="vision-encoder view size in pixels")
    scene_tiles: tuple[int, int] = Field((2, 2), description="scene image size in tiles (rows, cols)")
    doc_tiles: tuple[int, int] = Field((3, 3), description="document image size in tiles (rows, cols)")
    chart_tiles: tuple[int, int] = Field((2, 2), description="chart image size in tiles (rows, cols)")
    background: str = Field("white", description="scene/document/chart background colour name")
    colors: tuple[str, ...] = Field(
        ("red", "green", "blue", "yellow", "purple", "orange", "black"), description="object colour names"
    )
    shapes: tuple[str, ...] = Field(
        ("circle", "square", "triangle", "diamond", "cross"), description="shapes"
    )
    objects: tuple[int, int] = Field((1, 4), description="objects per scene, inclusive range")
    object_size: tuple[float, float] = Field(
        (0.6, 0.85), description="object size as a fraction of its layout cell, inclusive range"
    )
    count_range: tuple[int, int] = Field((1, 4), description="answers of count questions, inclusive")
    font: str = Field("5x7", description="pixel font for documents, charts and the gallery")
    doc_cell: int | None = Field(None, description="text cell size in px; default tile // 4")
    doc_charset: str = Field(ALNUM, description="characters of document values")
    doc_keys: tuple[str, ...] = Field(
        ("ID", "NO", "CODE", "NAME", "DATE", "ROOM", "TEL", "REF", "LOT", "KEY"),
        description="field names printed in documents (asked for in doc QA)",
    )
    doc_lines: tuple[int, int] = Field((2, 4), description="key/value lines per document, inclusive")
    doc_value_len: tuple[int, int] = Field((3, 4), description="characters per value, inclusive")
    chart_bars: tuple[int, int] = Field((3, 4), description="bars per chart, inclusive")
    chart_values: tuple[int, int] = Field((1, 40), description="bar values, inclusive")
    mcq_options: int = Field(4, ge=2, le=6, description="options per multiple-choice question")
    web_noise: float = Field(0.4, ge=0, le=1, description="fraction of wrong captions in the web pool")
    web_quality_noise: float = Field(
        0.1, ge=0, le=1, description="half-width of the uniform noise added to the web quality score"
    )
    web_select: float = Field(0.5, gt=0, le=1, description="fraction kept by the top-quality/random subsets")
    max_turns: int = Field(3, ge=1, le=8, description="max question turns per Stage-2 conversation")
    text_fraction: float = Field(0.05, ge=0, le=1, description="fraction of text-only Stage-2 samples")
    stage2_mix: dict[str, float] = Field(
        default_factory=lambda: {
            "color": 1.0,
            "count": 1.0,
            "exist": 1.0,
            "spatial": 1.0,
            "mcq": 1.0,
            "docvqa": 1.5,
            "chart": 1.0,
            "caption": 0.5,
        },
        description="relative weights of the image families in Stage-2 instruction data",
    )
    eval_holdout: float = Field(
        0.2, gt=0, lt=1, description="fraction of the content space reserved for eval (never in train)"
    )
    sizes: WorldSizes = Field(default_factory=WorldSizes)

    @field_validator("scene_tiles", "doc_tiles", "chart_tiles", "objects", "count_range", mode="before")
    @classmethod
    def _int_pairs(cls, v: Any, info: Any) -> tuple[int, int]:
        return _pair(v, info.field_name)

    @field_validator("doc_lines", "doc_value_len", "chart_bars", "chart_values", mode="before")
    @classmethod
    def _int_pairs2(cls, v: Any, info: Any) -> tuple[int, int]:
        return _pair(v, info.field_name)

    @model_validator(mode="after")
    def _check(self) -> WorldConfig:
        for name in ("scene_tiles", "doc_tiles", "chart_tiles"):
            r, c = getattr(self, name)
            if not (1 <= r <= 8 and 1 <= c <= 8):
                raise ValueError(f"{name}: each side must be 1..8 tiles, got {(r, c)}")
        for name in ("objects", "count_range", "doc_lines", "doc_value_len", "chart_bars", "chart_values"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: lower bound {lo} > upper bound {hi}")
        if self.background not in PALETTE:
            raise ValueError(f"background: unknown colour {self.background!r}; known: {', '.join(PALETTE)}")
        for c in self.colors:
            if c not in PALETTE:
                raise ValueError(f"colors: unknown colour {c!r}; known: {', '.join(PALETTE)}")
            if c == self.background:
                raise ValueError(f"colors: {c!r} equals the background colour and would be invisible")
        if len(set(self.colors)) != len(self.colors) or len(self.colors) < 2:
            raise ValueError(f"colors: need at least 2 distinct colours, got {self.colors}")
        for s in self.shapes:
            if s not in SHAPES:
                raise ValueError(f"shapes: unknown shape {s!r}; known: {', '.join(SHAPES)}")
        if len(set(self.shapes)) != len(self.shapes) or len(self.shapes) < 2:
            raise ValueError(f"shapes: need at least 2 distinct shapes, got {self.shapes}")
        if not (self.objects[0] >= 1 and self.objects[1] <= 9):
            raise ValueError(f"objects: scenes hold 1..9 objects (a 3x3 layout), got {self.objects}")
        lo, hi = self.object_size
        if not (0.2 <= lo <= hi <= 1.0):
            raise ValueError(f"object_size: need 0.2 <= low <= high <= 1.0, got {self.object_size}")
        if self.count_range[0] < 0:
            raise ValueError(f"count_range: counts must be >= 0, got {self.count_range}")
        if self.count_range[1] > self.objects[1]:
            raise ValueError(f"count_range: max {self.count_range[1]} exceeds objects max {self.objects[1]}")
        if self.font not in FONTS:
            raise ValueError(f"font: unknown font {self.font!r}; known: {', '.join(FONTS)}")
        font = FONTS[self.font]
        cell = self.cell
        if self.tile % cell:
            raise ValueError(
                f"doc_cell: {cell} px must divide tile={self.tile} so glyphs never straddle an AnyRes crop"
            )
        try:
            font.scale_for_cell(cell)
        except ValueError as exc:
            raise ValueError(f"doc_cell: {exc}") from None
        if not self.doc_charset:
            raise ValueError("doc_charset: must not be empty")
        font.check_text(self.doc_charset, "doc_charset")
        if " " in self.doc_charset:
            raise ValueError("doc_charset: must not contain spaces (spaces separate words)")
        if not self.doc_keys or len(set(self.doc_keys)) != len(self.doc_keys):
            raise ValueError(f"doc_keys: need distinct non-empty keys, got {self.doc_keys}")
        for k in self.doc_keys:
            if not k or " " in k:
                raise ValueError(f"doc_keys: key {k!r} must be one non-empty word")
            font.check_text(k, f"doc_keys[{k!r}]")
        if self.doc_lines[0] < 1 or self.doc_lines[1] > len(self.doc_keys):
            raise ValueError(
                f"doc_lines: need 1..{len(self.doc_keys)} lines (distinct keys), got {self.doc_lines}"
            )
        if self.doc_value_len[0] < 1:
            raise ValueError(f"doc_value_len: values need at least 1 character, got {self.doc_value_len}")
        rows, cols = self.doc_grid
        widest = max(len(k) for k in self.doc_keys) + 1 + self.doc_value_len[1]
        if widest > cols:
            raise ValueError(
                f"doc_value_len/doc_keys: the longest line needs {widest} cells but a document row has {cols} "
                f"(doc_tiles={self.doc_tiles}, doc_cell={cell})"
            )
        if 2 * self.doc_lines[1] - 1 > rows:
            raise ValueError(
                f"doc_lines: {self.doc_lines[1]} lines with blank rows between need {2 * self.doc_lines[1] - 1} "
                f"text rows but a document has {rows}"
            )
        if self.chart_bars[0] < 2 or self.chart_bars[1] > len(self.colors):
            raise ValueError(
                f"chart_bars: need 2..{len(self.colors)} bars (one colour each), got {self.chart_bars}"
            )
        if self.chart_values[0] < 0:
            raise ValueError(f"chart_values: values must be >= 0, got {self.chart_values}")
        if self.chart_values[1] - self.chart_values[0] + 1 < self.chart_bars[1]:
            raise ValueError("chart_values: the range must hold one distinct value per bar")
        digits = len(str(self.chart_values[1]))
        slot = self.chart_size[1] // self.chart_bars[1]
        if slot < digits * cell or slot < 2 * cell:
            raise ValueError(
                f"chart_bars: {self.chart_bars[1]} bars leave {slot} px per bar but a {digits}-digit label "
                f"needs {max(digits, 2) * cell} px; widen chart_tiles or use fewer bars"
            )
        if self.chart_size[0] < 4 * cell:
            raise ValueError(f"chart_tiles: a chart needs at least {4 * cell} px of height")
        if self.mcq_options > len(self.colors):
            raise ValueError(
                f"mcq_options: {self.mcq_options} options need at least as many colours ({len(self.colors)})"
            )
        for fam, w in self.stage2_mix.items():
            if fam not in STAGE2_FAMILIES:
                raise ValueError(f"stage2_mix: unknown family {fam!r}; known: {', '.join(STAGE2_FAMILIES)}")
            if w < 0:
                raise ValueError(f"stage2_mix[{fam!r}]: weight must be >= 0, got {w}")
        if sum(self.stage2_mix.values()) <= 0:
            raise ValueError("stage2_mix: at least one family needs a positive weight")
        return self

    # ---- derived sizes ------------------------------------------------------------------------
    @property
    def cell(self) -> int:
        """Text cell size in pixels (``doc_cell`` or ``tile // 4``)."""
        return self.doc_cell if self.doc_cell is not None else max(1, self.tile // 4)

    @property
    def scene_size(self) -> tuple[int, int]:
        return self.scene_tiles[0] * self.tile, self.scene_tiles[1] * self.tile

    @property
    def doc_size(self) -> tuple[int, int]:
        return self.doc_tiles[0] * self.tile, self.doc_tiles[1] * self.tile

    @property
    def chart_size(self) -> tuple[int, int]:
        return self.chart_tiles[0] * self.tile, self.chart_tiles[1] * self.tile

    @property
    def doc_grid(self) -> tuple[int, int]:
        """Text cells per document (rows, cols)."""
        h, w = self.doc_size
        return h // self.cell, w // self.cell

    @property
    def doc_base_factor(self) -> float:
        """Linear downscale of a document squashed into one ``tile`` x ``tile`` base view."""
        return float(max(self.doc_tiles))


#: Families that may appear in ``stage2_mix`` (kept here so the config can validate without importing them).
STAGE2_FAMILIES = ("color", "count", "exist", "spatial", "mcq", "docvqa", "chart", "caption")
