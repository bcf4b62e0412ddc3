"""Scenes: rendering matches the spec, and every answer is consistent with the scene."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vistune.data.synthetic.config import PALETTE, SHAPES, WorldConfig
from vistune.data.synthetic.scenes import (
    POSITIONS,
    RELATIONS,
    Scene,
    ask_mcq,
    make_scene,
    relation,
    sample_scene,
    shape_mask,
)
from vistune.data.synthetic.world import generate

CFG = WorldConfig()


def _objects(sample) -> list[dict]:
    return sample.facts["objects"]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_rendered_pixels_match_the_scene_spec(seed: int) -> None:
    rng = random.Random(seed)
    scene = sample_scene(rng, CFG)
    px = np.asarray(scene.render())
    assert px.shape == (*CFG.scene_size, 3)
    covered = np.zeros(px.shape[:2], dtype=bool)
    for o in scene.objects:
        mask, (y0, x0) = shape_mask(o.shape, o.size, o.cy, o.cx, scene.height, scene.width)
        assert mask.sum() > 0.25 * o.size**2, "object too small to see"
        region = px[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
        assert (region[mask] == PALETTE[o.color]).all()
        full = np.zeros_like(covered)
        full[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask
        assert not (covered & full).any(), "objects overlap"
        covered |= full
        # the object stays inside its layout cell (pixel centres)
        ys, xs = np.nonzero(full)
        ch, cw = scene.height / 3, scene.width / 3
        assert o.row * ch <= ys.min() + 0.5 and ys.max() + 0.5 <= (o.row + 1) * ch
        assert o.col * cw <= xs.min() + 0.5 and xs.max() + 0.5 <= (o.col + 1) * cw
    assert (px[~covered] == PALETTE[CFG.background]).all()
    cells = [(o.row, o.col) for o in scene.objects]
    assert len(set(cells)) == len(cells)
    assert cells == sorted(cells), "objects are stored in reading order"


def test_all_shapes_are_distinct_masks() -> None:
    masks = {s: shape_mask(s, 16.0, 10.0, 10.0, 20, 20)[0] for s in SHAPES}
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                assert (masks[a] != masks[b]).sum() >= 8, (a, b)
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("blob", 10, 5, 5, 10, 10)


def test_color_answers_name_the_unique_object_of_that_shape() -> None:
    for s in generate("color", "eval", 40, 1, CFG):
        shape = s.turns[0].question.split("What color is the ")[1].split("?")[0]
        objs = [o for o in _objects(s) if o["shape"] == shape]
        assert len(objs) == 1 and objs[0]["color"] == s.target


def test_count_answers_recount_from_the_scene() -> None:
    answers = Counter()
    for s in generate("count", "train", 80, 2, CFG):
        shape = s.turns[0].meta["shape"]
        assert s.target == str(sum(o["shape"] == shape for o in _objects(s)))
        answers[s.target] += 1
    lo, hi = CFG.count_range
    assert set(answers) == {str(k) for k in range(lo, hi + 1)}


def test_exist_answers_and_balance() -> None:
    samples = list(generate("exist", "eval", 120, 3, CFG))
    yes = 0
    for s in samples:
        color, shape = s.turns[0].meta["object"]
        present = any(o["color"] == color and o["shape"] == shape for o in _objects(s))
        assert s.target == ("yes" if present else "no")
        assert (
            f"Is there a{'n' if color[0] in 'aeiou' else ''} {color} {shape} in the image?"
            in s.turns[0].question
        )
        if not present and s.turns[0].meta["category"] == "adversarial":
            assert any(o["color"] == color or o["shape"] == shape for o in _objects(s))
        yes += present
    assert 0.35 < yes / len(samples) < 0.65


def test_spatial_answers_agree_with_pixel_positions() -> None:
    seen = Counter()
    for s in generate("spatial", "train", 120, 4, CFG):
        a, b = s.turns[0].meta["subject"], s.turns[0].meta["reference"]
        (ay, ax), (by, bx) = a["center"], b["center"]
        rel = s.target
        seen[rel] += 1
        if rel == "left":
            assert ax < bx
        elif rel == "right":
            assert ax > bx
        elif rel == "above":
            assert ay < by
        else:
            assert rel == "below" and ay > by
        for o in (a, b):  # both referents are unambiguous in the scene
            assert sum(p["color"] == o["color"] and p["shape"] == o["shape"] for p in _objects(s)) == 1
    assert set(seen) == set(RELATIONS)
    assert min(seen.values()) >= 15


def test_relation_only_for_axis_aligned_pairs() -> None:
    rng = random.Random(0)
    scene = make_scene(
        rng, CFG, [("red", "circle"), ("blue", "square"), ("green", "cross")], [(0, 0), (0, 2), (2, 1)]
    )
    a, b, c = scene.objects
    assert relation(a, b) == "left" and relation(b, a) == "right"
    assert relation(a, c) is None
    assert POSITIONS[a.row][a.col] == "top left" and c.position == "bottom"


def test_mcq_letter_points_at_the_true_option() -> None:
    letters = Counter()
    for s in generate("mcq", "eval", 80, 5, CFG):
        qa = s.turns[0]
        opts = qa.meta["options"]
        assert len(opts) == CFG.mcq_options and len(set(opts)) == len(opts)
        idx = ord(s.target) - ord("A")
        letters[s.target] += 1
        truth = opts[idx]
        objs = _objects(s)
        kind = qa.meta["kind"]
        q = qa.question.split("\n")[0]
        if kind == "count":
            assert truth == str(len(objs))
        elif kind == "color":
            shape = q.split("the ")[1].rstrip("?")
            assert [o["color"] for o in objs if o["shape"] == shape] == [truth]
        elif kind == "shape":
            color = q.split("the ")[1].split(" object")[0]
            assert [o["shape"] for o in objs if o["color"] == color] == [truth]
        else:
            name = q.split("the ")[1].rstrip("?")
            assert [o["position"] for o in objs if f"{o['color']} {o['shape']}" == name] == [truth]
        for i, opt in enumerate(opts):
            assert f"\n{chr(65 + i)}. {opt}\n" in qa.question
        assert qa.question.endswith("\nAnswer with the option's letter from the given choices directly.")
    assert len(letters) == CFG.mcq_options


def test_mcq_returns_none_when_the_question_cannot_be_asked() -> None:
    rng = random.Random(0)
    scene = make_scene(rng, CFG, [("red", "circle"), ("red", "circle")])
    assert ask_mcq(scene, rng, CFG, kind="color") is None
    assert ask_mcq(scene, rng, CFG, kind="position") is None
    assert isinstance(scene, Scene) and scene.count(shape="circle") == 2
