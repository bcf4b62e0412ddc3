"""Recipes and stages as data: parsing, overrides, env interpolation, inheritance, validation rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.train.conftest import make_recipe, stage_dict
from vistune.config import ConfigError
from vistune.config.train import (
    accumulation_steps,
    apply_recipe_overrides,
    interpolate_env,
    load_recipe,
)

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _base(tmp_path: Path) -> dict:
    return {
        "name": "r",
        "model": "tiny",
        "stages": [
            {
                "name": "align",
                "data": {"path": "${DATA}/a.jsonl"},
                "trainable": ["connector"],
                "lr": {"connector": 1e-3},
                "global_batch_size": 8,
                "chat_template": "plain",
            },
            {
                "name": "sft",
                "data": {"path": "${DATA:-/default}/b.jsonl"},
                "trainable": "connector,llm,vision",
                "lr": {"default": 2e-5, "vision": 2e-6},
                "global_batch_size": 8,
            },
        ],
    }


def test_recipe_parses_with_env_and_defaults(tmp_path):
    f = _write(
        tmp_path / "r.yaml", {**_base(tmp_path), "defaults": {"max_length": 2048, "precision": "fp32"}}
    )
    r = load_recipe(f, env={"DATA": "/data"})
    a, s = r.stages
    assert a.data.path == "/data/a.jsonl" and s.data.path == "/data/b.jsonl"
    assert s.trainable == ("connector", "llm", "vision")
    assert (a.max_length, s.max_length, s.precision) == (2048, 2048, "fp32")
    # per-part LR falls back to lr.default
    assert (s.lr_for("llm"), s.lr_for("connector"), s.lr_for("vision")) == (2e-5, 2e-5, 2e-6)
    # model preset expanded into a full ModelConfig; study defaults
    assert r.model.llm.preset == "tiny-qwen2"
    assert (s.scheduler, s.warmup_ratio, s.weight_decay, s.epochs) == ("cosine", 0.03, 0.0, 1.0)
    # the ${VAR:-default} form falls back when unset
    assert load_recipe(f, env={"DATA": ""}, overrides=["stages.align.data.path=/x.jsonl"]).stages[
        1
    ].data.path == ("/default/b.jsonl")


def test_unset_env_and_required_values_name_the_key(tmp_path):
    f = _write(tmp_path / "r.yaml", _base(tmp_path))
    with pytest.raises(
        ConfigError, match=r"stages\[0\]\.data\.path: environment variable DATA is not set"
    ) as e:
        load_recipe(f, env={})
    assert "--set stages.0.data.path=" in str(e.value)
    data = _base(tmp_path)
    data["stages"][0]["data"]["path"] = "???"
    f2 = _write(tmp_path / "r2.yaml", data)
    with pytest.raises(
        ConfigError, match=r"required value is not set; give it with --set stages\.0\.data\.path"
    ):
        load_recipe(f2, env={"DATA": "/d"})
    assert interpolate_env({"a": "x${V}y"}, env={"V": "1"}) == {"a": "x1y"}


def test_overrides_address_stages_by_name_index_and_star(tmp_path):
    data = _base(tmp_path)
    out = apply_recipe_overrides(
        data, ["stages.sft.lr.llm=1e-5", "stages.0.max_steps=3", "stages.*.micro_batch_size=2", "seed=7"]
    )
    assert out["stages"][1]["lr"]["llm"] == 1e-5 and out["stages"][0]["max_steps"] == 3
    assert [s["micro_batch_size"] for s in out["stages"]] == [2, 2] and out["seed"] == 7
    assert "micro_batch_size" not in data["stages"][0]  # input untouched
    with pytest.raises(ConfigError, match="no stage named 'nope'"):
        apply_recipe_overrides(data, ["stages.nope.lr.llm=1"])
    with pytest.raises(ConfigError, match="stage index 5 out of range"):
        apply_recipe_overrides(data, ["stages.5.lr.llm=1"])


def test_base_inheritance_and_set_list(tmp_path):
    _write(tmp_path / "base.yaml", _base(tmp_path))
    child = {
        "base": "base.yaml",
        "name": "child",
        "set": ["stages.sft.lr.default=1e-5", "stages.sft.lr.vision=1e-6"],
        "visual": {"grids": "max:2x2"},
    }
    r = load_recipe(_write(tmp_path / "child.yaml", child), env={"DATA": "/d"})
    assert r.name == "child" and r.stages[1].lr_for("llm") == 1e-5 and r.stages[1].lr_for("vision") == 1e-6
    assert r.model.visual.grids == ((1, 1), (1, 2), (2, 1), (2, 2))
    loop = {"base": "loop.yaml", "name": "x"}
    with pytest.raises(ConfigError, match="base chain loops"):
        load_recipe(_write(tmp_path / "loop.yaml", loop))


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"trainable": ["llm", "vision"], "lr": {"llm": 1e-5}},
            r"no learning rate for trainable part\(s\) \['vision'\]",
        ),
        ({"trainable": []}, "must train at least one part"),
        ({"trainable": ["llm", "decoder"]}, "trainable"),
        ({"chat_template": "nope"}, "unknown chat template 'nope'"),
        ({"name": "a/b"}, "used in folder names"),
        ({"global_batch_size": 0}, "global_batch_size"),
        ({"warmup_ratio": 1.5}, "warmup_ratio"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_stage_validation_names_the_field(toy_data, change, message):
    with pytest.raises(ConfigError, match=message):
        make_recipe([stage_dict(toy_data, **change)])


def test_duplicate_stage_names_rejected(toy_data):
    with pytest.raises(ConfigError, match=r"stage names must be unique, repeated: \['a'\]"):
        make_recipe([stage_dict(toy_data, name="a"), stage_dict(toy_data, name="a")])


def test_accumulation_math(toy_data):
    st = make_recipe([stage_dict(toy_data, global_batch_size=128, micro_batch_size=4)]).stages[0]
    assert accumulation_steps(st, 1) == 32
    assert accumulation_steps(st, 8) == 4
    assert accumulation_steps(st, 32) == 1
    with pytest.raises(
        ConfigError, match=r"not a multiple of micro_batch_size \(4\) x world size \(3\) = 12"
    ):
        accumulation_steps(st, 3)


def test_shipped_recipes_resolve(tmp_path):
    env = {
        "VISTUNE_DATA": str(tmp_path / "data"),
        "VISTUNE_MODELS": str(tmp_path / "models"),
        "VISTUNE_WORLD": str(tmp_path / "world"),
    }
    files = sorted(f for f in (REPO / "recipes").rglob("*.yaml") if "ablations" not in f.parts)
    assert len(files) >= 9
    seen = {}
    for f in files:
        r = load_recipe(f, env=env)
        seen[f.relative_to(REPO / "recipes").as_posix()] = r
        for st in r.stages:
            if "study" in f.parts:  # study recipes read local data folders only
                assert st.data.path.startswith(env["VISTUNE_DATA"])
            for ws in (1, 8):
                if st.global_batch_size % (st.micro_batch_size * ws) == 0:
                    accumulation_steps(st, ws)
    tiny = seen["tiny.yaml"]
    assert [s.name for s in tiny.stages] == ["align", "sft"] and tiny.stages[0].save_weights == "trainable"
    vic = seen["study/clip336-vicuna7b.yaml"]
    sft = vic.stages[-1]
    assert (sft.lr_for("llm"), sft.lr_for("vision"), sft.global_batch_size) == (2e-5, 2e-6, 128)
    assert vic.model.vision.path == f"{env['VISTUNE_MODELS']}/clip-vit-large-patch14-336"
    assert vic.model.visual.grids == ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))
    qwen = seen["study/siglip-qwen15-0.5b.yaml"]
    assert qwen.stages[-1].global_batch_size == 64
    grid = sorted(
        (r.stages[-1].lr_for("llm"), r.stages[-1].lr_for("vision"))
        for k, r in seen.items()
        if k.startswith("study/lr-grid/")
    )
    assert grid == sorted(
        [(2e-5, 2e-6), (2e-5, 1e-6), (1e-5, 2e-6), (1e-5, 1e-6), (5e-6, 1e-6), (5e-6, 5e-7)]
    )
    s15 = seen["study/clip336-vicuna7b-stage1.5.yaml"]
    assert [s.name for s in s15.stages] == ["align", "knowledge", "sft"]
    assert set(s15.stages[1].trainable) == {"vision", "connector", "llm", "newline"}


def test_disabled_stage_is_left_out(tmp_path):
    from vistune.config.train import load_recipe

    data = tmp_path / "d.jsonl"
    data.write_text("")
    f = tmp_path / "r.yaml"
    f.write_text(
        "model: tiny\nstages:\n"
        f"  - {{name: a, data: {{path: {data}}}, trainable: [connector], lr: {{default: 1.0e-3}}, global_batch_size: 1}}\n"
        f"  - {{name: b, data: {{path: {data}}}, trainable: [llm], lr: {{default: 1.0e-3}}, global_batch_size: 1}}\n"
    )
    assert [s.name for s in load_recipe(f).stages] == ["a", "b"]
    assert [s.name for s in load_recipe(f, ["stages.a.enabled=false"]).stages] == ["b"]
