"""Open-ended VQA with the official VQA accuracy: OK-VQA (``ok_vqa_val2014``) and VizWiz-VQA
(``vizwiz_vqa_val``)."""

from __future__ import annotations

from typing import Any

from vistune.eval.metrics import vqa_accuracy, vqa_normalize
from vistune.eval.task import Doc, GenerationSettings, register_task
from vistune.eval.tasks.common import BenchmarkTask, DatasetSource, Row

UNANSWERABLE_POST_PROMPT = (
    "\nWhen the provided information is insufficient, respond with 'Unanswerable'."
    "\nAnswer the question using a single word or phrase."
)


def _answers(row: Row) -> list[str]:
    """The crowd answers: strings as published by lmms-lab, or ``{"answer": ...}`` objects as in the original
    VizWiz/VQA annotation files."""
    value = row.require("answers", (list, tuple), nonempty=True)
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            item = item.get("answer")
        if not isinstance(item, str):
            raise row.error("answers", f"item {i} should be a string or {{'answer': str}}, got {item!r:.60}")
        out.append(item)
    return out


class _VQATask(BenchmarkTask):
    """Shared definition: question + the "Unanswerable" instruction (copied from the VizWiz template into OK-VQA
    upstream); greedy decoding with the plugin's 1,024-token default; 10-choose-9 VQA accuracy."""

    primary_metric = "exact_match"
    split = "val"
    generation = GenerationSettings(max_new_tokens=1024, temperature=0.0, do_sample=False)

    def row_to_doc(self, row: Row, position: int) -> Doc:
        return Doc(
            doc_id=row.text("question_id", nonempty=True),
            images=[row.image("image")],
            target=_answers(row),
            data={"question": row.text("question")},
        )

    def question_text(self, doc: Doc) -> str:
        return doc.data["question"]

    def doc_to_text(self, doc: Doc) -> str:
        return f"{self.question_text(doc)}{UNANSWERABLE_POST_PROMPT}"

    def score(self, doc: Doc, prediction: str) -> dict[str, Any]:
        pred = prediction.strip()
        return self._record(
            doc,
            prediction,
            parsed=vqa_normalize(pred),
            target=doc.target,
            score=vqa_accuracy(pred, doc.target),
        )

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        return {"exact_match": self._mean(records), "n": len(records)}


@register_task("ok_vqa_val2014")
class OKVQAVal2014(_VQATask):
    """OK-VQA val2014 (5,046 questions needing outside knowledge)."""

    name = "ok_vqa_val2014"
    display_name = "OK-VQA"
    source = DatasetSource("lmms-lab/OK-VQA", "val2014")


@register_task("vizwiz_vqa_val")
class VizWizVQAVal(_VQATask):
    """VizWiz-VQA val (4,319 questions from blind users). The question is passed through ``str.capitalize``
    (which also lower-cases the rest, as upstream does); "unanswerable" is scored like any other answer."""

    name = "vizwiz_vqa_val"
    display_name = "VizWiz-VQA"
    source = DatasetSource("lmms-lab/VizWiz-VQA", "val")

    def question_text(self, doc: Doc) -> str:
        return doc.data["question"].capitalize()
