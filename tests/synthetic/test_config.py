"""WorldConfig validation: every bad field gets an error that names it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vistune.data.synthetic.config import WorldConfig


def test_defaults_and_derived_sizes() -> None:
    cfg = WorldConfig()
    assert cfg.scene_size == (64, 64)
    assert cfg.doc_size == (96, 96)
    assert cfg.cell == 8 and cfg.tile % cfg.cell == 0
    assert cfg.doc_grid == (12, 12)
    assert WorldConfig(tile=64).cell == 16


def test_pairs_accept_strings_and_lists() -> None:
    cfg = WorldConfig(doc_tiles="2x3", scene_tiles=[3, 3], doc_lines=(1, 2))
    assert cfg.doc_tiles == (2, 3) and cfg.scene_tiles == (3, 3)


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"colors": ("red", "mauve")}, "colors"),
        ({"colors": ("red", "white")}, "background"),
        ({"shapes": ("circle", "blob")}, "shapes"),
        ({"objects": (3, 2)}, "objects"),
        ({"objects": (1, 12)}, "objects"),
        ({"count_range": (1, 6), "objects": (1, 5)}, "count_range"),
        ({"doc_cell": 12}, "doc_cell"),
        ({"doc_cell": 4, "tile": 32}, "doc_cell"),
        ({"doc_charset": "AB c"}, "doc_charset"),
        ({"doc_keys": ("CODE", "NAME", "CODE")}, "doc_keys"),
        ({"doc_tiles": (1, 1)}, "doc_value_len/doc_keys"),
        ({"doc_lines": (2, 9)}, "doc_lines"),
        ({"chart_bars": (2, 8)}, "chart_bars"),
        ({"chart_values": (1, 2), "chart_bars": (3, 3)}, "chart_values"),
        ({"stage2_mix": {"colour": 1.0}}, "stage2_mix"),
        ({"scene_tiles": "two by two"}, "scene_tiles"),
        ({"font": "7x9"}, "font"),
        ({"mcq_options": 5, "colors": ("red", "green", "blue", "black")}, "mcq_options"),
    ],
)
def test_bad_config_names_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        WorldConfig(**changes)
    assert field in str(info.value)


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(ValidationError, match="tiles"):
        WorldConfig(tiles=3)
