"""Documents: short key/value lines printed small on a large canvas (DocVQA- and SynDOG-style tasks).

Layout rule: the canvas is a grid of ``cfg.cell``-pixel text cells (12x12 cells for the default 96 px,
3x3-tile document). A document holds ``cfg.doc_lines`` lines ``KEY VALUE`` with distinct keys, on distinct
cell rows with at least one blank row between lines, each starting at a random cell column and fitting the
row. Because cells divide the encoder tile, no glyph is ever cut by an AnyRes crop boundary.

Reading order (the SynDOG transcription target) is top to bottom; lines are joined with single spaces.
The DocVQA-style question asks for the value printed after a key: ``What is the CODE?`` -> ``X7Q2``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vistune.data.synthetic.base import PROMPT_SHORT, PROMPT_SYNDOG, QA
from vistune.data.synthetic.config import PALETTE, WorldConfig
from vistune.data.synthetic.font import draw_text, get_font

#: Transcription instructions of Stage-1.5 (the SynDOG prompt is the eval prompt of ``synth_ocr``).
TRANSCRIBE_PROMPTS = (PROMPT_SYNDOG, "Read the text in the image.", "What is written in the image?")

INK = "black"


@dataclass(frozen=True)
class DocLine:
    key: str
    value: str
    row: int  # cell row
    col: int  # cell column of the first character

    @property
    def text(self) -> str:
        return f"{self.key} {self.value}"


@dataclass(frozen=True)
class Document:
    lines: tuple[DocLine, ...]  # in reading order
    height: int
    width: int
    cell: int
    font: str
    background: str

    def key(self) -> str:
        return "doc|" + "|".join(line.text for line in self.lines)

    @property
    def transcription(self) -> str:
        return " ".join(line.text for line in self.lines)

    def value_of(self, key: str) -> str:
        for line in self.lines:
            if line.key == key:
                return line.value
        raise KeyError(f"document has no key {key!r}")

    def facts(self) -> dict[str, Any]:
        return {
            "lines": [{"key": ln.key, "value": ln.value, "row": ln.row, "col": ln.col} for ln in self.lines],
            "text": self.transcription,
            "cell": self.cell,
        }

    def render(self, cfg: WorldConfig | None = None) -> Image.Image:
        pixels = np.empty((self.height, self.width, 3), dtype=np.uint8)
        pixels[:] = PALETTE[self.background]
        font = get_font(self.font)
        for line in self.lines:
            draw_text(
                pixels, line.text, line.row * self.cell, line.col * self.cell, self.cell, PALETTE[INK], font
            )
        return Image.fromarray(pixels, mode="RGB")


def _spaced_rows(rng: random.Random, n: int, rows: int) -> list[int]:
    """``n`` sorted rows in ``range(rows)`` with at least one free row between consecutive ones."""
    base = sorted(rng.sample(range(rows - (n - 1)), n))
    return [r + i for i, r in enumerate(base)]


def sample_document(rng: random.Random, cfg: WorldConfig) -> Document:
    n = rng.randint(*cfg.doc_lines)
    keys = rng.sample(list(cfg.doc_keys), n)
    rows, cols = cfg.doc_grid
    lines = []
    for key, row in zip(keys, _spaced_rows(rng, n, rows), strict=True):
        value = "".join(rng.choice(cfg.doc_charset) for _ in range(rng.randint(*cfg.doc_value_len)))
        width = len(key) + 1 + len(value)
        lines.append(DocLine(key, value, row, rng.randint(0, cols - width)))
    h, w = cfg.doc_size
    return Document(tuple(lines), h, w, cfg.cell, cfg.font, cfg.background)


def ask_docvqa(
    doc: Document, rng: random.Random, cfg: WorldConfig, exclude: set[str] | None = None
) -> QA | None:
    """``What is the {KEY}?`` -> the value printed after that key (ANLS target list ``[value]``)."""
    lines = [ln for ln in doc.lines if not exclude or ln.key not in exclude]
    if not lines:
        return None
    line = rng.choice(lines)
    q = f"What is the {line.key}?\n{PROMPT_SHORT}"
    return QA(q, line.value, "text", None, {"answers": [line.value], "key": line.key})


def build_docvqa(rng: random.Random, cfg: WorldConfig) -> tuple[Document, QA] | None:
    doc = sample_document(rng, cfg)
    qa = ask_docvqa(doc, rng, cfg)
    return (doc, qa) if qa else None


def build_ocr(rng: random.Random, cfg: WorldConfig) -> tuple[Document, QA]:
    """SynDOG-style transcription with the exact lmms-eval prompt (the eval form)."""
    doc = sample_document(rng, cfg)
    return doc, QA(PROMPT_SYNDOG, doc.transcription, "text", None, {"text_sequence": doc.transcription})


def build_transcribe(rng: random.Random, cfg: WorldConfig) -> tuple[Document, QA]:
    """Stage-1.5 document data: transcription under varied instructions (the SynDOG one included)."""
    doc = sample_document(rng, cfg)
    prompt = rng.choice(TRANSCRIBE_PROMPTS)
    return doc, QA(prompt, doc.transcription, "text", None, {"text_sequence": doc.transcription})
