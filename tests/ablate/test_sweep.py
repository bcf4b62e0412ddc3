"""A small sweep end to end: shared stages, resumable cells, inference variants, tables and plots."""

import json

import pytest
from typer.testing import CliRunner

from vistune.ablate.runner import plan_sweep, run_sweep
from vistune.ablate.sweep import load_sweep
from vistune.cli import _register_areas, app
from vistune.data.synthetic import WorldConfig, WorldSizes, write_world

runner = CliRunner()
_register_areas()

RECIPE = """
name: tiny-world
seed: 0
model: tiny
visual: {grids: "max:2x2", cap: total, max_tokens: "3 tiles"}
defaults: {max_length: 512, warmup_ratio: 0.0, global_batch_size: 4, micro_batch_size: 4}
logging: {progress: false}
stages:
  - name: align
    data: {path: "WORLD/stage1_alt.jsonl", image_folder: "WORLD"}
    trainable: [connector, newline]
    lr: {default: 2.0e-3}
    max_steps: 2
    chat_template: plain
    save_weights: trainable
  - name: sft
    data: {path: "WORLD/stage2_instruct.jsonl", image_folder: "WORLD"}
    trainable: [connector, newline, llm]
    lr: {default: 1.0e-3}
    max_steps: 2
"""

SWEEP = """
name: lr-x-pool
recipe: recipe.yaml
axes:
  - name: LLM LR
    key: stages.sft.lr.default
    values: {"1e-3": 1.0e-3, "3e-3": 3.0e-3}
rows:
  - label: pooled
    knobs: {LLM LR: "1e-3", Pooling: "1/2 before"}
    set: ["visual.pool_ratio=0.5", "visual.pool_position=before", "stages.sft.lr.default=1.0e-3"]
eval:
  tasks: [synth_color, synth_count]
  data_dir: WORLD
  limit: 4
  batch_size: 4
  max_new_tokens: 3
inference:
  - {label: "1x1", set: ["visual.grids=max:1x1"]}
plot_image_sizes: ["32x32", "64x48", "128x72"]
"""


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("ab")
    sizes = WorldSizes(
        stage1_alt=8,
        stage1_web=4,
        stage15_recap=4,
        stage15_docs=4,
        stage15_charts=4,
        stage2_instruct=8,
        eval=4,
    )
    write_world(root / "world", WorldConfig(sizes=sizes), seed=0)
    (root / "recipe.yaml").write_text(RECIPE.replace("WORLD", str(root / "world")))
    (root / "sweep.yaml").write_text(SWEEP.replace("WORLD", str(root / "world")))
    return root / "sweep.yaml"


def test_plan_shares_identical_prefixes(sweep_file):
    sweep, recipe = load_sweep(sweep_file)
    plans, nodes = plan_sweep(sweep, recipe)
    assert [p.cell.label for p in plans] == ["1e-3", "3e-3", "pooled"]
    # the two LR cells share Stage-1; the pooled cell changes the model's visual config -> its own Stage-1
    assert plans[0].nodes[0] is plans[1].nodes[0]
    assert plans[0].nodes[1] is not plans[1].nodes[1]
    assert plans[2].nodes[0] is not plans[0].nodes[0]
    assert len(nodes) == 5


def test_dry_run_prints_plan(sweep_file, tmp_path):
    res = runner.invoke(app, ["ablate", str(sweep_file), "--output", str(tmp_path / "o"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "3 cells, 5 distinct stages" in res.output and "align*" in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_sweep_end_to_end_and_resume(sweep_file, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    run_sweep(sweep_file, out, progress=False)
    table = json.loads((out / "table.json").read_text())
    assert [r["label"] for r in table["rows"]] == ["1e-3", "3e-3", "pooled"]
    assert "Training Time" in table["header"] and "Avg." in table["header"]
    assert table["header"][0] == "Run" and len(table["splits"]) == len(table["header"])
    assert all(len(r["cells"]) == len(table["header"]) for r in table["rows"])  # columns line up
    for name in ("table.md", "inference.md"):
        md = (out / name).read_text().splitlines()
        assert len({line.count(" | ") for line in md if line.startswith("| ")}) == 1, name
    for name in (
        "table.md",
        "table.csv",
        "inference.md",
        "score_vs_time.png",
        "loss_curves.png",
        "tokens_per_image.png",
    ):
        assert (out / name).is_file(), name
    cells = {c: json.loads((out / "cells" / c / "cell.json").read_text()) for c in ("1e-3", "3e-3", "pooled")}
    # the visual-token columns come from the token-count function; the pooled cell uses fewer tokens per image
    pred = {c: r["visual_tokens_per_image_pred"] for c, r in zip(cells, table["rows"], strict=True)}
    assert pred["pooled"] < pred["1e-3"] == pred["3e-3"]
    # trained visual tokens per sample agree with the prediction for single-image samples
    assert set(cells["1e-3"]["eval"]) == {"trained", "1x1"}
    # re-running skips every finished stage and evaluation
    import vistune.train.loop as loop

    def boom(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(loop, "train", boom)
    run_sweep(sweep_file, out, progress=False)


def test_shipped_sweeps_plan(monkeypatch, tmp_path):
    """Every shipped sweep parses, expands its cells and resolves each cell's recipe against the demo."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    for var in ("VISTUNE_WORLD", "VISTUNE_MODELS", "VISTUNE_DATA", "VISTUNE_EVAL_DATA"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    files = sorted((repo / "recipes" / "ablations").rglob("*.yaml"))
    assert len(files) >= 10
    for f in files:
        sweep, recipe = load_sweep(f)
        plans, nodes = plan_sweep(sweep, recipe)
        assert len(plans) >= 2, f
        assert len(nodes) <= sum(len(p.nodes) for p in plans)


def test_unset_variable_in_a_sweep_names_the_file_and_field(monkeypatch):
    """Sweep fields are not recipe keys: the error names file + field and suggests no recipe ``--set``."""
    from pathlib import Path

    from vistune.config import ConfigError

    monkeypatch.delenv("VISTUNE_WORLD", raising=False)
    f = Path(__file__).resolve().parents[2] / "recipes" / "ablations" / "grids_tokens.yaml"
    with pytest.raises(ConfigError) as e:
        load_sweep(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: eval.data_dir: environment variable VISTUNE_WORLD is not set")
    assert "--set" not in msg
