"""MathVista testmini (``mathvista_testmini``): rule-based answer extraction with an optional LLM judge hook."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from vistune.eval.metrics import (
    mathvista_extract_by_rules,
    mathvista_extraction_prompt,
    mathvista_is_correct,
    mathvista_normalize,
)
from vistune.eval.task import Doc, GenerationSettings, register_task
from vistune.eval.tasks.common import BenchmarkTask, DatasetSource, Row, letter_options

_DECIMALS = {1: "one decimal place", 2: "two decimal places"}
_NUMBER_WORDS = {3: "three", 4: "four", 5: "five", 6: "six"}
#: metadata fields broken down in the aggregate, as upstream does
BREAKDOWN_KEYS = ("language", "source", "category", "task", "context", "grade", "skills")

#: A plain judge hook: receives MathVista's full extraction prompt, returns the extracted answer text.
Judge = Callable[[str], "str | None"]
#: Upstream's extraction model (``mathvista.yaml`` metadata) and request settings.
JUDGE_MODEL = "gpt-4-0613"
JUDGE_MAX_TOKENS = 256


def _is_whole_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value == int(value)
    )


def format_prompt_hint(question_type: str, answer_type: str, precision: float | None) -> str:
    """The ``format-prompt`` instruction line (the prompt the LLaVA-NeXT numbers used, lmms-eval issue #90).

    Upstream only defines float hints for precision 1 and 2; other precisions (absent from testmini) get the
    same sentence with the spelled-out number of decimals.
    """
    if question_type == "multi_choice":
        return "Answer with the option's letter from the given choices directly."
    if answer_type == "integer":
        return "Answer the question using a single integer number."
    if answer_type == "float":
        digits = int(precision) if precision is not None else 0
        places = _DECIMALS.get(digits) or f"{_NUMBER_WORDS.get(digits, str(digits))} decimal places"
        return f"Answer the question using a single floating-point number with {places}."
    if answer_type == "list":
        return "Answer the question using a Python list."
    return ""


@register_task("mathvista_testmini")
class MathVistaTestmini(BenchmarkTask):
    """MathVista testmini (1,000 problems), score ``gpt_eval_score`` in 0–100.

    Prompt (``format-prompt``, zero-shot, no caption/OCR): question (+ `` (Unit: u)``), options as ``A. …``
    lines, then the answer-format hint. Extraction follows upstream's order — empty, exact choice text,
    ``int``/``float`` parse — then vistune's local rules (bare option letter, ``(X)``/``X.``, numeric integer
    answers, list literals; ``local_rules=False`` turns them off). A response no rule can settle is marked
    ``needs_judge``: when :attr:`judge` is set it receives MathVista's extraction prompt (demos + the dataset's
    ``query`` + the response) and returns the extracted text; otherwise — or when the judge fails or returns
    nothing — the extraction is ``""`` exactly as upstream on API failure, which normalises to the
    Levenshtein-nearest (i.e. shortest) choice for multiple choice and to a wrong answer otherwise. The
    aggregate counts ``needs_judge``, ``judged`` and ``judge_fallbacks``.
    """

    name = "mathvista_testmini"
    display_name = "MathVista"
    split = "testmini"
    source = DatasetSource("AI4Math/MathVista", "testmini")
    primary_metric = "gpt_eval_score"
    avg_scale = 1.0  # already 0-100
    generation = GenerationSettings(
        max_new_tokens=1024, temperature=0.0, top_p=1.0, num_beams=1, do_sample=False
    )
    image_aspect_ratio = "original"

    def __init__(self, judge: Any = None, local_rules: bool = True) -> None:
        super().__init__()
        #: LLM answer extractor: a ``vistune.eval.judge`` client or a ``prompt -> text`` callable; ``None`` =
        #: rules + upstream's failure fallback.
        self.judge: Any = judge
        self.local_rules = local_rules

    def row_to_doc(self, row: Row, position: int) -> Doc:
        question_type = row.text("question_type")
        answer_type = row.text("answer_type")
        if question_type not in ("multi_choice", "free_form"):
            raise row.error("question_type", f"expected 'multi_choice' or 'free_form', got {question_type!r}")
        choices = row.get("choices") or []
        if not isinstance(choices, list | tuple) or not all(isinstance(c, str) for c in choices):
            raise row.error("choices", f"expected a list of strings or null, got {choices!r:.80}")
        if question_type == "multi_choice" and not choices:
            raise row.error("choices", "a multi_choice problem has no choices")
        precision = row.get("precision")
        if answer_type == "float" and not _is_whole_number(precision):
            raise row.error("precision", f"a float answer needs an integer precision, got {precision!r}")
        metadata = row.get("metadata", {})
        if not isinstance(metadata, dict):
            raise row.error("metadata", f"expected an object, got {type(metadata).__name__}")
        image_field = "decoded_image" if row.has("decoded_image") else "image"
        return Doc(
            doc_id=row.text("pid", nonempty=True),
            images=[row.image(image_field)],
            target=row.text("answer"),
            data={
                "question": row.text("question"),
                "unit": row.get("unit", "") or "",
                "choices": list(choices),
                "precision": precision,
                "question_type": question_type,
                "answer_type": answer_type,
                "query": row.text("query"),
                "metadata": {k: metadata[k] for k in BREAKDOWN_KEYS if k in metadata},
            },
        )

    def doc_to_text(self, doc: Doc) -> str:
        d = doc.data
        question = f"{d['question']} (Unit: {d['unit']})" if d["unit"] else d["question"]
        choices = letter_options(d["choices"]) if d["choices"] else ""
        hint = format_prompt_hint(d["question_type"], d["answer_type"], d["precision"])
        return "\n".join(e for e in (question, choices, hint) if e != "").strip()

    def _ask_judge(self, prompt: str) -> tuple[str | None, dict[str, Any]]:
        """Call :attr:`judge`: either a ``JudgeLike`` client from :mod:`vistune.eval.judge` (what the runner
        attaches; the request mirrors upstream: one user message, temperature 0, 256 tokens, ``n=1``) or a
        plain ``prompt -> text`` callable. Failures return ``None`` plus the reason, never raise."""
        judge = self.judge
        try:
            if callable(getattr(judge, "judge", None)):
                from vistune.eval.judge import JudgeRequest

                request = JudgeRequest(
                    messages=[{"role": "user", "content": prompt}],
                    temperature=0.0,
                    max_tokens=JUDGE_MAX_TOKENS,
                    model=JUDGE_MODEL,
                    params={"n": 1},
                )
                result = judge.judge(request)  # type: ignore[union-attr]
                info = {
                    "judge_model": result.model,
                    "judge_prompt_hash": result.prompt_hash,
                    "judge_error": result.error,
                }
                return (result.content if result.ok else None), info
            return judge(prompt), {}  # type: ignore[misc]
        except Exception as exc:  # a judge failure must not abort the run; upstream falls back to ""
            return None, {"judge_error": f"{type(exc).__name__}: {exc}"}

    def score(self, doc: Doc, prediction: str) -> dict[str, Any]:
        d = doc.data
        pred = prediction.strip()
        rule = mathvista_extract_by_rules(
            pred,
            question_type=d["question_type"],
            answer_type=d["answer_type"],
            choices=d["choices"],
            local_rules=self.local_rules,
        )
        needs_judge = rule.text is None
        judged = False
        judge_info: dict[str, Any] = {}
        extraction, method = rule.text, rule.method
        if needs_judge:
            extraction, method = "", "fallback"
            if self.judge is not None:
                reply, judge_info = self._ask_judge(mathvista_extraction_prompt(d["query"], pred))
                if isinstance(reply, str) and reply.strip():
                    extraction, method, judged = reply.strip(), "judge", True
                else:
                    method = "judge_failed"
        normalized = mathvista_normalize(
            extraction,
            choices=d["choices"],
            question_type=d["question_type"],
            answer_type=d["answer_type"],
            precision=d["precision"],
        )
        correct = mathvista_is_correct(normalized, doc.target)
        return self._record(
            doc,
            prediction,
            extraction=extraction,
            extraction_method=method,
            needs_judge=needs_judge,
            judged=judged,
            **judge_info,
            parsed=normalized,
            target=doc.target,
            question_type=d["question_type"],
            answer_type=d["answer_type"],
            metadata=d["metadata"],
            score=1.0 if correct else 0.0,
        )

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        if not records:
            raise ValueError("cannot aggregate an empty list of records")
        correct = sum(float(r["score"]) for r in records)
        needs = [r for r in records if r["needs_judge"]]
        out: dict[str, float] = {
            "gpt_eval_score": round(100 * correct / len(records), 2),
            "n": len(records),
            "needs_judge": len(needs),
            "judged": sum(1 for r in needs if r["judged"]),
            "judge_fallbacks": sum(1 for r in needs if not r["judged"]),
        }
        groups: dict[str, list[float]] = defaultdict(list)
        for r in records:
            groups[f"question_type={r['question_type']}"].append(float(r["score"]))
            groups[f"answer_type={r['answer_type']}"].append(float(r["score"]))
            for key, value in r.get("metadata", {}).items():
                for item in value if isinstance(value, list) else [value]:
                    groups[f"{key}={item}"].append(float(r["score"]))
        for name, scores in sorted(groups.items()):
            out[f"gpt_eval_score/{name}"] = round(100 * sum(scores) / len(scores), 2)
        return out
