"""The family registry and generator: determinism, split separation, chance levels."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from vistune.data.synthetic.base import content_split
from vistune.data.synthetic.config import WorldConfig
from vistune.data.synthetic.world import EVAL_TASKS, FAMILIES, baselines, generate, get_family, get_task_spec

CFG = WorldConfig()
IMAGE_FAMILIES = [f for f in FAMILIES if f not in ("text",)]


def _signature(s) -> tuple:
    return (
        s.id,
        s.key,
        tuple((t.question, t.answer) for t in s.turns),
        tuple(np.asarray(im).tobytes() for im in s.images),
    )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_generation_is_deterministic_and_prefix_stable(family: str) -> None:
    a = [_signature(s) for s in generate(family, "train", 6, 7, CFG)]
    b = [_signature(s) for s in generate(family, "train", 6, 7, CFG)]
    assert a == b
    tail = [_signature(s) for s in generate(family, "train", 3, 7, CFG, start=3)]
    assert tail == a[3:]
    other_seed = [_signature(s) for s in generate(family, "train", 6, 8, CFG)]
    assert other_seed != a


def test_train_and_eval_never_share_content() -> None:
    scene_train: set[str] = set()
    scene_eval: set[str] = set()
    pixels_train: set[bytes] = set()
    pixels_eval: set[bytes] = set()
    for family in IMAGE_FAMILIES:
        for split, keys, pix in (("train", scene_train, pixels_train), ("eval", scene_eval, pixels_eval)):
            for s in generate(family, split, 40, 0, CFG):
                assert content_split(s.key, CFG.eval_holdout) == split
                keys.add(s.key)
                pix.update(np.asarray(im).tobytes() for im in s.images)
    assert scene_train and scene_eval
    assert not scene_train & scene_eval
    assert not pixels_train & pixels_eval
    # a different world seed still keeps every eval content out of training
    other = {s.key for f in ("color", "docvqa", "chart") for s in generate(f, "train", 40, 99, CFG)}
    assert not other & scene_eval


def test_content_split_fraction() -> None:
    keys = [f"scene|k{i}" for i in range(4000)]
    frac = sum(content_split(k, 0.2) == "eval" for k in keys) / len(keys)
    assert 0.17 < frac < 0.23


def test_eval_samples_are_single_turn_with_image_token_first() -> None:
    for spec in EVAL_TASKS.values():
        for s in generate(spec.family, "eval", 5, 0, CFG):
            conv = s.conversations()
            assert len(s.turns) == 1 and len(s.images) == 1
            assert [c["from"] for c in conv] == ["human", "gpt"]
            assert conv[0]["value"].startswith("<image>\n") and conv[0]["value"].count("<image>") == 1
            assert conv[0]["value"].endswith(spec.prompt_suffix)


def test_instruct_mixes_families_turns_and_text_only() -> None:
    cfg = WorldConfig(text_fraction=0.1, max_turns=3)
    samples = list(generate("instruct", "train", 200, 0, cfg))
    text_only = [s for s in samples if not s.images]
    assert 5 <= len(text_only) <= 40
    assert all(s.key.startswith("text|") for s in text_only)
    turns = Counter(len(s.turns) for s in samples)
    assert set(turns) == {1, 2, 3}
    for s in samples:
        conv = s.conversations()
        assert sum("<image>" in c["value"] for c in conv) == (1 if s.images else 0)
        questions = [t.question for t in s.turns]
        assert len(set(questions)) == len(questions)
    kinds = Counter(s.key.split("|")[0] for s in samples)
    assert set(kinds) == {"scene", "doc", "chart", "text"}


def test_text_answers() -> None:
    for s in generate("text", "train", 40, 0, CFG):
        q = s.turns[0].question.split("\n")[0]
        if " plus " in q:
            a, b = q.removeprefix("What is ").rstrip("?").split(" plus ")
            assert s.target == str(int(a) + int(b))
        elif " minus " in q:
            a, b = q.removeprefix("What is ").rstrip("?").split(" minus ")
            assert s.target == str(int(a) - int(b)) and int(s.target) >= 0
        elif "comes after" in q:
            assert ord(s.target) == ord(q[-2]) + 1
        else:
            assert s.target == str(len(q.rstrip("?").split()[-1]))


def test_chance_levels() -> None:
    n = 200
    color = baselines(get_task_spec("synth_color"), list(generate("color", "eval", n, 0, CFG)))
    assert color["chance"] == pytest.approx(1 / len(CFG.colors))
    spatial = baselines(get_task_spec("synth_spatial"), list(generate("spatial", "eval", n, 0, CFG)))
    assert spatial["chance"] == pytest.approx(0.25) and spatial["majority"] < 0.4
    mcq = baselines(get_task_spec("synth_mcq"), list(generate("mcq", "eval", n, 0, CFG)))
    assert mcq["chance"] == pytest.approx(1 / CFG.mcq_options)
    count = baselines(get_task_spec("synth_count"), list(generate("count", "eval", n, 0, CFG)))
    lo, hi = CFG.count_range
    assert count["chance"] == pytest.approx(1 / (hi - lo + 1))
    exist_samples = list(generate("exist", "eval", n, 0, CFG))
    exist = baselines(get_task_spec("synth_exist"), exist_samples)
    p = sum(s.target == "yes" for s in exist_samples) / n
    assert exist["chance"] == pytest.approx(2 * p * 0.5 / (p + 0.5), abs=1e-6)
    assert exist["majority"] == pytest.approx(2 * p / (p + 1), abs=1e-6)
    assert abs(exist["chance"] - 0.5) < 0.06
    doc = baselines(get_task_spec("synth_docvqa"), list(generate("docvqa", "eval", 50, 0, CFG)))
    assert doc["chance"] == 0.0 and doc["majority"] < 0.1
    assert baselines(get_task_spec("synth_color"), []) == {"chance": 0.0, "majority": 0.0}


def test_registries_and_errors() -> None:
    assert all(name.startswith("synth_") for name in EVAL_TASKS)
    assert {t.family for t in EVAL_TASKS.values()} <= set(FAMILIES)
    with pytest.raises(KeyError, match="unknown synthetic family 'colour'"):
        get_family("colour")
    with pytest.raises(KeyError, match="unknown synthetic task"):
        get_task_spec("pope")
    with pytest.raises(ValueError, match="split must be one of"):
        next(generate("color", "test", 1))
    with pytest.raises(ValueError, match="n and start"):
        next(generate("color", "train", -1))


def test_tiny_content_space_reports_a_clear_error() -> None:
    cfg = WorldConfig(
        colors=("red", "blue"),
        shapes=("circle", "square"),
        objects=(1, 1),
        count_range=(1, 1),
        chart_bars=(2, 2),
        mcq_options=2,
        eval_holdout=0.001,
    )
    with pytest.raises(RuntimeError, match="content space"):
        list(generate("color", "eval", 3, 0, cfg))


def test_generation_speed() -> None:
    import time

    t = time.perf_counter()
    for family in ("instruct", "ocr", "chart", "caption"):
        for _ in generate(family, "train", 100, 0, CFG):
            pass
    assert time.perf_counter() - t < 3.0
