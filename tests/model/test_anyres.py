"""Unit and property tests for the AnyRes geometry (vistune.model.anyres)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vistune.config import ConfigError, VisualConfig, validate
from vistune.model.anyres import (
    EncoderGeometry,
    GeometryError,
    check_visual_config,
    fit_inside,
    lift_resolution,
    parse_budget,
    parse_grids,
    plan_image,
    select_best_resolution,
    unpad_box,
)

SIGLIP = EncoderGeometry(384, 14)
CLIP336 = EncoderGeometry(336, 14)


# ----------------------------------------------------------------------------- grid sets
def test_parse_grids_forms():
    assert parse_grids("(1x1),...,(2x3)") == ((1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3))
    assert parse_grids("max:2x2") == ((1, 1), (1, 2), (2, 1), (2, 2))
    assert parse_grids("2x2, 1x2,1x3") == ((2, 2), (1, 2), (1, 3))
    assert parse_grids([[1, 2], (2, 1), [1, 2]]) == ((1, 2), (2, 1))
    assert parse_grids("llava_next") == ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))
    assert len(parse_grids("(1x1),...,(6x6)")) == 36


@pytest.mark.parametrize("bad", ["", "2y2", "0x3", "(3x3),...,(1x1)", [], [[1]], "max:zz", 7])
def test_parse_grids_rejects(bad):
    with pytest.raises(GeometryError, match="visual.grids"):
        parse_grids(bad)


@given(st.lists(st.tuples(st.integers(1, 8), st.integers(1, 8)), min_size=1, max_size=12))
def test_parse_grids_roundtrip(pairs):
    grids = parse_grids(pairs)
    assert parse_grids(",".join(f"{r}x{c}" for r, c in grids)) == grids
    assert len(set(grids)) == len(grids)


def test_budget_forms():
    assert parse_budget("9 tiles", 729) == 6561
    assert parse_budget("(4+1)*729", 1) == 3645
    assert parse_budget(3645, 729) == 3645
    assert parse_budget(None, 729) is None
    for bad in ["lots", "-5", "1/2", True]:
        with pytest.raises(GeometryError, match="visual.max_tokens"):
            parse_budget(bad, 729)


# ----------------------------------------------------------------------------- pixel geometry
def test_select_best_resolution_rules():
    cands = [(r * 384, c * 384) for r, c in parse_grids("max:6x6")]
    assert select_best_resolution((100, 100), cands) == (384, 384)  # small -> smallest containing grid
    assert select_best_resolution((1080, 1920), cands) == (1152, 1920)
    # tie on effective pixels -> least waste -> first in order
    assert select_best_resolution((384, 768), [(768, 768), (384, 768)]) == (384, 768)
    assert select_best_resolution((500, 500), [(384, 768), (768, 384)]) == (384, 768)


@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 4000), st.integers(1, 4000))
def test_fit_inside_keeps_inside_and_touches(h, w, th, tw):
    rh, rw = fit_inside((h, w), (th, tw))
    assert 1 <= rh <= th and 1 <= rw <= tw
    assert rh == th or rw == tw


def test_unpad_rounding_modes():
    # a case where h * (cur_w / w) is a float artefact just below an integer
    assert unpad_box((54, 54), (100, 100)) == (0, 54, 0, 54)
    top, bottom, left, right = unpad_box((54, 108), (300, 1000))
    assert left == 0 and right == 108 and bottom - top == int(round(300 * 108 / 1000, 7)) + ((54 - 32) % 2)
    cur, img = (27, 27), (1000, 2999)
    assert (
        unpad_box(cur, img, "hf")[1] - unpad_box(cur, img, "hf")[0]
        >= unpad_box(cur, img, "official")[1] - unpad_box(cur, img, "official")[0]
    )


def test_lift_resolution():
    assert lift_resolution((100, 200), 768) == (384, 768)
    assert lift_resolution((1000, 200), 768) == (1000, 200)
    assert lift_resolution((100, 200), None) == (100, 200)


# ----------------------------------------------------------------------------- token counts
def test_onevision_worked_examples():
    v = VisualConfig()
    assert plan_image((2304, 2304), v, SIGLIP).num_tokens == 7371
    assert plan_image((2304, 768), v, SIGLIP).num_tokens == 7309
    assert plan_image((2304, 384), v, SIGLIP).num_tokens == 5265
    assert plan_image((1152, 1152), v, SIGLIP).num_tokens == 7371


def test_llava_next_2x2_bound():
    v = VisualConfig(grids="llava_next", cap="none", max_tokens=None)
    assert plan_image((672, 672), v, CLIP336).num_tokens == 576 + 2304 + 48


def test_per_grid_cap_rule():
    # study: L = (a*b+1)*T > tau -> each view gets T_new = tau/(a*b+1) tokens (floor of the side)
    v = VisualConfig(grids="max:6x6", cap="per_grid", max_tokens="(4+1)*729")
    p = plan_image((2304, 2304), v, SIGLIP)
    assert p.grid == (6, 6)
    side = math.isqrt(3645 // 37)
    assert p.view_side == side == 9
    assert p.tokens.base == side * side
    assert p.tokens.base + p.tokens.grid <= 3645
    # no cap when L <= tau
    p2 = plan_image((384, 768), v, SIGLIP)
    assert p2.view_side == 27 and p2.tokens.base + p2.tokens.grid_before_cap == 3 * 729


def test_total_cap_slack_is_configurable():
    v = VisualConfig(grids="max:6x6", cap="total", max_tokens="4 tiles", cap_slack=1.0)
    p = plan_image((1152, 1152), v, SIGLIP)
    assert p.final_hw == (54, 54)  # ratio 1.5 > 1.0
    v2 = v.override(cap_slack=2.0)
    assert plan_image((1152, 1152), v2, SIGLIP).final_hw == (81, 81)


def test_pool_ratio_quarter_tokens():
    v = VisualConfig(grids="max:2x2", cap="none", max_tokens=None, pool_ratio=0.5)
    p = plan_image((768, 768), v, SIGLIP)
    assert p.view_side == 14 and p.tokens.base == 196 and p.tokens.grid == 28 * 28


def test_single_view_and_no_anyres():
    v = VisualConfig()
    p = plan_image((300, 500), v, SIGLIP, single_view=True)
    assert p.single_view and p.num_tokens == 729 + 1 and p.num_views == 1
    p2 = plan_image((300, 500), v.override(anyres=False, newline=False), SIGLIP)
    assert p2.num_tokens == 729


def test_base_none_and_no_newline():
    v = VisualConfig(base_view="none", newline=False, cap="none", max_tokens=None, grids="max:2x2")
    p = plan_image((768, 768), v, SIGLIP)
    assert p.tokens.base == 0 and p.tokens.newlines == 0 and p.num_views == 4


def test_impossible_configs_name_the_field():
    with pytest.raises(GeometryError, match="visual.max_tokens.*smaller than one base view"):
        check_visual_config(VisualConfig(max_tokens=100), SIGLIP)
    with pytest.raises(ConfigError, match="visual.grids"):
        validate(VisualConfig, {"grids": []}, prefix="visual.")
    with pytest.raises(ConfigError, match="visual.cap"):
        validate(VisualConfig, {"cap": "sometimes"}, prefix="visual.")


CONFIGS = [
    VisualConfig(),
    VisualConfig(grids="llava_next", cap="none", max_tokens=None),
    VisualConfig(grids="max:4x4", cap="per_grid", max_tokens="(4+1)*729"),
    VisualConfig(grids="max:3x3", base_view="pad", pool_ratio=0.5, cap="total", max_tokens="2 tiles"),
    VisualConfig(grids="max:4x4", min_long_edge_tiles=2, unpad_rounding="official", newline=False),
]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6000), st.integers(1, 6000), st.sampled_from(range(len(CONFIGS))))
def test_plan_invariants(h, w, ci):
    v = CONFIGS[ci]
    p = plan_image((h, w), v, SIGLIP)
    rows, cols = p.grid
    assert (rows, cols) in v.grids
    assert p.canvas_hw == (rows * 384, cols * 384)
    assert len(p.crop_boxes) == rows * cols
    uh, uw = p.unpadded_hw
    assert 0 <= uh <= p.stitched_hw[0] and 0 <= uw <= p.stitched_hw[1] and max(uh, uw) >= 1
    assert p.final_hw[0] <= uh and p.final_hw[1] <= uw
    t = p.tokens
    assert t.total == t.base + t.grid + t.newlines
    assert t.newlines == (p.final_hw[0] if v.newline else 0)
    if v.cap == "per_grid":
        assert t.base + t.grid <= parse_budget(v.max_tokens, 729)
