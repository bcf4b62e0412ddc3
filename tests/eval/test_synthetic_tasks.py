"""The synthetic world's eval splits run through the real runner and metrics."""

import json

import pytest
from typer.testing import CliRunner

from vistune.cli import _register_areas, app
from vistune.data.synthetic import EVAL_TASKS, WorldConfig, WorldSizes, write_world
from vistune.eval.runner import EvalOptions, evaluate
from vistune.eval.task import get_task

runner = CliRunner()
_register_areas()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("w") / "world"
    sizes = WorldSizes(
        stage1_alt=8,
        stage1_web=8,
        stage15_recap=8,
        stage15_docs=8,
        stage15_charts=8,
        stage2_instruct=8,
        eval=6,
    )
    write_world(root, WorldConfig(sizes=sizes), seed=0)
    return root


def test_every_world_task_is_registered_and_scores_gold_perfectly(world):
    for name in EVAL_TASKS:
        task = get_task(name)
        docs = list(task.load(world))
        assert docs and task.chance is not None
        records = [task.score(d, str(d.target)) for d in docs]
        metrics = task.aggregate(records)
        value = metrics[task.primary_metric]
        assert value >= (0.9 if name == "synth_ocr" else 0.999), (name, metrics)


def test_wrong_answers_score_low(world):
    task = get_task("synth_docvqa")
    docs = list(task.load(world))
    assert task.aggregate([task.score(d, "QQQQQQQQ") for d in docs])["anls"] == 0.0
    cap = get_task("synth_caption")
    docs = list(cap.load(world))
    agg = cap.aggregate([cap.score(d, "There is a pink hexagon.") for d in docs])
    assert agg["caption_f1"] < 0.2


def test_runner_and_table_on_world(tiny, world, tmp_path):
    model, proc = tiny
    res = evaluate(
        model,
        proc,
        ["synth_color", "synth_exist"],
        tmp_path / "r",
        EvalOptions(data_dir=str(world), progress=False, max_new_tokens=3),
    )
    assert set(res["tasks"]) == {"synth_color", "synth_exist"}
    assert res["tasks"]["synth_color"]["n"] == 6
    out = runner.invoke(app, ["eval", "table", str(tmp_path / "r"), "--output", str(tmp_path / "t")])
    assert out.exit_code == 0, out.output
    table = json.loads((tmp_path / "t" / "table.json").read_text())
    assert table


def test_world_cli_make(tmp_path):
    out = runner.invoke(
        app,
        [
            "world",
            "make",
            "--output",
            str(tmp_path / "w"),
            "--set",
            "sizes.eval=3",
            "--set",
            "sizes.stage2_instruct=5",
        ],
    )
    assert out.exit_code == 0, out.output
    assert (tmp_path / "w" / "world.json").is_file()
    assert "synth_ocr" in out.output
