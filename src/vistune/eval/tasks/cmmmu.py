"""CMMMU validation (``cmmmu_val``): the Chinese MMMU, with its multiple-choice, true/false and fill-in parsers."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from vistune.eval.metrics import (
    cmmmu_eval_fill_blank,
    cmmmu_judge_true_false,
    cmmmu_parse_fill_blank,
    cmmmu_parse_multi_choice,
    cmmmu_parse_true_false,
)
from vistune.eval.task import Doc, GenerationSettings, register_task
from vistune.eval.tasks.common import BenchmarkTask, DatasetSource, Row

MULTI_CHOICE, TRUE_FALSE, FILL_BLANK = "选择", "判断", "填空"
INSTRUCTIONS = {
    MULTI_CHOICE: "请回答以下多项选择题，并选出正确选项。这些题目可能包括单选和多选题型。如果所提供的信息不足以确定一个明确的答案，"
    "那么请根据可用的数据和你的判断来选择最可能正确的选项。",
    TRUE_FALSE: "请回答以下判断题，并根据题目描述和所给的信息来判断问题中陈述的对错。如果信息不完整或不足以作出绝对判断，"
    "请运用你的逻辑推理和现有信息来做出最可能的判断。",
    FILL_BLANK: "请回答以下填空题，并根据题目的要求和所提供的信息来给出最恰当的答案。如果信息不足以确切回答，"
    "那么请依据现有的数据和你的推理能力来填写最合理的答案。",
}
_IMAGE_TAG = re.compile(r"<图片 \d+>")
N_IMAGES = 5


@register_task("cmmmu_val")
class CMMMUVal(BenchmarkTask):
    """CMMMU validation (900 questions).

    Prompt: the type's Chinese instruction, a blank line, then ``问题：{q}\\n选项：\\n(A) …\\n…\\n\\n正确答案：\\n``
    (multiple choice; the upstream template adds a newline after the option block) or
    ``问题：{q}\\n正确答案：\\n``. Inline ``<img="{image_k_filename}">`` tags become ``<图片 k>`` and the images
    are attached in order of appearance (repeats included). Scoring: multiple choice → most-frequent letters
    (multi-answer possible); true/false → keyword vote (对/错); fill-in → MMMU-style open parse. Random
    fallbacks are seeded by the document id. Metric ``cmmmu_acc`` = micro accuracy rounded to 3 decimals.
    """

    name = "cmmmu_val"
    display_name = "CMMMU"
    split = "val"
    source = DatasetSource("lmms-lab/CMMMU", "val")
    primary_metric = "cmmmu_acc"
    generation = GenerationSettings(max_new_tokens=16, temperature=0.0, do_sample=False)
    image_aspect_ratio = "original"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed

    def row_to_doc(self, row: Row, position: int) -> Doc:
        question_type = row.text("type")
        if question_type not in INSTRUCTIONS:
            raise row.error("type", f"expected one of {list(INSTRUCTIONS)}, got {question_type!r}")
        options = (
            [str(row.data.get(f"option{i}")) for i in range(1, 5)] if question_type == MULTI_CHOICE else []
        )
        filenames = {i: row.data.get(f"image_{i}_filename") for i in range(1, N_IMAGES + 1)}
        data = {
            "question": row.text("question"),
            "type": question_type,
            "options": options,
            "filenames": {str(k): v for k, v in filenames.items()},
            "subcategory": row.text("subcategory"),
        }
        text = self._text(data)
        fields = [
            tag.strip("<>").replace(" ", "_").replace("图片", "image") for tag in _IMAGE_TAG.findall(text)
        ]
        for name in dict.fromkeys(fields):
            if not row.has(name):
                raise row.error(name, "the prompt refers to this image but the row has no such field")
        return Doc(
            doc_id=row.text("id", nonempty=True),
            images=[row.image(name) for name in fields],
            target=row.text("answer"),
            data=data,
        )

    @staticmethod
    def _text(data: dict[str, Any]) -> str:
        question_type = data["type"]
        if question_type == MULTI_CHOICE:
            options = "".join(f"({chr(ord('A') + i)}) {opt}\n" for i, opt in enumerate(data["options"]))
            body = f"问题：{data['question']}\n选项：\n{options}\n正确答案：\n"
        else:
            body = f"问题：{data['question']}\n正确答案：\n"
        prompt = INSTRUCTIONS[question_type] + "\n\n" + body
        for i in range(1, N_IMAGES + 1):
            prompt = prompt.replace(f'<img="{data["filenames"][str(i)]}">', f"<图片 {i}>")
        return prompt

    def doc_to_text(self, doc: Doc) -> str:
        return self._text(doc.data)

    def score(self, doc: Doc, prediction: str) -> dict[str, Any]:
        pred = prediction.strip()
        question_type = doc.data["type"]
        random_fallback = False
        if question_type == MULTI_CHOICE:
            choice = cmmmu_parse_multi_choice(pred, doc.data["options"], key=doc.doc_id, seed=self.seed)
            parsed: Any = choice.answer
            random_fallback = choice.method == "random"
            correct = choice.answer == doc.target
        elif question_type == TRUE_FALSE:
            parsed = cmmmu_parse_true_false(pred)
            verdict, random_fallback = cmmmu_judge_true_false(parsed, key=doc.doc_id, seed=self.seed)
            parsed = {"key_responses": parsed, "verdict": verdict}
            correct = verdict == doc.target
        else:
            parsed = cmmmu_parse_fill_blank(pred, doc.target)
            correct = cmmmu_eval_fill_blank(doc.target, parsed)
        return self._record(
            doc,
            prediction,
            parsed=parsed,
            random_fallback=random_fallback,
            target=doc.target,
            type=question_type,
            subcategory=doc.data["subcategory"],
            score=1.0 if correct else 0.0,
        )

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        if not records:
            raise ValueError("cannot aggregate an empty list of records")
        by_sub: dict[str, list[float]] = defaultdict(list)
        for r in records:
            by_sub[r["subcategory"]].append(float(r["score"]))
        out: dict[str, float] = {
            "cmmmu_acc": round(sum(float(r["score"]) for r in records) / len(records), 3),
            "n": len(records),
            "random_fallbacks": sum(1 for r in records if r.get("random_fallback")),
        }
        for sub, scores in sorted(by_sub.items()):
            out[f"cmmmu_acc/{sub}"] = round(sum(scores) / len(scores), 3)
        return out
