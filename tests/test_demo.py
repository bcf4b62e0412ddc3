"""`vistune demo`: the recipe file equals the built-in one, and a shortened demo runs end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from vistune.config import load_yaml
from vistune.data.synthetic.backbones import BackboneNotFound, backbone_path
from vistune.demo import DEMO_RECIPE, demo_recipe, markdown_table, run_demo, target_score

ROOT = Path(__file__).resolve().parent.parent


def test_recipe_file_equals_the_builtin_recipe():
    assert load_yaml(ROOT / "recipes" / "demo.yaml") == DEMO_RECIPE


def test_target_rule():
    assert target_score(0.5) == pytest.approx(0.75)
    assert target_score(0.0) == pytest.approx(0.5)
    assert target_score(0.25) == pytest.approx(0.625)
    assert target_score(0.9) == pytest.approx(0.9)  # capped
    assert target_score(0.75) == pytest.approx(0.9)  # 0.95 -> 0.9


def _have_backbones() -> bool:
    try:
        backbone_path("world-vit-32")
        backbone_path("world-lm-s")
    except BackboneNotFound:
        return False
    return True


needs_backbones = pytest.mark.skipif(not _have_backbones(), reason="world backbones not installed")


@needs_backbones
def test_demo_recipe_validates(tmp_path):
    recipe = demo_recipe(tmp_path, quick=True)
    assert [s.name for s in recipe.stages] == ["stage1", "stage15", "stage2"]
    assert recipe.stages[0].trainable == ("connector", "newline")
    assert set(recipe.stages[2].trainable) == {"connector", "newline", "llm", "vision"}
    assert all(s.max_steps == 3 for s in recipe.stages)
    assert recipe.stages[0].data.path == str(tmp_path.resolve() / "stage1.yaml")


@needs_backbones
def test_quick_demo_end_to_end(tmp_path):
    t = time.perf_counter()
    out = tmp_path / "demo"
    payload = run_demo(out, quick=True, progress=False)
    assert time.perf_counter() - t < 60
    saved = json.loads((out / "results.json").read_text())
    assert saved["tasks"].keys() == payload["tasks"].keys()
    assert len(saved["tasks"]) == 9
    for name, task in saved["tasks"].items():
        assert name.startswith("synth_")
        assert 0.0 <= task["score"] <= 1.0 and 0.0 <= task["chance"] < 1.0
        assert task["target"] == pytest.approx(target_score(task["chance"]), abs=1e-4)
        assert task["passed"] == (task["score"] >= task["target"])
    assert set(saved["stages"]) == {"stage1", "stage15", "stage2"}
    assert all(s["steps"] == 3 for s in saved["stages"].values())
    assert Path(saved["loss_plot"]).is_file()
    assert (out / "table.md").read_text() == markdown_table(saved["tasks"])
    assert (out / "world" / "world.json").is_file()
    assert (out / "run" / "stages" / "stage2" / "model").is_dir()
    # refusing to clobber, replacing only on request; a rerun gives the same numbers
    with pytest.raises(Exception, match="not empty"):
        run_demo(out, quick=True, progress=False)
    again = run_demo(out, quick=True, progress=False, overwrite=True)
    assert again["tasks"] == saved["tasks"]
    assert {n: s["final_loss"] for n, s in again["stages"].items()} == {
        n: s["final_loss"] for n, s in saved["stages"].items()
    }
    with pytest.raises(Exception, match="does not hold a vistune demo"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "file.txt").write_text("x")
        run_demo(tmp_path / "other", quick=True, progress=False, overwrite=True)


@needs_backbones
def test_quick_demo_without_output_keeps_only_small_results():
    payload = run_demo(None, quick=True, progress=False)
    plot = Path(payload["loss_plot"])
    folder = plot.parent
    try:
        assert plot.is_file() and (folder / "results.json").is_file() and (folder / "table.md").is_file()
        assert not (folder / "world").exists() and not (folder / "run").exists()
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


@needs_backbones
def test_demo_command_passes_the_model_option(tmp_path):
    from typer.testing import CliRunner

    from vistune.cli import _register_areas, app

    _register_areas()

    out = tmp_path / "m"
    res = CliRunner().invoke(
        app, ["demo", "--quick", "--model", "world-m", "--output", str(out), "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "results.json").read_text())
    assert saved["model"] == "world-m"
    assert saved["recipe"]["model"]["llm"]["path"].endswith("world-lm-m")
    bad = CliRunner().invoke(app, ["demo", "--quick", "--model", "world-xl", "--output", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "world-xl" in bad.output
