"""Results files and study-style tables (vistune.eval.report)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from vistune.eval.report import (
    ResultsFormatError,
    RunResults,
    TaskResult,
    build_table,
    load_results,
    summarize_task,
    write_report,
)
from vistune.eval.task import get_task


def runner_task(name: str, metric: str, value: float, **extra: Any) -> dict[str, Any]:
    """A task entry shaped like the one ``vistune.eval.runner`` writes (no display/avg_value)."""
    task = get_task(name)
    return {
        "task": name,
        "split": task.split,
        "metrics": {metric: value, "n": 10},
        "primary_metric": metric,
        "primary": value,
        "avg_scale": task.avg_scale,
        "n": 10,
        **extra,
    }


def fixed(value: float) -> dict[str, Any]:
    """An entry with stored table/Avg. values (as a judged task would write), independent of the registry."""
    return {"metrics": {"score": value}, "primary": value, "display": value, "avg_value": value}


def study_row(model: str = "qwen1.5-0.5b", created: str = "2024-05-20T10:00:00") -> dict[str, Any]:
    """The study's 0.5B / batch 128 row: Avg. 52.8 over nine columns (MME as (P + C) / 2800)."""
    return {
        "model": model,
        "created": created,
        "tasks": {
            "ai2d": runner_task("ai2d", "exact_match", 0.494),
            "chartqa": runner_task("chartqa", "relaxed_overall", 0.548),
            "docvqa_val": runner_task("docvqa_val", "anls", 0.634),
            "mathvista_testmini": runner_task("mathvista_testmini", "gpt_eval_score", 28.1),
            "mme": runner_task("mme", "mme_total_score", 0.570 * 2800),
            "mmmu_val": runner_task("mmmu_val", "mmmu_acc", 0.294),
            "llava_in_the_wild": fixed(61.7),
            "scienceqa_img": runner_task("scienceqa_img", "exact_match", 0.600),
            "dc100_en": fixed(71.6),
        },
    }


def test_avg_matches_the_study(tmp_path: Path) -> None:
    run = RunResults.from_dict(study_row(), "row")
    table = build_table([run], labels=["0.5B"])
    assert [c.name for c in table.columns] == [
        "AI2D", "ChartQA", "DocVQA", "MathVista", "MME", "MMMU", "LLaVA-W", "ScienceQA", "Image-DC",
    ]  # fmt: skip
    assert [c.split for c in table.columns][:6] == ["test", "test", "val", "testmini", "-", "val"]
    row = table.rows[0]
    assert row.values["mme"] == pytest.approx(57.0)
    assert row.values["ai2d"] == pytest.approx(49.4)
    assert round(row.avg, 1) == 52.8
    md = table.to_markdown()
    lines = md.splitlines()
    assert (
        lines[0]
        == "| Run | Avg. | AI2D | ChartQA | DocVQA | MathVista | MME | MMMU | LLaVA-W | ScienceQA | Image-DC |"
    )
    assert lines[2] == "|  | - | test | test | val | testmini | - | val | - | IMG | EN-100 |"
    assert lines[3] == "| 0.5B | 52.8 | 49.4 | 54.8 | 63.4 | 28.1 | 57.0 | 29.4 | 61.7 | 60.0 | 71.6 |"
    assert any("2800" in note for note in table.notes)


def test_csv_and_json_outputs(tmp_path: Path) -> None:
    table = build_table([RunResults.from_dict(study_row(), "row")], tasks=["ai2d", "mme"], labels=["r"])
    rows = list(csv.reader(io.StringIO(table.to_csv())))
    assert rows[0] == ["run", "model", "Avg.", "AI2D (test)", "MME"]
    assert (
        rows[1][0] == "r"
        and float(rows[1][3]) == pytest.approx(49.4)
        and float(rows[1][4]) == pytest.approx(57.0)
    )
    assert float(rows[1][2]) == pytest.approx((49.4 + 57.0) / 2)
    data = table.to_json()
    assert data["columns"][1] == {"task": "mme", "name": "MME", "split": "-"}
    assert data["rows"][0]["values"]["ai2d"] == pytest.approx(49.4)
    paths = table.write(tmp_path / "out", stem="t")
    assert sorted(p.name for p in paths.values()) == ["t.csv", "t.json", "t.md"]
    assert json.loads(paths["json"].read_text())["avg_tasks"] == ["ai2d", "mme"]


def test_missing_task_leaves_avg_empty_and_explains() -> None:
    full = RunResults.from_dict(study_row(), "a")
    partial = RunResults.from_dict(study_row(), "b")
    del partial.tasks["mme"]
    table = build_table([full, partial], labels=["full", "partial"])
    assert table.rows[1].avg is None and table.rows[1].values["mme"] is None
    assert "| partial |  |" in table.to_markdown()
    assert any("partial: Avg. left empty, no value for mme" in n for n in table.notes)
    subset = build_table([full, partial], labels=["full", "partial"], avg_tasks=["ai2d", "chartqa"])
    assert subset.rows[1].avg == pytest.approx((49.4 + 54.8) / 2)
    with pytest.raises(ValueError, match="not table columns"):
        build_table([full], tasks=["ai2d"], avg_tasks=["mme"])


