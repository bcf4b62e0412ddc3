"""Bar charts with labelled values (ChartQA-style questions, chart-to-data for Stage-1.5).

Layout rule: ``n`` bars in equal slots from left to right, each a distinct colour (the colour *is* the
category name), heights proportional to the value on a fixed axis ``0..cfg.chart_values[1]``, and the value
printed in the pixel font directly above each bar. Values within one chart are distinct, so "highest" and
"lowest" are unambiguous. The chart data string lists ``colour value`` pairs left to right.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vistune.data.synthetic.base import PROMPT_CHART, QA
from vistune.data.synthetic.config import PALETTE, WorldConfig
from vistune.data.synthetic.font import draw_text, get_font

CHART_DATA_PROMPTS = ("List the value of each bar.", "Read the chart data.")
INK = "black"
QUESTION_KINDS = ("value", "highest", "lowest", "difference", "sum")


@dataclass(frozen=True)
class Bar:
    color: str
    value: int


@dataclass(frozen=True)
class Chart:
    bars: tuple[Bar, ...]  # left to right
    height: int
    width: int
    cell: int
    font: str
    background: str
    max_value: int

    def key(self) -> str:
        return "chart|" + ",".join(f"{b.color}={b.value}" for b in self.bars)

    @property
    def data_text(self) -> str:
        return ", ".join(f"{b.color} {b.value}" for b in self.bars)

    def facts(self) -> dict[str, Any]:
        return {"bars": [{"color": b.color, "value": b.value} for b in self.bars]}

    def geometry(self) -> list[dict[str, int]]:
        """Pixel boxes of each bar and its label: ``top``, ``bottom`` (exclusive), ``left``, ``right``."""
        n = len(self.bars)
        slot = self.width // n
        bar_w = min(self.cell, max(2, slot // 2))
        baseline = self.height - 2  # axis row
        max_h = baseline - self.cell - 1
        out = []
        for i, b in enumerate(self.bars):
            h = round(b.value / self.max_value * max_h) if self.max_value else 0
            if b.value > 0:
                h = max(1, h)
            left = i * slot + (slot - bar_w) // 2
            label = str(b.value)
            label_left = i * slot + (slot - len(label) * self.cell) // 2
            out.append(
                {
                    "top": baseline - h,
                    "bottom": baseline,
                    "left": left,
                    "right": left + bar_w,
                    "label_top": baseline - h - self.cell,
                    "label_left": label_left,
                }
            )
        return out

    def render(self, cfg: WorldConfig | None = None) -> Image.Image:
        pixels = np.empty((self.height, self.width, 3), dtype=np.uint8)
        pixels[:] = PALETTE[self.background]
        font = get_font(self.font)
        pixels[self.height - 2, :] = PALETTE[INK]  # x axis
        for b, g in zip(self.bars, self.geometry(), strict=True):
            pixels[g["top"] : g["bottom"], g["left"] : g["right"]] = PALETTE[b.color]
            draw_text(pixels, str(b.value), g["label_top"], g["label_left"], self.cell, PALETTE[INK], font)
        return Image.fromarray(pixels, mode="RGB")


def sample_chart(rng: random.Random, cfg: WorldConfig) -> Chart:
    n = rng.randint(*cfg.chart_bars)
    colors = rng.sample(list(cfg.colors), n)
    lo, hi = cfg.chart_values
    values = rng.sample(range(lo, hi + 1), n)
    h, w = cfg.chart_size
    bars = tuple(Bar(c, v) for c, v in zip(colors, values, strict=True))
    return Chart(bars, h, w, cfg.cell, cfg.font, cfg.background, hi)


def ask_chart(chart: Chart, rng: random.Random, cfg: WorldConfig, kind: str | None = None) -> QA:
    """One ChartQA-style question: a bar's value, the highest/lowest bar, a difference or a sum."""
    kind = kind or rng.choice(QUESTION_KINDS)
    bars = chart.bars
    lo, hi = cfg.chart_values
    if kind == "value":
        b = rng.choice(bars)
        q, a, space = f"What is the value of the {b.color} bar?", str(b.value), hi - lo + 1
    elif kind == "highest":
        q, a, space = "Which bar is the highest?", max(bars, key=lambda b: b.value).color, len(bars)
    elif kind == "lowest":
        q, a, space = "Which bar is the lowest?", min(bars, key=lambda b: b.value).color, len(bars)
    elif kind == "difference":
        x, y = sorted(rng.sample(bars, 2), key=lambda b: -b.value)
        q, a, space = (
            f"How much higher is the {x.color} bar than the {y.color} bar?",
            str(x.value - y.value),
            hi - lo,
        )
    elif kind == "sum":
        x, y = rng.sample(bars, 2)
        q, a, space = (
            f"What is the sum of the {x.color} and {y.color} bars?",
            str(x.value + y.value),
            2 * (hi - lo) + 1,
        )
    else:
        raise ValueError(f"unknown chart question kind {kind!r}; known: {QUESTION_KINDS}")
    return QA(f"{q}\n{PROMPT_CHART}", a, "number" if a.isdigit() else "word", max(1, space), {"kind": kind})


def build_chart(rng: random.Random, cfg: WorldConfig) -> tuple[Chart, QA]:
    chart = sample_chart(rng, cfg)
    return chart, ask_chart(chart, rng, cfg)


def build_chart_data(rng: random.Random, cfg: WorldConfig) -> tuple[Chart, QA]:
    chart = sample_chart(rng, cfg)
    return chart, QA(rng.choice(CHART_DATA_PROMPTS), chart.data_text, "text", None, {})
