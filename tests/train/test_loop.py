"""The loop: invariances (accumulation, resume, crash mid-save), non-finite handling, skips, stage handoff."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train.conftest import losses, make_recipe, stage_dict
from vistune.config import ConfigError
from vistune.train.checkpoint import read_model_info
from vistune.train.dataset import BadSampleError
from vistune.train.loop import Hooks, RunOptions, TrainingAborted, build_stage_model, train
from vistune.train.monitor import read_metrics


class Crash(RuntimeError):
    pass


def _crash_at(stage: str, step: int):
    def hook(name, s, record):
        if name == stage and s == step:
            raise Crash(f"simulated kill after {name} step {s}")

    return hook


def _data(d, workers=0):
    return {"path": str(d["instruct"]), "image_folder": str(d["root"]), "num_workers": workers}


def _max_diff(a, b):
    assert len(a) == len(b)
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


@pytest.mark.parametrize(
    "variant",
    [
        {"micro_batch_size": 1},
        {"micro_batch_size": 2, "gradient_checkpointing": True},
        {"micro_batch_size": 2, "packing": True},
        {"micro_batch_size": 4, "packing": True, "compile": True},
    ],
    ids=["micro1xaccum4", "micro2xaccum2+grad-ckpt", "micro2xaccum2+packed", "micro4+packed+compiled"],
)
def test_accumulation_layout_does_not_change_the_step(tmp_path, toy_data, variant, monkeypatch):
    """micro 1 x accum 4 (and 2 x 2 with checkpointing, packed micro-batches, compiled blocks) == micro 4 x
    accum 1 padded: same losses per step."""
    monkeypatch.setenv("VISTUNE_COMPILE_BACKEND", "eager")
    ref = make_recipe([stage_dict(toy_data, micro_batch_size=4, max_steps=4)])
    train(ref, RunOptions(output=tmp_path / "ref"))
    other = make_recipe([stage_dict(toy_data, max_steps=4, **variant)])
    train(other, RunOptions(output=tmp_path / "other"))
    a, b = losses(tmp_path / "ref"), losses(tmp_path / "other")
    assert len(a) == 4 and a[-1] < a[0]
    assert _max_diff(a, b) < 1e-5


def test_two_stage_run_resumes_after_a_kill_with_identical_losses(tmp_path, toy_data):
    stages = [
        stage_dict(
            toy_data,
            name="align",
            trainable=["connector", "newline"],
            lr={"default": 2e-3},
            chat_template="plain",
            data={"path": str(toy_data["align"]), "image_folder": str(toy_data["root"])},
            save_weights="trainable",
            max_steps=4,
        ),
        stage_dict(toy_data, name="sft", max_steps=7, save_every=2),
    ]
    recipe = make_recipe(stages)
    full = train(recipe, RunOptions(output=tmp_path / "full"))
    run = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(recipe, RunOptions(output=run), Hooks(on_step_end=_crash_at("sft", 5)))
    assert [r.name for r in (run / "checkpoints" / "s01-sft").iterdir()] and not (
        run / "stages" / "sft"
    ).exists()
    resumed = train(recipe, RunOptions(output=run, resume=True))
    assert resumed["stages"]["sft"]["resumed_from"] == 4
    assert (
        "align" in resumed["stages"] and resumed["stages"]["align"]["steps"] == 4
    )  # kept from the first run
    want, got = read_metrics(tmp_path / "full" / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert [(r["stage"], r["step"]) for r in got] == [(r["stage"], r["step"]) for r in want]
    assert _max_diff([r["loss"] for r in want], [r["loss"] for r in got]) <= 1e-6
    assert _max_diff([r["grad_norm"] for r in want], [r["grad_norm"] for r in got]) <= 1e-6
    # finished stages leave their output and no resume checkpoints
    assert not (run / "checkpoints" / "s01-sft").exists()
    assert full["stages"]["sft"]["final_loss"] == pytest.approx(
        resumed["stages"]["sft"]["final_loss"], abs=1e-6
    )
    assert (run / "stages" / "sft" / "loss.png").is_file() and (run / "config.yaml").is_file()


def test_crash_in_the_middle_of_a_save_loses_only_the_steps_since_the_last_checkpoint(tmp_path, toy_data):
    recipe = make_recipe([stage_dict(toy_data, max_steps=6, save_every=2)])
    train(recipe, RunOptions(output=tmp_path / "full"))
    run = tmp_path / "run"
    saves = []

    def fault(phase):
        saves.append(phase)
        if phase == "optimizer" and saves.count("optimizer") == 2:  # during the step-4 save
            raise Crash("killed while writing optimizer.pt")

    with pytest.raises(Crash):
        train(recipe, RunOptions(output=run), Hooks(checkpoint_fault=fault))
    ckdir = run / "checkpoints" / "s00-sft"
    assert sorted(p.name for p in ckdir.iterdir()) == ["step-00000002"]  # no partial step-4 folder
    # a hard kill (no cleanup) would leave a temp folder behind: resume must ignore and remove it
    junk = ckdir / ".step-00000004.tmp-abc123"
    (junk / "model").mkdir(parents=True)
    (junk / "optimizer.pt").write_bytes(b"half")
    resumed = train(recipe, RunOptions(output=run, resume=True))
    assert resumed["stages"]["sft"]["resumed_from"] == 2 and not junk.exists()
    assert _max_diff(losses(tmp_path / "full"), losses(run)) <= 1e-6
    assert len(losses(run)) == 6


def test_non_finite_steps_are_skipped_then_abort(tmp_path, toy_data):
    poisoned = {3}
    seen = {}

    def poison(runner):
        def fwd_hook(module, args, out):
            return out * float("nan") if seen.get("step", 0) + 1 in poisoned else out

        runner.model.llm.get_input_embeddings().register_forward_hook(fwd_hook)  # runs for every batch
        seen["runner"] = runner

    def count(name, step, record):
        seen["step"] = step

    recipe = make_recipe([stage_dict(toy_data, max_steps=5, max_nonfinite_steps=2)])
    summary = train(
        recipe, RunOptions(output=tmp_path / "a"), Hooks(on_stage_start=poison, on_step_end=count)
    )
    st = summary["stages"]["sft"]
    assert st["nonfinite_steps"] == [3] and st["steps"] == 5
    recs = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert [r["skipped_step"] for r in recs] == [False, False, True, False, False]
    assert recs[2]["loss"] is None and recs[3]["loss"] is not None  # strict JSON: NaN is written as null
    assert all(torch.isfinite(p).all() for p in seen["runner"].model.parameters())
    poisoned.update({4})
    seen.clear()
    with pytest.raises(TrainingAborted, match=r"2 non-finite steps in a row \(last: step 4"):
        train(recipe, RunOptions(output=tmp_path / "b"), Hooks(on_stage_start=poison, on_step_end=count))


def test_bad_samples_are_counted_in_the_summary_or_fail_fast(tmp_path, bad_toy_data):
    # two DataLoader workers: skips are produced in the workers and counted in the main process
    recipe = make_recipe(
        [stage_dict(bad_toy_data, max_steps=None, epochs=1, max_length=1024, data=_data(bad_toy_data, 2))]
    )
    summary = train(recipe, RunOptions(output=tmp_path / "run"))
    st = summary["stages"]["sft"]
    assert st["skips"] == {"image_corrupt": 1, "image_missing": 1, "malformed_row": 1, "too_long": 1}
    assert summary["skips"] == st["skips"] and summary["skipped_samples"] == 4
    assert st["samples"] == 12 and st["steps"] == 4
    wheres = {e["reason"]: e["where"] for e in st["first_skips"]}
    assert wheres["image_missing"] == f"{bad_toy_data['instruct']}, row 12, field 'image'"
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["skips"] == summary["skips"]
    with pytest.raises(BadSampleError, match="row 1[234]"):
        train(recipe, RunOptions(output=tmp_path / "strict", strict=True))


def test_stage_one_output_holds_trainable_parts_and_loads_onto_the_base(tmp_path, toy_data):
    stages = [
        stage_dict(
            toy_data,
            name="align",
            trainable=["connector"],
            lr={"connector": 5e-3},
            chat_template="plain",
            save_weights="trainable",
            max_steps=2,
        ),
        stage_dict(toy_data, name="sft", max_steps=1),
    ]
    recipe = make_recipe(stages)
    train(recipe, RunOptions(output=tmp_path, stage="align"))
    out = tmp_path / "stages" / "align" / "model"
    assert read_model_info(out)["parts"] == ["connector"]
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    assert saved and all(k.startswith("connector.") for k in saved)
    model, _, source = build_stage_model(recipe, 1, tmp_path)
    base, _, base_source = build_stage_model(recipe, 0, tmp_path)
    assert source == str(out) and base_source == "base model"
    sd, bsd = model.state_dict(), base.state_dict()
    for k, v in sd.items():
        if k.startswith("connector."):
            assert torch.equal(v, saved[k]) and not torch.equal(v, bsd[k])
        else:
            assert torch.equal(v, bsd[k]), k  # frozen parts come from the (seeded) base model
    # running the next stage alone picks it up; without it the error says what to do
    train(recipe, RunOptions(output=tmp_path, stage="sft"))
    with pytest.raises(ConfigError, match="starts from the output of stage 'align'.*init_from"):
        build_stage_model(recipe, 1, tmp_path / "elsewhere")


def test_every_stage_is_checked_before_training_starts(tmp_path, toy_data):
    bad_data = {"path": str(tmp_path / "nope.jsonl")}
    recipe = make_recipe(
        [stage_dict(toy_data, name="a", max_steps=1), stage_dict(toy_data, name="b", data=bad_data)]
    )
    with pytest.raises(ConfigError, match=r"stages\.b\.data\.path: data file not found: .*nope\.jsonl"):
        train(recipe, RunOptions(output=tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing written: the fixed recipe can use the same --output
    no_folder = {"path": str(toy_data["instruct"]), "image_folder": str(tmp_path / "missing")}
    with pytest.raises(ConfigError, match=r"stages\.a\.data\.image_folder: .*missing is not a folder"):
        train(
            make_recipe([stage_dict(toy_data, name="a", data=no_folder)]), RunOptions(output=tmp_path / "r2")
        )
    with pytest.raises(ConfigError, match=r"stages\.a\.init_from: .*not a vistune model folder"):
        train(
            make_recipe([stage_dict(toy_data, name="a", init_from=str(tmp_path))]),
            RunOptions(output=tmp_path / "r3"),
        )


def test_run_folder_rules(tmp_path, toy_data):
    recipe = make_recipe([stage_dict(toy_data, max_steps=1)])
    train(recipe, RunOptions(output=tmp_path))
    with pytest.raises(ConfigError, match="pass --resume to continue"):
        train(recipe, RunOptions(output=tmp_path))
    changed = make_recipe([stage_dict(toy_data, max_steps=1, lr={"default": 1e-3})])
    with pytest.raises(ConfigError, match=r"different recipe \(differs at stages\[0\]\.lr\.default"):
        train(changed, RunOptions(output=tmp_path, resume=True))
    with pytest.raises(ConfigError, match="holds no run"):
        train(recipe, RunOptions(output=tmp_path / "empty", resume=True))
    # checkpoint cadence and launch layout may change on resume; a finished run resumes to a no-op
    ok = make_recipe([stage_dict(toy_data, max_steps=1, save_every=5)], parallel={"strategy": "ddp"})
    assert train(ok, RunOptions(output=tmp_path, resume=True))["stages"]["sft"]["steps"] == 1
    assert len(losses(tmp_path)) == 1


def test_tiny_recipe_end_to_end_loss_falls(tmp_path, toy_data, monkeypatch):
    """The shipped tiny recipe through the CLI on generated data: both stages run, the SFT loss falls."""
    from typer.testing import CliRunner

    import vistune.cli as cli

    monkeypatch.setenv("VISTUNE_DATA", str(toy_data["root"]))
    cli._register_areas()
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "tiny.yaml"
    res = CliRunner().invoke(
        cli.app,
        [
            "train",
            str(recipe),
            "--output",
            str(tmp_path / "run"),
            "--no-progress",
            "--set",
            "stages.sft.epochs=3",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["stages"]) == {"align", "sft"}
    sft = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["stage"] == "sft"]
    assert len(sft) == 18  # 24 samples / batch 4 x 3 epochs
    assert np.mean(sft[-4:]) < sft[0] - 1.0
    assert "first→final" in res.output and "sft" in res.output
    for name in ("align", "sft"):
        assert (tmp_path / "run" / "stages" / name / "loss.png").is_file()
    rec = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    for key in (
        "lr",
        "grad_norm",
        "tokens_per_s",
        "visual_tokens_per_s",
        "data_wait_s",
        "peak_mem_gb",
        "flops",
    ):
        assert rec[key] is not None
    assert rec["visual_tokens"] > 0 and rec["flops"] > 0 and rec["mfu"] is None  # CPU: FLOPs, no MFU
    # the full-weight SFT output is a regular vistune checkpoint
    from vistune import load_pretrained

    model, proc = load_pretrained(tmp_path / "run" / "stages" / "sft" / "model")
    assert model.visual.grids == ((1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3), (3, 1), (3, 2), (3, 3))


def test_cli_errors_are_clear(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import vistune.cli as cli

    monkeypatch.delenv("VISTUNE_DATA", raising=False)
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "tiny.yaml"
    with pytest.raises(ConfigError, match="environment variable VISTUNE_DATA is not set"):
        cli.app(["train", str(recipe), "--output", str(tmp_path)], standalone_mode=False)
    monkeypatch.setenv("VISTUNE_DATA", "/data")
    cli._register_areas()
    res = CliRunner().invoke(
        cli.app, ["train", str(recipe), "-o", str(tmp_path), "--print-config", "--stage", "sft"]
    )
    assert res.exit_code == 0 and "path: /data/instruct.jsonl" in res.output
    with pytest.raises(ConfigError, match="--stage 'nope'"):
        cli.app(["train", str(recipe), "-o", str(tmp_path), "--stage", "nope"], standalone_mode=False)
