"""SynDOG-EN (``synthdog_en``): OCR of synthetic documents scored by Donut's nTED accuracy, summed."""

from __future__ import annotations

import json
from typing import Any

from vistune.eval.metrics import synthdog_nted
from vistune.eval.task import Doc, GenerationSettings, register_task
from vistune.eval.tasks.common import BenchmarkTask, DatasetSource, Row

PROMPT = (
    "OCR this image section by section, from top to bottom, and left to right. Do not insert line breaks in the "
    "output text. If a word is split due to a line break in the image, use a space instead."
)


@register_task("synthdog_en")
class SynthDogEN(BenchmarkTask):
    """SynDOG-EN validation (500 images).

    Score per image: ``max(0, 1 − (1 + Lev(pred_lower, gt)) / (1 + len(gt)))`` (see
    :func:`vistune.eval.metrics.synthdog_nted`). The study reports the **sum** over images
    (``tree_edit_distance``, 0–500, e.g. 425.7 = mean 0.851); tables show the sum and ``Avg.`` uses the mean as
    a percentage.
    """

    name = "synthdog_en"
    display_name = "SynDOG"
    split = "EN/TED"
    source = DatasetSource("naver-clova-ix/synthdog-en", "validation")
    primary_metric = "tree_edit_distance"
    generation = GenerationSettings(
        max_new_tokens=1024, temperature=0.0, top_p=1.0, num_beams=1, do_sample=False
    )

    def row_to_doc(self, row: Row, position: int) -> Doc:
        raw = row.require("ground_truth", (str, dict))
        try:
            parsed = json.loads(raw) if isinstance(raw, str) else raw
            text = parsed["gt_parse"]["text_sequence"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise row.error("ground_truth", f"expected JSON with gt_parse.text_sequence ({exc})") from None
        if not isinstance(text, str) or text == "":
            raise row.error("ground_truth", "gt_parse.text_sequence must be a non-empty string")
        return Doc(doc_id=str(position), images=[row.image("image")], target=text, data={})

    def doc_to_text(self, doc: Doc) -> str:
        return PROMPT

    def score(self, doc: Doc, prediction: str) -> dict[str, Any]:
        pred = prediction.strip()
        return self._record(
            doc,
            prediction,
            parsed=pred.lower().strip(),
            target=doc.target,
            score=synthdog_nted(pred, doc.target),
        )

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        mean = self._mean(records)
        return {"tree_edit_distance": mean * len(records), "tree_edit_distance_mean": mean, "n": len(records)}

    def table_value(self, metrics: dict[str, float]) -> float:
        """Tables show the study's sum (0–500 on the full split)."""
        return float(metrics["tree_edit_distance"])

    def avg_value(self, metrics: dict[str, float]) -> float:
        """``Avg.`` needs a percentage: the mean accuracy × 100 (independent of the number of samples)."""
        return 100.0 * float(metrics["tree_edit_distance_mean"])
