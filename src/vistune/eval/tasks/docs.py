"""Document and chart question answering: ChartQA (``chartqa``), DocVQA (``docvqa_val``) and InfographicVQA
(``infovqa_val``)."""

from __future__ import annotations

from typing import Any

from vistune.eval.metrics import anls, relaxed_correctness
from vistune.eval.task import Doc, GenerationSettings, register_task
from vistune.eval.tasks.common import BenchmarkTask, DatasetSource, Row

SINGLE_WORD_OR_PHRASE = "\nAnswer the question using a single word or phrase."


@register_task("chartqa")
class ChartQA(BenchmarkTask):
    """ChartQA (test: 1,250 human + 1,250 augmented questions).

    Prompt: question + ``\\nAnswer the question with a single word.`` (the blog-era wording). Scoring: relaxed
    correctness (5% numeric tolerance, trailing ``%`` divides by 100, else case-insensitive equality), reported
    overall and per split as fractions.
    """

    name = "chartqa"
    display_name = "ChartQA"
    split = "test"
    source = DatasetSource("lmms-lab/ChartQA", "test")
    primary_metric = "relaxed_overall"
    generation = GenerationSettings(max_new_tokens=16, temperature=0.0, do_sample=False)
    POST_PROMPT = "\nAnswer the question with a single word."

    def row_to_doc(self, row: Row, position: int) -> Doc:
        return Doc(
            doc_id=str(position),
            images=[row.image("image")],
            target=row.text("answer"),
            data={"question": row.text("question"), "type": row.text("type")},
        )

    def doc_to_text(self, doc: Doc) -> str:
        return f"{doc.data['question']}{self.POST_PROMPT}"

    def score(self, doc: Doc, prediction: str) -> dict[str, Any]:
        pred = prediction.strip()
        correct = relaxed_correctness(pred, doc.target)
        return self._record(
            doc,
            prediction,
            parsed=pred,
            target=doc.target,
            type=doc.data["type"],
            score=1.0 if correct else 0.0,
        )

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        out: dict[str, float] = {"relaxed_overall": self._mean(records), "n": len(records)}
        human = [r for r in records if r["type"] == "human_test"]
        augmented = [r for r in records if r["type"] != "human_test"]
        if human:
            out["relaxed_human_split"] = self._mean(human)
        if augmented:
            out["relaxed_augmented_split"] = self._mean(augmented)
        return out


class _ANLSTask(BenchmarkTask):
    """Shared DocVQA/InfoVQA definition: question + single word/phrase instruction, ANLS (τ = 0.5)."""

    primary_metric = "anls"
    split = "val"
    generation = GenerationSettings(max_new_tokens=32, temperature=0.0, do_sample=False)

    def row_to_doc(self, row: Row, position: int) -> Doc:
        return Doc(
            doc_id=row.text("questionId", nonempty=True),
            images=[row.image("image")],
            target=row.text_list("answers"),
            data={"question": row.text("question")},
        )

    def doc_to_text(self, doc: Doc) -> str:
        return f"{doc.data['question']}{SINGLE_WORD_OR_PHRASE}"

    def score(self, doc: Doc, prediction: str) -> dict[str, Any]:
        pred = prediction.strip()
        return self._record(doc, prediction, parsed=pred, target=doc.target, score=anls(pred, doc.target))

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        return {"anls": self._mean(records), "n": len(records)}


@register_task("docvqa_val")
class DocVQAVal(_ANLSTask):
    """DocVQA validation (5,349 questions on scanned documents), ANLS."""

    name = "docvqa_val"
    display_name = "DocVQA"
    source = DatasetSource("lmms-lab/DocVQA", "validation", config="DocVQA")


@register_task("infovqa_val")
class InfoVQAVal(_ANLSTask):
    """InfographicVQA validation (2,801 questions on infographics), ANLS."""

    name = "infovqa_val"
    display_name = "InfoVQA"
    source = DatasetSource("lmms-lab/DocVQA", "validation", config="InfographicVQA")
