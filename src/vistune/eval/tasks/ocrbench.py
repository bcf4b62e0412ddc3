"""OCRBench (``ocrbench``): substring matching over ten OCR question types, scored out of 1000."""

from __future__ import annotations

from typing import Any

from vistune.eval.metrics import OCRBENCH_CATEGORIES, ocrbench_match, ocrbench_summary
from vistune.eval.task import Doc, GenerationSettings, register_task
from vistune.eval.tasks.common import BenchmarkTask, DatasetSource, Row


@register_task("ocrbench")
class OCRBench(BenchmarkTask):
    """OCRBench test (1,000 questions).

    Prompt: the stripped question. Scoring: 1 when any ground-truth answer is a substring of the prediction
    (lower-cased; ``HME100k`` formulas compare without spaces and, by the v0.2.0 bug, against a lower-cased
    prediction — ``fix_hme_case=True`` keeps its case). Sums per question type, ``ocrbench_final_score`` out of
    1000 and ``ocrbench_accuracy = final / 1000`` (the constant denominator is upstream's, also for partial
    runs).
    """

    name = "ocrbench"
    display_name = "OCRBench"
    split = "test"
    source = DatasetSource("echo840/OCRBench", "test")
    primary_metric = "ocrbench_accuracy"
    generation = GenerationSettings(
        max_new_tokens=128, temperature=0.0, top_p=1.0, num_beams=1, do_sample=False
    )

    def __init__(self, fix_hme_case: bool = False) -> None:
        super().__init__()
        self.fix_hme_case = fix_hme_case

    def row_to_doc(self, row: Row, position: int) -> Doc:
        question_type = row.text("question_type")
        if question_type not in OCRBENCH_CATEGORIES:
            raise row.error(
                "question_type",
                f"unknown type {question_type!r}; expected one of {list(OCRBENCH_CATEGORIES)}",
            )
        answer = row.require("answer", (str, list))
        answers = [answer] if isinstance(answer, str) else row.text_list("answer")
        return Doc(
            doc_id=str(position),
            images=[row.image("image")],
            target=answers,
            data={
                "question": row.text("question"),
                "dataset": row.text("dataset"),
                "question_type": question_type,
            },
        )

    def doc_to_text(self, doc: Doc) -> str:
        return doc.data["question"].strip()

    def score(self, doc: Doc, prediction: str) -> dict[str, Any]:
        pred = prediction.strip()
        hit = ocrbench_match(pred, doc.target, doc.data["dataset"], fix_hme_case=self.fix_hme_case)
        return self._record(
            doc,
            prediction,
            parsed=pred.lower().strip(),
            target=doc.target,
            dataset=doc.data["dataset"],
            question_type=doc.data["question_type"],
            score=float(hit),
        )

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        if not records:
            raise ValueError("cannot aggregate an empty list of records")
        out = ocrbench_summary((r["question_type"], float(r["score"])) for r in records)
        out["n"] = len(records)
        return out
