"""POPE object-hallucination probe (``pope``): strict yes/no matching, F1 as the headline number."""

from __future__ import annotations

from typing import Any

from vistune.eval.metrics import pope_metrics, pope_parse
from vistune.eval.task import Doc, GenerationSettings, register_task
from vistune.eval.tasks.common import BenchmarkTask, DatasetSource, Row


@register_task("pope")
class POPE(BenchmarkTask):
    """POPE (test: adversarial + popular + random, 3,000 each).

    Prompt: stripped question + ``\\nAnswer the question using a single word or phrase.`` Scoring keeps
    ``prediction.lower().strip()`` verbatim, so only the exact strings ``yes``/``no`` count (see
    :func:`vistune.eval.metrics.pope_metrics`). Metrics are pooled over all items; per-category accuracy and F1
    are added as ``pope_accuracy/<category>`` and ``pope_f1_score/<category>``.
    """

    name = "pope"
    display_name = "POPE"
    split = "test/F1"
    source = DatasetSource("lmms-lab/POPE", "test")
    primary_metric = "pope_f1_score"
    generation = GenerationSettings(
        max_new_tokens=128, temperature=0.0, top_p=1.0, num_beams=1, do_sample=False
    )
    POST_PROMPT = "\nAnswer the question using a single word or phrase."

    def row_to_doc(self, row: Row, position: int) -> Doc:
        answer = row.text("answer").lower().strip()
        if answer not in ("yes", "no"):
            raise row.error("answer", f"POPE answers must be yes/no, got {row.data['answer']!r}")
        category = row.get("category", "")
        return Doc(
            doc_id=str(position),
            images=[row.image("image")],
            target=answer,
            data={
                "question": row.text("question"),
                "question_id": str(row.get("question_id", position)),
                "category": str(category),
            },
        )

    def doc_to_text(self, doc: Doc) -> str:
        return f"{doc.data['question'].strip()}{self.POST_PROMPT}"

    def score(self, doc: Doc, prediction: str) -> dict[str, Any]:
        parsed = pope_parse(prediction.strip())
        return self._record(
            doc,
            prediction,
            parsed=parsed,
            target=doc.target,
            question_id=doc.data["question_id"],
            category=doc.data["category"],
            score=1.0 if parsed == doc.target else 0.0,
        )

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        out: dict[str, float] = dict(
            pope_metrics([r["parsed"] for r in records], [r["target"] for r in records])
        )
        out["n"] = len(records)
        for category in sorted({r["category"] for r in records if r["category"]}):
            subset = [r for r in records if r["category"] == category]
            sub = pope_metrics([r["parsed"] for r in subset], [r["target"] for r in subset])
            out[f"pope_accuracy/{category}"] = sub["pope_accuracy"]
            out[f"pope_f1_score/{category}"] = sub["pope_f1_score"]
        return out
