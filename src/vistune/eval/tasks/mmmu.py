"""MMMU validation (``mmmu_val``): college-level multi-discipline questions, rule-parsed answers."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from typing import Any

from vistune.eval.metrics import (
    mmmu_eval_multi_choice,
    mmmu_eval_open,
    mmmu_parse_multi_choice,
    mmmu_parse_open,
)
from vistune.eval.task import Doc, GenerationSettings, register_task
from vistune.eval.tasks.common import BenchmarkTask, DatasetSource, Row, letter_options

MC_PROMPT = "Answer with the option's letter from the given choices directly."
OPEN_PROMPT = "Answer the question using a single word or phrase."
_IMAGE_TOKEN = re.compile(r"<image \d+>")
_ID_PATTERN = re.compile(r"^(dev|validation|test)_(.+?)_\d+$")

#: MMMU's six disciplines and their 30 subjects (used for the per-discipline breakdown).
DISCIPLINES = {
    "Art and Design": ["Art", "Art_Theory", "Design", "Music"],
    "Business": ["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    "Science": ["Biology", "Chemistry", "Geography", "Math", "Physics"],
    "Health and Medicine": [
        "Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine", "Pharmacy",
        "Public_Health",
    ],
    "Humanities and Social Science": ["History", "Literature", "Sociology", "Psychology"],
    "Tech and Engineering": [
        "Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics", "Energy_and_Power",
        "Materials", "Mechanical_Engineering",
    ],
}  # fmt: skip


def parse_options(row: Row, name: str = "options") -> list[str]:
    """MMMU stores ``options`` as a *string* holding a Python list literal; JSON copies may hold a real list."""
    value = row.require(name, (str, list))
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value) if value.strip() else []
        except (ValueError, SyntaxError) as exc:
            raise row.error(name, f"not a Python list literal: {exc}") from None
    if not isinstance(value, list | tuple):
        raise row.error(name, f"expected a list of options, got {type(value).__name__}")
    return [str(v) for v in value]


def visual_fields(text: str) -> list[str]:
    """The image fields a prompt refers to: distinct ``<image k>`` tokens, sorted, as ``image_k``."""
    return sorted({token.strip("<>").replace(" ", "_") for token in _IMAGE_TOKEN.findall(text)})


@register_task("mmmu_val")
class MMMUVal(BenchmarkTask):
    """MMMU validation (900 questions, 30 subjects).

    Prompt: multiple choice → question, ``A. …`` options, a blank line, the letter instruction; open →
    question, blank line, the single word/phrase instruction. ``<image k>`` placeholders stay in the text and
    the referenced images (distinct, sorted) are attached first. Scoring: MMMU's official parsers; when the
    multiple-choice parser finds no letter it guesses one, seeded by the document id and ``seed`` (so
    sharding and order cannot change the score; the count is reported as ``random_fallbacks``).
    Metric ``mmmu_acc`` = instance-weighted accuracy rounded to 5 decimals, plus ``mmmu_acc/<subject>`` and
    ``mmmu_acc/<discipline>``.
    """

    name = "mmmu_val"
    display_name = "MMMU"
    split = "val"
    source = DatasetSource("lmms-lab/MMMU", "validation", per_config_folders=True)
    primary_metric = "mmmu_acc"
    generation = GenerationSettings(max_new_tokens=128, temperature=0.0, do_sample=False)
    image_aspect_ratio = "original"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed

    def row_to_doc(self, row: Row, position: int) -> Doc:
        doc_id = row.text("id", nonempty=True)
        m = _ID_PATTERN.match(doc_id)
        if not m:
            raise row.error("id", f"expected '<split>_<Subject>_<n>', got {doc_id!r}")
        question_type = row.text("question_type")
        if question_type not in ("multiple-choice", "open"):
            raise row.error("question_type", f"expected 'multiple-choice' or 'open', got {question_type!r}")
        options = parse_options(row) if question_type == "multiple-choice" else []
        if question_type == "multiple-choice" and not options:
            raise row.error("options", "a multiple-choice question has no options")
        answer = row.require("answer", (str, list))
        data = {
            "question": row.text("question"),
            "question_type": question_type,
            "options": options,
            "subject": m.group(2),
        }
        fields = visual_fields(self._text(data))
        for name in fields:
            if not row.has(name):
                raise row.error(name, "the prompt refers to this image but the row has no such field")
        return Doc(doc_id=doc_id, images=[row.image(name) for name in fields], target=answer, data=data)

    @staticmethod
    def _text(data: dict[str, Any]) -> str:
        if data["question_type"] == "multiple-choice":
            return f"{data['question']}\n{letter_options(data['options'])}\n\n{MC_PROMPT}"
        return f"{data['question']}\n\n{OPEN_PROMPT}"

    def doc_to_text(self, doc: Doc) -> str:
        return self._text(doc.data)

    def score(self, doc: Doc, prediction: str) -> dict[str, Any]:
        pred = prediction.strip()
        if doc.data["question_type"] == "multiple-choice":
            choice = mmmu_parse_multi_choice(pred, doc.data["options"], key=doc.doc_id, seed=self.seed)
            parsed: Any = choice.answer
            method = choice.method
            correct = mmmu_eval_multi_choice(doc.target, choice.answer)
        else:
            parsed = mmmu_parse_open(pred)
            method = "open"
            correct = mmmu_eval_open(doc.target, parsed)
        return self._record(
            doc,
            prediction,
            parsed=parsed,
            parse_method=method,
            random_fallback=method == "random",
            target=doc.target,
            subject=doc.data["subject"],
            question_type=doc.data["question_type"],
            score=1.0 if correct else 0.0,
        )

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        if not records:
            raise ValueError("cannot aggregate an empty list of records")
        by_subject: dict[str, list[float]] = defaultdict(list)
        for r in records:
            by_subject[r["subject"]].append(float(r["score"]))
        out: dict[str, float] = {
            "mmmu_acc": round(sum(float(r["score"]) for r in records) / len(records), 5),
            "n": len(records),
            "random_fallbacks": sum(1 for r in records if r.get("random_fallback")),
        }
        for discipline, subjects in DISCIPLINES.items():
            scores = [s for subject in subjects for s in by_subject.get(subject, [])]
            if scores:
                out[f"mmmu_acc/{discipline}"] = round(sum(scores) / len(scores), 5)
        for subject, scores in sorted(by_subject.items()):
            out[f"mmmu_acc/{subject}"] = round(sum(scores) / len(scores), 5)
        return out
