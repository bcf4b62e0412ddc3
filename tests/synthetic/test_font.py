"""The pixel font and the legibility measurement."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vistune.data.synthetic.config import WorldConfig
from vistune.data.synthetic.font import ALNUM, FONTS, draw_text, get_font, legibility


@pytest.mark.parametrize("name,min_diff", [("5x7", 2), ("3x5", 1)])
def test_every_alnum_glyph_is_distinct(name: str, min_diff: int) -> None:
    font = FONTS[name]
    assert set(ALNUM) <= set(font.glyphs)
    for a, b in itertools.combinations(ALNUM, 2):
        diff = int((font.glyphs[a] != font.glyphs[b]).sum())
        assert diff >= min_diff, f"{name}: glyphs {a!r} and {b!r} differ in only {diff} pixels"


def test_glyphs_have_ink_except_space() -> None:
    for font in FONTS.values():
        for ch, g in font.glyphs.items():
            assert g.shape == (font.height, font.width)
            assert g.any() == (ch != " "), ch


def test_scale_for_cell_and_too_small_cell() -> None:
    f = get_font("5x7")
    assert f.scale_for_cell(8) == 1
    assert f.scale_for_cell(16) == 2
    with pytest.raises(ValueError, match="too small"):
        f.scale_for_cell(7)


@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet=ALNUM + " ", min_size=1, max_size=12), cell=st.sampled_from([8, 12, 16]))
def test_text_mask_places_each_glyph_in_its_cell(text: str, cell: int) -> None:
    font = get_font("5x7")
    mask = font.text_mask(text, cell)
    assert mask.shape == (cell, len(text) * cell)
    s = font.scale_for_cell(cell)
    for i, ch in enumerate(text):
        cell_mask = mask[:, i * cell : (i + 1) * cell]
        assert int(cell_mask.sum()) == int(font.glyphs[ch].sum()) * s * s
        # one background pixel at least on each side: glyphs never touch their neighbours
        assert not cell_mask[:, 0].any() or not cell_mask[:, -1].any()


def test_unknown_character_is_named() -> None:
    with pytest.raises(ValueError, match=r"character 'a' at position 1 of 'Xa'"):
        get_font("5x7").text_mask("Xa", 8)
    with pytest.raises(KeyError, match="unknown pixel font"):
        get_font("9x9")


def test_draw_text_refuses_to_clip() -> None:
    px = np.zeros((16, 16, 3), dtype=np.uint8)
    draw_text(px, "AB", 8, 0, 8, (255, 0, 0), get_font("5x7"))
    assert (px[..., 0] == 255).sum() == FONTS["5x7"].glyphs["A"].sum() + FONTS["5x7"].glyphs["B"].sum()
    with pytest.raises(ValueError, match="needs 8x24 px but the canvas is 16x16"):
        draw_text(px, "ABC", 0, 0, 8, (255, 0, 0), get_font("5x7"))


@pytest.mark.parametrize("name", ["5x7", "3x5"])
def test_no_glyph_pair_is_confusable_at_full_resolution(name: str) -> None:
    assert legibility(name, 8, 1.0).confusable_pairs == 0


def test_default_documents_are_legible_in_crops_but_collapse_in_the_base_view() -> None:
    cfg = WorldConfig()
    crop = legibility(cfg.font, cfg.cell, 1.0, cfg.doc_charset)
    half = legibility(cfg.font, cfg.cell, 1.5, cfg.doc_charset)  # a 3x3-tile doc resized into a 2x2 grid
    base = legibility(cfg.font, cfg.cell, cfg.doc_base_factor, cfg.doc_charset)
    assert cfg.doc_base_factor == 3.0
    assert crop.legible and crop.min_distance > 1.0
    assert half.confusable_fraction < 0.05
    assert base.confusable_fraction > 0.9
    assert crop.confusable_fraction < half.confusable_fraction < base.confusable_fraction


def test_legibility_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="factor"):
        legibility("5x7", 8, 0.0)
    with pytest.raises(ValueError, match="resample"):
        legibility("5x7", 8, 2.0, resample="lanczos9")
    with pytest.raises(ValueError, match="tolerance"):
        legibility("5x7", 8, 2.0, tolerance=0.0)
