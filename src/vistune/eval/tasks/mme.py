"""MME (``mme``): paired yes/no questions per image, scored as perception (/2000) and cognition (/800)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vistune.eval.metrics import MME_COGNITION, MME_PERCEPTION, mme_category_scores, mme_parse, mme_summary
from vistune.eval.task import Doc, GenerationSettings, register_task
from vistune.eval.tasks.common import BenchmarkTask, DatasetFormatError, DatasetSource, Row

_CATEGORIES = frozenset(MME_PERCEPTION + MME_COGNITION)


@register_task("mme")
class MME(BenchmarkTask):
    """MME (test: 2,374 questions = 2 per image, 14 categories).

    Prompt: the stripped question with every `` Please answer yes or no.`` removed, then
    ``\\nAnswer the question using a single word or phrase.`` Scoring: the Otter yes/no parser; per image
    ``acc + acc+``; category means summed into perception and cognition. The primary metric is their sum
    (0–2800); the study converts it to accuracy by dividing by 2800 (``avg_scale``).

    ``limit`` counts questions but is rounded up to whole images, so a pair is never split (the aggregation
    needs both answers of an image). Metric keys: ``mme_perception_score``, ``mme_cognition_score``,
    ``mme_total_score``, ``mme_accuracy``, ``mme_category/<name>``, plus ``mme_percetion_score`` — the
    misspelt key lmms-eval v0.2.0 writes — for side-by-side comparison with its result files.
    """

    name = "mme"
    display_name = "MME"
    split = "-"
    source = DatasetSource("lmms-lab/MME", "test")
    primary_metric = "mme_total_score"
    avg_scale = 100.0 / 2800.0
    generation = GenerationSettings(
        max_new_tokens=16, temperature=0.0, top_p=1.0, num_beams=1, do_sample=False
    )
    REMOVED_SENTENCE = " Please answer yes or no."
    POST_PROMPT = "\nAnswer the question using a single word or phrase."

    def load(self, data_dir: str | Path | None, limit: int | None = None) -> Iterator[Doc]:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        groups: dict[tuple[str, str], list[tuple[Row, Doc]]] = defaultdict(list)
        for position, row in enumerate(self.rows(data_dir)):
            doc = self.row_to_doc(row, position)
            groups[(doc.data["category"], doc.data["question_id"])].append((row, doc))
        categories_of: dict[str, set[str]] = defaultdict(set)
        for category, image_id in groups:
            categories_of[image_id].add(category)
        for (category, image_id), members in groups.items():
            if len(members) != 2:
                where = "; ".join(r.where for r, _ in members)
                raise DatasetFormatError(
                    f"MME image {image_id!r} (category {category!r}) has {len(members)} question(s) instead of "
                    f"a yes/no pair: {where}"
                )
            # the image id names the document; prefixed by the category only if two categories share it
            prefix = f"{category}/" if len(categories_of[image_id]) > 1 else ""
            for k, (_, doc) in enumerate(members):
                doc.doc_id = f"{prefix}{image_id}#{k}"
        selected: set[tuple[str, str]] = set()
        count = 0
        for key, members in groups.items():  # first-appearance order of images
            if limit is not None and count >= limit:
                break
            selected.add(key)
            count += len(members)
        all_docs = sorted(
            ((doc.data["position"], key, doc) for key, members in groups.items() for _, doc in members),
            key=lambda item: item[0],
        )
        ordered = [doc for _, key, doc in all_docs if key in selected]
        return iter(ordered)

    def row_to_doc(self, row: Row, position: int) -> Doc:
        answer = row.text("answer").lower().strip().replace(".", "")
        if answer not in ("yes", "no"):
            raise row.error("answer", f"MME answers must be Yes/No, got {row.data['answer']!r}")
        category = row.text("category")
        if category not in _CATEGORIES:
            raise row.error(
                "category", f"unknown MME category {category!r}; expected one of {sorted(_CATEGORIES)}"
            )
        return Doc(
            doc_id=str(position),
            images=[row.image("image")],
            target=answer,
            data={
                "question": row.text("question"),
                "question_id": row.text("question_id", nonempty=True),
                "category": category,
                "position": position,
            },
        )

    def doc_to_text(self, doc: Doc) -> str:
        question = doc.data["question"].strip().replace(self.REMOVED_SENTENCE, "")
        return f"{question}{self.POST_PROMPT}"

    def score(self, doc: Doc, prediction: str) -> dict[str, Any]:
        parsed = mme_parse(prediction.strip())
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
        if not records:
            raise ValueError("cannot aggregate an empty list of records")
        categories = mme_category_scores((r["category"], r["question_id"], r["score"]) for r in records)
        out: dict[str, float] = dict(mme_summary(categories))
        out["mme_percetion_score"] = out["mme_perception_score"]
        out.update({f"mme_category/{k}": v for k, v in sorted(categories.items())})
        out["n"] = len(records)
        return out