def test_synthdog_uses_sum_for_display_and_mean_for_avg() -> None:
    entry = runner_task("synthdog_en", "tree_edit_distance", 425.7)
    entry["metrics"]["tree_edit_distance_mean"] = 425.7 / 500
    run = RunResults.from_dict(
        {"model": "m", "tasks": {"synthdog_en": entry, "pope": runner_task("pope", "pope_f1_score", 0.854)}}
    )
    table = build_table([run])
    row = table.rows[0]
    assert row.values["synthdog_en"] == pytest.approx(425.7)
    assert row.avg_values["synthdog_en"] == pytest.approx(85.14)
    assert row.values["pope"] == pytest.approx(85.4)
    assert row.avg == pytest.approx((85.14 + 85.4) / 2)
    assert [c.split for c in table.columns] == ["EN/TED", "test/F1"]


def test_summarize_task_for_the_runner() -> None:
    mme = summarize_task(get_task("mme"), {"mme_total_score": 1400.0, "n": 4}, n=4)
    assert (mme.primary, mme.display, mme.avg_value, mme.split, mme.display_name) == (
        1400.0,
        50.0,
        50.0,
        "-",
        "MME",
    )
    syn = summarize_task(get_task("synthdog_en"), {"tree_edit_distance": 2.0, "tree_edit_distance_mean": 0.5})
    assert (syn.display, syn.avg_value) == (2.0, 50.0)
    with pytest.raises(ResultsFormatError, match="primary metric 'exact_match'"):
        summarize_task(get_task("ai2d"), {"accuracy": 1.0})
    data = mme.to_dict()
    assert TaskResult.from_dict(json.loads(json.dumps(data)), "x") == mme


def test_unregistered_task_uses_stored_scale() -> None:
    entry = {"metrics": {"acc": 0.5}, "primary": 0.5, "avg_scale": 100.0, "split": "dev"}
    run = RunResults.from_dict({"model": "m", "tasks": {"my_custom_task": entry}})
    table = build_table([run])
    assert table.columns[0].name == "my_custom_task" and table.columns[0].split == "dev"
    assert table.rows[0].values["my_custom_task"] == 50.0 and table.rows[0].avg == 50.0


def test_results_roundtrip_and_folder_merge(tmp_path: Path) -> None:
    run = RunResults.from_dict({**study_row(), "visual": {"grids": "2x2"}, "limit": None}, "row")
    path = run.write(tmp_path / "runA" / "results.json")
    again = load_results(path)
    assert again.tasks == run.tasks and again.extra["visual"] == {"grids": "2x2"}
    # a second invocation of the same run adds a task and re-runs one with a later timestamp
    later = {
        "model": "qwen1.5-0.5b",
        "created": "2024-05-21T10:00:00",
        "tasks": {
            "pope": runner_task("pope", "pope_f1_score", 0.86),
            "ai2d": runner_task("ai2d", "exact_match", 0.5),
        },
    }
    (tmp_path / "runA" / "results_pope.json").write_text(json.dumps(later))
    merged = load_results(tmp_path / "runA")
    assert merged.tasks["ai2d"].primary == 0.5 and "pope" in merged.tasks and "mme" in merged.tasks
    table = build_table([merged, load_results(path)])
    assert [r.label for r in table.rows] == ["runA", "runA (2)"]


def test_folder_conflicts_and_bad_files(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(study_row()))
    (folder / "results_b.json").write_text(json.dumps(study_row()))  # same task, same 'created'
    with pytest.raises(ResultsFormatError, match="appears in both"):
        load_results(folder)
    (folder / "results_b.json").write_text(json.dumps(study_row(model="other")))
    with pytest.raises(ResultsFormatError, match="model 'other' differs"):
        load_results(folder)
    with pytest.raises(FileNotFoundError, match="no such results file"):
        load_results(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no results\*\.json file"):
        load_results(tmp_path / "empty")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "m", "tasks": {"ai2d": {"primary": 0.5}}}))
    with pytest.raises(ResultsFormatError, match=r"bad.json: task 'ai2d': 'metrics' must be"):
        load_results(bad)
    bad.write_text(json.dumps({"model": "m", "tasks": {"ai2d": {"metrics": {}, "primary": "high"}}}))
    with pytest.raises(ResultsFormatError, match="'primary' must be a number"):
        load_results(bad)
    bad.write_text("{not json")
    with pytest.raises(ResultsFormatError, match="invalid JSON"):
        load_results(bad)
    bad.write_text(json.dumps({"tasks": {}}))
    with pytest.raises(ResultsFormatError, match="missing 'model'"):
        load_results(bad)


def test_write_report_and_limit_note(tmp_path: Path) -> None:
    a = RunResults.from_dict({**study_row(), "run": "baseline"}, "a").write(tmp_path / "a" / "results.json")
    RunResults.from_dict({**study_row(), "limit": 5}, "b").write(tmp_path / "b" / "results.json")
    table = write_report([a, tmp_path / "b"], tmp_path / "report")
    assert [r.label for r in table.rows] == ["baseline", "b"]
    assert (tmp_path / "report" / "table.md").read_text().startswith("| Run | Avg. |")
    assert any("b: evaluated with limit=5" in n for n in table.notes)
    with pytest.raises(ValueError, match="labels"):
        build_table([load_results(a)], labels=["x", "y"])
