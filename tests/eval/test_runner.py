"""The eval runner on a tiny model and an in-test task: batching, resume, re-scoring, sharding."""

import json

import pytest

from tests.conftest import noise
from vistune.eval import task as task_mod
from vistune.eval.runner import EvalOptions, evaluate, rescore
from vistune.eval.task import Doc, GenerationSettings, Task


class EchoTask(Task):
    name = "test_echo"
    split = "val"
    primary_metric = "acc"
    generation = GenerationSettings(max_new_tokens=6)
    calls = 0

    def load(self, data_dir, limit=None):
        n = 7 if limit is None else min(limit, 7)
        for i in range(n):
            EchoTask.calls += 1
            yield Doc(
                doc_id=f"d{i}",
                images=[noise(20 + 7 * i, 30 + 5 * i, i)] if i % 3 else [],
                target=str(i % 2),
                data={"i": i, "blob": b"bytes are dropped"},
            )

    def doc_to_messages(self, doc):
        content = ([{"type": "image"}] if doc.images else []) + [
            {"type": "text", "text": f"Say {doc.data['i']}."}
        ]
        return [{"role": "user", "content": content}]

    def score(self, doc, prediction):
        return {"pred": prediction, "acc": float(prediction == doc.target), "len": len(prediction)}

    def aggregate(self, records):
        return {
            "acc": sum(r["acc"] for r in records) / len(records),
            "mean_len": sum(r["len"] for r in records) / len(records),
        }


@pytest.fixture(autouse=True)
def _register():
    task_mod.TASKS["test_echo"] = EchoTask
    yield
    task_mod.TASKS.pop("test_echo", None)


def test_runner_batching_resume_and_rescore(tiny, tmp_path):
    model, proc = tiny
    r1 = evaluate(model, proc, ["test_echo"], tmp_path / "b1", EvalOptions(batch_size=1, progress=False))
    r4 = evaluate(model, proc, ["test_echo"], tmp_path / "b4", EvalOptions(batch_size=4, progress=False))
    s1 = [
        json.loads(x)["prediction"]
        for x in (tmp_path / "b1/samples/test_echo.jsonl").read_text().splitlines()
    ]
    s4 = [
        json.loads(x)["prediction"]
        for x in (tmp_path / "b4/samples/test_echo.jsonl").read_text().splitlines()
    ]
    assert s1 == s4 and len(s1) == 7
    assert r1["tasks"]["test_echo"]["metrics"] == r4["tasks"]["test_echo"]["metrics"]
    saved = json.loads((tmp_path / "b4/results.json").read_text())
    assert saved["tasks"]["test_echo"]["n"] == 7 and saved["visual"]["grids"]
    # records hold no images/bytes
    line = json.loads((tmp_path / "b4/samples/test_echo.jsonl").read_text().splitlines()[0])
    assert "blob" not in line["doc"]["data"]
    # re-scoring without model or data reproduces the metrics
    again = rescore(tmp_path / "b4/samples/test_echo.jsonl")
    assert again["metrics"] == r4["tasks"]["test_echo"]["metrics"]


def test_runner_resumes_finished_samples(tiny, tmp_path, monkeypatch):
    model, proc = tiny
    out = tmp_path / "run"
    evaluate(model, proc, ["test_echo"], out, EvalOptions(batch_size=2, limit=3, progress=False))
    calls = []
    orig = model.generate

    def counting(*a, **k):
        calls.append(k["input_ids"].shape[0] if "input_ids" in k else a[0].shape[0])
        return orig(*a, **k)

    monkeypatch.setattr(model, "generate", counting)
    res = evaluate(model, proc, ["test_echo"], out, EvalOptions(batch_size=2, limit=5, progress=False))
    assert sum(calls) == 2  # only the two new documents ran
    assert res["tasks"]["test_echo"]["n"] == 5


def test_runner_shards_by_rank(tiny, tmp_path, monkeypatch):
    model, proc = tiny
    out = tmp_path / "dp"
    for rank in (1, 0):  # rank 0 last: it merges
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        res = evaluate(model, proc, ["test_echo"], out, EvalOptions(batch_size=3, progress=False))
    monkeypatch.setenv("WORLD_SIZE", "1")
    single = evaluate(
        model, proc, ["test_echo"], tmp_path / "single", EvalOptions(batch_size=3, progress=False)
    )
    assert res["tasks"]["test_echo"]["metrics"] == single["tasks"]["test_echo"]["metrics"]
    merged = [json.loads(x)["doc_id"] for x in (out / "samples/test_echo.jsonl").read_text().splitlines()]
    assert merged == [f"d{i}" for i in range(7)]
