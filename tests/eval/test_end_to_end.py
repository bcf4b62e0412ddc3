"""End to end: `vistune eval` on a tiny model over fixture datasets in the published schemas -> a table."""

import json

from typer.testing import CliRunner

from tests.eval.test_tasks import make_ai2d, make_mme, with_images, write_jsonl
from vistune.cli import _register_areas, app

runner = CliRunner()
_register_areas()


def _make_pope(data_dir):
    root = data_dir / "POPE"
    rows = [
        {"question_id": i, "question": f"Is there a {w} in the image?", "answer": a, "category": "random"}
        for i, (w, a) in enumerate([("dog", "yes"), ("cat", "no"), ("car", "yes"), ("cup", "no")])
    ]
    write_jsonl(root / "data" / "test-00000-of-00001.jsonl", with_images(root / "data", rows))


def _make_chartqa(data_dir):
    root = data_dir / "ChartQA"
    rows = [
        {"question": "What is the highest value?", "answer": "42", "type": "human_test"},
        {"question": "How many bars?", "answer": "3", "type": "augmented_test"},
    ]
    write_jsonl(root / "test.jsonl", with_images(root, rows))


def test_eval_cli_fixture_datasets_to_table(tmp_path):
    data = tmp_path / "data"
    make_ai2d(data)
    make_mme(data)
    _make_pope(data)
    _make_chartqa(data)
    out = tmp_path / "run"
    args = [
        "eval",
        "--model",
        "tiny",
        "--tasks",
        "ai2d,mme,pope,chartqa",
        "--output",
        str(out),
        "--data-dir",
        str(data),
        "--batch-size",
        "3",
        "--max-new-tokens",
        "4",
        "--set",
        "visual.grids=max:2x2",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"ai2d", "mme", "pope", "chartqa"}
    assert results["visual"]["grids"] == "1x1,1x2,2x1,2x2"  # the inference-time override is recorded
    assert results["tasks"]["mme"]["n"] == 6
    for name in ("ai2d", "mme", "pope", "chartqa"):
        lines = (out / "samples" / f"{name}.jsonl").read_text().splitlines()
        assert lines and all("prediction" in json.loads(x) for x in lines)
    # re-score one task from its samples file, without model or data
    res = runner.invoke(app, ["eval", "score", str(out / "samples" / "ai2d.jsonl")])
    assert res.exit_code == 0, res.output
    # combine two runs into one study-style table
    res = runner.invoke(
        app, ["eval", "table", str(out), str(out), "--output", str(tmp_path / "t"), "--labels", "a,b"]
    )
    assert res.exit_code == 0, res.output
    md = (tmp_path / "t" / "table.md").read_text()
    assert "Avg." in md and "AI2D" in md and "MME" in md
    assert (tmp_path / "t" / "table.csv").read_text().count("\n") >= 3
