"""The synthetic world's held-out eval splits as registered tasks (``synth_*``).

Each task reads ``<world>/eval/<task>.jsonl`` written by ``vistune world make`` (``--data-dir`` or the
``VISTUNE_WORLD`` environment variable points at the world folder) and scores with the same metric code as the
benchmark it mirrors: exact match (VQA short answers, multiple-choice letters), POPE F1 (existence),
ANLS (document questions), SynDOG nTED (transcription; the world's text is upper case, so ground truth is
lower-cased like the prediction), ChartQA relaxed accuracy (charts), and caption fact F1 (the Image-DC
analogue, no judge). Chance levels come from the world's manifest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vistune.data.images import load_image
from vistune.eval.metrics import (
    anls,
    exact_match,
    pope_metrics,
    pope_parse,
    relaxed_correctness,
    synthdog_nted,
)
from vistune.eval.task import Doc, GenerationSettings, Task, register_task

WORLD_ENV = "VISTUNE_WORLD"

_MAX_NEW = {"caption_f1": 64, "nted": 48, "anls": 16}


def locate_world(data_dir: str | Path | None) -> Path:
    candidates = []
    if data_dir is not None:
        candidates += [Path(data_dir), Path(data_dir) / "world"]
    if os.environ.get(WORLD_ENV):
        candidates.append(Path(os.environ[WORLD_ENV]))
    for c in candidates:
        if (c / "world.json").is_file():
            return c
    raise FileNotFoundError(
        "synthetic world not found: pass --data-dir pointing at a folder made by `vistune world make` "
        f"(it holds world.json), or set {WORLD_ENV}; looked in {[str(c) for c in candidates] or 'nothing'}"
    )


class SyntheticTask(Task):
    metric: str = "exact_match"
    data_env = WORLD_ENV

    def __init__(self, name: str, metric: str) -> None:
        self.name = name
        self.metric = metric
        self.split = "synthetic"
        self.primary_metric = {"pope_f1": "pope_f1_score"}.get(metric, metric)
        self.generation = GenerationSettings(max_new_tokens=_MAX_NEW.get(metric, 12))
        self.chance = None
        self.world: Path | None = None

    def load(self, data_dir: str | Path | None, limit: int | None = None) -> Iterator[Doc]:
        world = locate_world(data_dir)
        self.world = world
        manifest = json.loads((world / "world.json").read_text())
        info = (manifest.get("tasks") or {}).get(self.name, {})
        if "chance" in info:
            self.chance = float(info["chance"])
        path = world / "eval" / f"{self.name}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: eval split missing from the world")
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f):
                if limit is not None and i >= limit:
                    break
                try:
                    row = json.loads(line)
                    image = world / row["image"]
                    question = row["question"]
                    answer = row["answer"]
                except (json.JSONDecodeError, KeyError) as exc:
                    raise ValueError(f"{path}: row {i}: malformed ({exc})") from None
                yield Doc(
                    doc_id=str(row.get("id", i)),
                    images=[lambda p=image: load_image(p)],
                    target=answer,
                    data={"question": question, "meta": row.get("meta") or {}},
                )

    def doc_to_messages(self, doc: Doc) -> list[dict[str, Any]]:
        return [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": doc.data["question"]}]}
        ]

    def score(self, doc: Doc, prediction: str) -> dict[str, Any]:
        pred = prediction.strip()
        rec: dict[str, Any] = {"prediction": pred, "target": doc.target}
        m = self.metric
        if m == "exact_match":
            rec["score"] = exact_match(pred, str(doc.target))
        elif m == "pope_f1":
            rec["parsed"] = pope_parse(pred)
            rec["score"] = float(rec["parsed"] == str(doc.target).lower())
        elif m == "anls":
            answers = doc.data.get("meta", {}).get("answers") or [doc.target]
            rec["score"] = anls(pred, answers)
        elif m == "relaxed_accuracy":
            rec["score"] = float(relaxed_correctness(pred, str(doc.target)))
        elif m == "nted":
            rec["score"] = synthdog_nted(pred, str(doc.target).lower())
        elif m == "caption_f1":
            from vistune.data.synthetic.captions import score_caption

            cs = score_caption(pred, doc.data.get("meta", {}).get("objects") or [])
            rec.update(score=cs.f1, precision=cs.precision, recall=cs.recall)
        else:  # pragma: no cover - guarded by the registry below
            raise ValueError(f"unknown metric {m}")
        return rec

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        n = len(records)
        if n == 0:
            return {self.primary_metric: float("nan"), "n": 0}
        if self.metric == "pope_f1":
            out = dict(
                pope_metrics([r["parsed"] for r in records], [str(r["target"]).lower() for r in records])
            )
            out["n"] = n
            return out
        out = {self.primary_metric: sum(r["score"] for r in records) / n, "n": n}
        if self.metric == "caption_f1":
            out["precision"] = sum(r["precision"] for r in records) / n
            out["recall"] = sum(r["recall"] for r in records) / n
        return out


def _register() -> None:
    from vistune.data.synthetic.world import EVAL_TASKS

    for name, spec in EVAL_TASKS.items():
        register_task(name)(lambda n=name, m=spec.metric: SyntheticTask(n, m))


_register()
