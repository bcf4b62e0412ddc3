"""Documents and charts: the ground truth is what the pixels say, legible at full resolution only."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from vistune.data.synthetic.charts import QUESTION_KINDS, ask_chart, sample_chart
from vistune.data.synthetic.config import PALETTE, WorldConfig
from vistune.data.synthetic.documents import sample_document
from vistune.data.synthetic.font import get_font
from vistune.data.synthetic.world import generate

CFG = WorldConfig()


def _templates(cfg: WorldConfig, charset: str) -> dict[str, np.ndarray]:
    font = get_font(cfg.font)
    return {ch: (~font.text_mask(ch, cfg.cell)).astype(np.float64) for ch in charset}


def _read(gray: np.ndarray, top: int, left: int, n: int, cell: int, templates: dict[str, np.ndarray]) -> str:
    """An oracle reader: nearest template (L1) in each text cell, white = 1.0."""
    out = []
    for k in range(n):
        region = gray[top : top + cell, left + k * cell : left + (k + 1) * cell]
        out.append(min(templates, key=lambda ch: float(np.abs(region - templates[ch]).sum())))
    return "".join(out)


def _doc_reading_accuracy(samples, cfg: WorldConfig, size: int | None) -> float:
    templates = _templates(cfg, cfg.doc_charset + " " + "".join(sorted(set("".join(cfg.doc_keys)))))
    hits = total = 0
    for s in samples:
        im = s.images[0].convert("L")
        if size is not None:  # squash into a size x size view, then back (what a reader of that view sees)
            im = im.resize((size, size), Image.Resampling.BICUBIC).resize(
                s.images[0].size, Image.Resampling.BICUBIC
            )
        gray = np.asarray(im, dtype=np.float64) / 255.0
        for ln in s.facts["lines"]:
            text = f"{ln['key']} {ln['value']}"
            read = _read(gray, ln["row"] * cfg.cell, ln["col"] * cfg.cell, len(text), cfg.cell, templates)
            hits += sum(a == b for a, b in zip(read, text, strict=True) if b != " ")
            total += sum(b != " " for b in text)
    return hits / total


def test_document_text_reads_back_exactly_at_full_resolution() -> None:
    samples = list(generate("ocr", "eval", 20, 0, CFG))
    assert _doc_reading_accuracy(samples, CFG, None) == 1.0
    for s in samples:
        assert s.target == " ".join(f"{ln['key']} {ln['value']}" for ln in s.facts["lines"])


def test_document_text_is_illegible_in_the_base_view_and_partly_in_a_smaller_grid() -> None:
    samples = list(generate("ocr", "eval", 20, 0, CFG))
    base = _doc_reading_accuracy(samples, CFG, CFG.tile)  # the squashed base view
    grid2 = _doc_reading_accuracy(samples, CFG, 2 * CFG.tile)  # a 2x2 AnyRes grid
    assert base < 0.2
    assert base < grid2 < 1.0


def test_document_layout_rules() -> None:
    rng = random.Random(0)
    rows, cols = CFG.doc_grid
    for _ in range(200):
        doc = sample_document(rng, CFG)
        lo, hi = CFG.doc_lines
        assert lo <= len(doc.lines) <= hi
        keys = [ln.key for ln in doc.lines]
        assert len(set(keys)) == len(keys)
        r = [ln.row for ln in doc.lines]
        assert all(b - a >= 2 for a, b in zip(r, r[1:], strict=False)), "lines need a blank row between them"
        for ln in doc.lines:
            assert ln.col >= 0 and ln.col + len(ln.text) <= cols and 0 <= ln.row < rows
            assert set(ln.value) <= set(CFG.doc_charset)
            assert CFG.doc_value_len[0] <= len(ln.value) <= CFG.doc_value_len[1]
        with pytest.raises(KeyError, match="no key"):
            doc.value_of("NOPE")


def test_docvqa_answer_is_the_value_after_the_key() -> None:
    for s in generate("docvqa", "eval", 30, 0, CFG):
        key = s.turns[0].question.split("What is the ")[1].split("?")[0]
        values = {ln["key"]: ln["value"] for ln in s.facts["lines"]}
        assert s.target == values[key] and s.turns[0].meta["answers"] == [s.target]


def test_charts_bars_and_labels_match_values() -> None:
    rng = random.Random(0)
    digits = _templates(CFG, "0123456789")
    for _ in range(30):
        chart = sample_chart(rng, CFG)
        px = np.asarray(chart.render())
        gray = np.asarray(chart.render().convert("L"), dtype=np.float64) / 255.0
        geo = chart.geometry()
        heights = []
        for b, g in zip(chart.bars, geo, strict=True):
            assert (px[g["top"] : g["bottom"], g["left"] : g["right"]] == PALETTE[b.color]).all()
            heights.append(g["bottom"] - g["top"])
            label = _read(gray, g["label_top"], g["label_left"], len(str(b.value)), CFG.cell, digits)
            assert label == str(b.value)
        order_v = sorted(range(len(chart.bars)), key=lambda i: chart.bars[i].value)
        assert [heights[i] for i in order_v] == sorted(heights), "taller bars have larger values"
        values = [b.value for b in chart.bars]
        assert len(set(values)) == len(values)


def test_chart_answers() -> None:
    rng = random.Random(1)
    for _ in range(40):
        chart = sample_chart(rng, CFG)
        vals = {b.color: b.value for b in chart.bars}
        for kind in QUESTION_KINDS:
            qa = ask_chart(chart, rng, CFG, kind)
            q = qa.question.split("\n")[0]
            assert qa.question.endswith("\nAnswer the question with a single word.")
            named = [c for c in vals if f" {c} " in f" {q} "]
            if kind == "value":
                assert qa.answer == str(vals[named[0]])
            elif kind == "highest":
                assert vals[qa.answer] == max(vals.values())
            elif kind == "lowest":
                assert vals[qa.answer] == min(vals.values())
            elif kind == "difference":
                x = q.split("is the ")[1].split(" bar")[0]
                y = q.split("than the ")[1].split(" bar")[0]
                assert int(qa.answer) == vals[x] - vals[y] > 0
            else:
                assert int(qa.answer) == sum(vals[c] for c in named) and len(named) == 2
    with pytest.raises(ValueError, match="unknown chart question kind"):
        ask_chart(chart, rng, CFG, "median")


def test_chart_data_lists_bars_left_to_right() -> None:
    for s in generate("chart_data", "train", 10, 0, CFG):
        assert s.target == ", ".join(f"{b['color']} {b['value']}" for b in s.facts["bars"])
