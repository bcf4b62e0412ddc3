"""Multiple-choice letter tasks: AI2D (``ai2d``) and ScienceQA-IMG (``scienceqa_img``)."""

from __future__ import annotations

from typing import Any

from vistune.eval.metrics import exact_match, leading_option_letter, scienceqa_match
from vistune.eval.task import Doc, GenerationSettings, register_task
from vistune.eval.tasks.common import BenchmarkTask, DatasetSource, Row, letter_options

LETTER_POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."


def _option_index(row: Row, name: str, n_options: int) -> int:
    value = row.require(name, (str, int))
    if isinstance(value, bool):
        raise row.error(name, f"expected an option index, got {value!r}")
    try:
        index = int(value)
    except ValueError:
        raise row.error(name, f"expected an option index such as '0', got {value!r}") from None
    if not 0 <= index < n_options:
        raise row.error(name, f"option index {index} is outside the {n_options} options")
    return index


@register_task("ai2d")
class AI2D(BenchmarkTask):
    """AI2D diagrams (test, 3,088 questions).

    Prompt: question, options as ``A. …`` lines, then the letter instruction. Scoring: the
    ``flexible-extract`` filter keeps a leading ``X.`` letter, then exact match ignoring case and punctuation
    against the target letter (metric ``exact_match``, a fraction).
    """

    name = "ai2d"
    display_name = "AI2D"
    split = "test"
    source = DatasetSource("lmms-lab/ai2d", "test")
    primary_metric = "exact_match"
    generation = GenerationSettings(max_new_tokens=16, temperature=0.0, do_sample=False)

    def row_to_doc(self, row: Row, position: int) -> Doc:
        question = row.text("question")
        options = row.text_list("options")
        index = _option_index(row, "answer", len(options))
        return Doc(
            doc_id=str(position),
            images=[row.image("image")],
            target=chr(ord("A") + index),
            data={"question": question, "options": options},
        )

    def doc_to_text(self, doc: Doc) -> str:
        return f"{doc.data['question']}\n{letter_options(doc.data['options'])}{LETTER_POST_PROMPT}"

    def score(self, doc: Doc, prediction: str) -> dict[str, Any]:
        filtered = leading_option_letter(prediction.strip())
        return self._record(
            doc, prediction, parsed=filtered, target=doc.target, score=exact_match(filtered, doc.target)
        )

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        return {"exact_match": self._mean(records), "n": len(records)}


@register_task("scienceqa_img")
class ScienceQAImg(BenchmarkTask):
    """ScienceQA, image subset (test, 2,017 questions).

    Prompt: ``Context: {hint}\\n`` when the hint is non-empty, the question, options as ``A. …`` lines, then the
    letter instruction. Scoring: the LLaVA rule of :func:`vistune.eval.metrics.scienceqa_match`.
    """

    name = "scienceqa_img"
    display_name = "ScienceQA"
    split = "IMG"
    source = DatasetSource("lmms-lab/ScienceQA", "test", config="ScienceQA-IMG")
    primary_metric = "exact_match"
    generation = GenerationSettings(max_new_tokens=16, temperature=0.0, do_sample=False)
    image_aspect_ratio = "original"

    def row_to_doc(self, row: Row, position: int) -> Doc:
        question = row.text("question")
        choices = row.text_list("choices")
        index = _option_index(row, "answer", len(choices))
        hint = row.get("hint", "")
        if not isinstance(hint, str):
            raise row.error("hint", f"expected a string, got {type(hint).__name__}")
        return Doc(
            doc_id=str(position),
            images=[row.image("image")],
            target=chr(ord("A") + index),
            data={"question": question, "choices": choices, "hint": hint},
        )

    def doc_to_text(self, doc: Doc) -> str:
        context = f"Context: {doc.data['hint']}\n" if doc.data["hint"] else ""
        return f"{context}{doc.data['question']}\n{letter_options(doc.data['choices'])}{LETTER_POST_PROMPT}"

    def score(self, doc: Doc, prediction: str) -> dict[str, Any]:
        pred = prediction.strip()
        return self._record(
            doc, prediction, parsed=pred, target=doc.target, score=scienceqa_match(pred, doc.target)
        )

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        return {"exact_match": self._mean(records), "n": len(records)}
