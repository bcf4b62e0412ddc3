"""LLM-judged benchmark tasks: LLaVA-in-the-Wild, Image detailed caption (EN-100 / CN-200), Video detailed
caption (499), and MathVista's GPT answer extraction.

Judge contract (runner ↔ task)
------------------------------
* A judged task has ``judged = True`` and a ``judge`` attribute, ``None`` until the runner assigns a judge:
  ``task.judge = JudgeClient(...)`` (any object with ``judge(request)`` and ``judge_many(requests)`` returning
  :class:`~vistune.eval.judge.JudgeResult` in request order — see :class:`~vistune.eval.judge.JudgeLike`).
  Scoring without one raises :class:`~vistune.eval.judge.JudgeConfigError`; loading and prompting do not
  need it.
* Each task builds its judge requests with its blog-era default judge model in ``JudgeRequest.model``
  (``judge_default_model``); a judge client configured with a model overrides it.
* ``score(doc, prediction)`` makes one judge call. ``score_many(docs, predictions)`` makes them all through
  ``judge.judge_many`` (concurrent, cached); runners should prefer it for judged tasks. Both return the same
  per-sample records.
* Every record carries ``judge_ok`` (the judge answered *and* its reply parsed), ``judge_failure`` (why not),
  ``judge_model``, ``judge_response_model``, ``judge_prompt_hash`` (hash of the exact messages sent),
  ``judge_review`` (raw reply text) and ``judge_cached``. ``describe()`` adds ``judge_default_model`` and
  ``judge_template_hash`` (hash of the fixed prompt text, sampling parameters and parser variant), so two
  result files can be checked for the same judging protocol.
* **Failed judgements are counted and excluded** from every average (metric ``n_judge_failed``; ``n_scored``
  counts the rest). This deliberately differs from lmms-eval, which keeps ``[-1, -1]`` pairs (LLaVA-W) or
  scores 0 (Image/Video-DC). A metric with nothing left to average is ``nan``.

Datasets
--------
Loading goes through the shared reader in :mod:`vistune.eval.tasks.common` (``BenchmarkTask``): the local copy
of the published hub dataset is found via the task's ``VISTUNE_DATA_<TASK>`` variable or under ``data_dir``
(``<task name>``, ``<owner>/<name>``, ``<name>``, ...), parquet (with pyarrow) or JSON/JSONL rows are read and
validated before the first document is yielded, and images are decoded lazily. Every malformed row is a
:class:`~vistune.eval.tasks.common.DatasetFormatError` naming the file, row and field. Video-DC additionally
locates each video file next to the dataset and decodes frames with PyAV on first access.
"""

from __future__ import annotations

import ast
import base64
import functools
import io
import math
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vistune.eval.judge import (
    JudgeConfigError,
    JudgeFailedError,
    JudgeLike,
    JudgeRequest,
    JudgeResult,
    canonical_json,
    sha256_text,
)
from vistune.eval.task import Doc, GenerationSettings, register_task
from vistune.eval.tasks.common import BenchmarkTask, DatasetFormatError, DatasetSource, Row

__all__ = [
    "JudgeParseError",
    "JudgedTask",
    "LlavaInTheWild",
    "ImageDetailCaption",
    "Dc100En",
    "Dc200Cn",
    "VideoDetailCaption",
    "parse_llava_score_pair",
    "parse_final_score",
    "parse_detail_score",
    "frame_indices",
    "sample_video_frames",
    "mathvista_extraction_prompt",
    "mathvista_judge_extract",
]


class JudgeParseError(ValueError):
    """The judge answered but its reply does not follow the requested format."""


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def _image_data_uri(image: Any) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------------------
# Reply parsers (each raises JudgeParseError; pure functions, property-tested)
# ---------------------------------------------------------------------------------------------------------


def parse_llava_score_pair(review: str) -> tuple[float, float]:
    """LLaVA-W score line, blog-era (lmms-eval v0.2.0) rule.

    The reply is stripped; its first line has every ``,`` replaced by a space and is split on single spaces;
    it must give exactly two tokens, both numbers → ``(reference score, model score)``. So ``"8 9"`` and
    ``"8,9"`` parse, while ``"8, 9"`` (three tokens after the replacement) and ``"Scores: 8 9"`` do not —
    the reference behaves the same. Non-finite numbers are rejected.
    """
    first = review.strip().split("\n")[0]
    tokens = first.replace(",", " ").split(" ")
    if len(tokens) != 2:
        raise JudgeParseError(f"score line must hold exactly two space-separated numbers, got {first!r}")
    try:
        ref, model = float(tokens[0]), float(tokens[1])
    except ValueError:
        raise JudgeParseError(f"score line is not two numbers: {first!r}") from None
    if not (math.isfinite(ref) and math.isfinite(model)):
        raise JudgeParseError(f"score line has a non-finite number: {first!r}")
    return ref, model


_FINAL_SCORE = re.compile(r"Final Score: (\d+)")


def parse_final_score(review: str, max_score: int = 100) -> int:
    """Image-DC rule: the first ``Final Score: <digits>`` anywhere in the reply; must lie in 0..max_score."""
    match = _FINAL_SCORE.search(review)
    if match is None:
        raise JudgeParseError("no 'Final Score: <number>' in the judge reply")
    score = int(match.group(1))
    if score > max_score:
        raise JudgeParseError(f"final score {score} is outside 0..{max_score}")
    return score


def parse_detail_score(review: str, cast: str = "float", max_score: float = 5.0) -> float:
    """Video-DC rule: the reply is a Python dict literal with a numeric ``'score'`` in 0..max_score.

    ``cast="float"`` keeps the value (lmms-eval at the blog date, commit 73b6d4e); ``cast="int"`` truncates it
    toward zero like lmms-eval v0.2.0 (4.8 → 4). A reply that is not a dict literal, lacks ``'score'`` or
    holds a non-number fails (the reference scored such replies 0).
    """
    if cast not in ("float", "int"):
        raise ValueError(f"cast must be 'float' or 'int', got {cast!r}")
    try:
        value = ast.literal_eval(review.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise JudgeParseError(f"reply is not a Python dict literal: {review[:120]!r}") from None
    if not isinstance(value, dict):
        raise JudgeParseError(f"reply is a {type(value).__name__}, not a dict: {review[:120]!r}")
    if "score" not in value:
        raise JudgeParseError(f"reply dict has no 'score' key: {review[:120]!r}")
    raw = value["score"]
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise JudgeParseError(f"'score' is {type(raw).__name__}, not a number: {review[:120]!r}")
    score = float(int(raw)) if cast == "int" else float(raw)
    if not (math.isfinite(score) and 0.0 <= score <= max_score):
        raise JudgeParseError(f"'score' {raw!r} is outside 0..{max_score:g}")
    return score


# ---------------------------------------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


class JudgedTask(BenchmarkTask):
    """Common machinery: judge access, batched scoring, uniform judge fields in records, failure counting.

    Subclasses set ``source`` and implement ``row_to_doc`` / ``doc_to_text`` (see ``BenchmarkTask``), plus
    :meth:`judge_protocol`, :meth:`judge_request` (the request for one sample), :meth:`parse_review` (reply
    text → task fields, raising :class:`JudgeParseError`) and :meth:`empty_fields`.
    """

    judged = True
    judge: JudgeLike | None = None
    judge_default_model: str = ""
    #: score_many sends this many judge requests per judge_many call
    score_chunk_size: int = 64

    def judge_protocol(self) -> dict[str, Any]:
        """Everything fixed about how this task judges (hashed into ``judge_template_hash``)."""
        raise NotImplementedError

    def judge_template_hash(self) -> str:
        return sha256_text(canonical_json(self.judge_protocol()))

    def judge_request(self, doc: Doc, prediction: str) -> JudgeRequest:
        raise NotImplementedError

    def parse_review(self, doc: Doc, review: str) -> dict[str, Any]:
        raise NotImplementedError

    def empty_fields(self, doc: Doc) -> dict[str, Any]:
        """Task fields of a record whose judgement failed (scores set to None, never to 0 or -1)."""
        raise NotImplementedError

    def _require_judge(self) -> JudgeLike:
        if self.judge is None:
            raise JudgeConfigError(
                f"task {self.name!r} is LLM-judged: assign a judge first, e.g. "
                "task.judge = JudgeClient(base_url=..., model=...) (or set VISTUNE_JUDGE_* variables)"
            )
        return self.judge

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["judge_default_model"] = self.judge_default_model
        info["judge_template_hash"] = self.judge_template_hash()
        configured = getattr(self.judge, "model", None) if self.judge is not None else None
        info["judge_model"] = configured or self.judge_default_model
        return info

    def score(self, doc: Doc, prediction: str) -> dict[str, Any]:
        return self.score_many([doc], [prediction])[0]

    def score_many(self, docs: Sequence[Doc], predictions: Sequence[str]) -> list[dict[str, Any]]:
        if len(docs) != len(predictions):
            raise ValueError(f"{len(docs)} docs but {len(predictions)} predictions")
        judge = self._require_judge()
        preds = []
        for doc, pred in zip(docs, predictions, strict=True):
            if not isinstance(pred, str):
                raise TypeError(
                    f"{self.name} doc {doc.doc_id}: prediction must be str, got {type(pred).__name__}"
                )
            preds.append(pred.strip())
        records: list[dict[str, Any]] = []
        step = self.score_chunk_size
        for start in range(0, len(docs), step):  # chunks bound the memory held by request payloads (images)
            chunk_docs, chunk_preds = docs[start : start + step], preds[start : start + step]
            requests = [self.judge_request(d, p) for d, p in zip(chunk_docs, chunk_preds, strict=True)]
            results = judge.judge_many(requests)
            if len(results) != len(requests):
                raise RuntimeError(f"judge returned {len(results)} results for {len(requests)} requests")
            records.extend(
                self._judged_record(d, p, r) for d, p, r in zip(chunk_docs, chunk_preds, results, strict=True)
            )
        return records

    def _judged_record(self, doc: Doc, prediction: str, result: JudgeResult) -> dict[str, Any]:
        record = self._record(
            doc,
            prediction,
            judge_ok=False,
            judge_failure=None,
            judge_model=result.model,
            judge_response_model=result.response_model,
            judge_prompt_hash=result.prompt_hash,
            judge_review=result.content,
            judge_cached=result.cached,
        )
        fields = self.empty_fields(doc)
        if not result.ok:
            record["judge_failure"] = f"judge request failed: {result.error}"
        else:
            try:
                fields = {**fields, **self.parse_review(doc, result.content or "")}
                record["judge_ok"] = True
            except JudgeParseError as exc:
                record["judge_failure"] = f"unparseable judge reply: {exc}"
        record.update(fields)
        return record

    @staticmethod
    def _counts(records: Sequence[dict[str, Any]]) -> dict[str, float]:
        ok = sum(1 for r in records if r.get("judge_ok"))
        return {"n_scored": float(ok), "n_judge_failed": float(len(records) - ok)}


# ---------------------------------------------------------------------------------------------------------
# LLaVA-in-the-Wild
# ---------------------------------------------------------------------------------------------------------

LLAVA_W_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."

#: rule text of ``llava_bench_{conv,detail,complex}`` (identical for the three categories)
LLAVA_W_RULE = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image. For your reference, the "
    "visual content in the image is represented with a few sentences describing the image. \n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall "
    "performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 and "
    "2, respectively. The two scores are separated by a space.\n"
    "In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any "
    "potential bias and ensuring that the order in which the responses were presented does not affect your "
    "judgment."
)

#: user-message layout; Assistant 1 is the GPT-4 reference answer, Assistant 2 the model under test
LLAVA_W_LAYOUT = (
    "[Context]\n{context}\n\n"
    "[Question]\n{question}\n\n"
    "[Assistant 1]\n{reference}\n\n[End of Assistant 1]\n\n"
    "[Assistant 2]\n{answer}\n\n[End of Assistant 2]\n\n"
    "[System]\n{rule}\n\n"
)

LLAVA_W_CATEGORIES = ("conv", "detail", "complex")


@register_task("llava_in_the_wild")
class LlavaInTheWild(JudgedTask):
    """LLaVA-Bench (In-the-Wild): GPT-4 compares the model's answer with a GPT-4 reference answer.

    The judge sees the image only through its reference captions. Per category (and ``all``) the reference
    and model scores are averaged over successfully judged items, each mean rounded to 3 decimals, and the
    relative score ``round(100 · model / reference, 1)`` is reported as ``gpt_eval_llava_<category>``.
    """

    name = "llava_in_the_wild"
    display_name = "LLaVA-W"
    split = "-"
    source = DatasetSource("lmms-lab/llava-bench-in-the-wild", split="train")
    image_aspect_ratio = "original"
    primary_metric = "gpt_eval_llava_all"
    avg_scale = 1.0
    judge_default_model = "gpt-4-0613"
    judge_temperature = 0.2
    judge_max_tokens = 1024
    generation = GenerationSettings(
        max_new_tokens=32768, temperature=0.0, top_p=1.0, num_beams=1, do_sample=False
    )

    def row_to_doc(self, row: Row, position: int) -> Doc:
        raw_caption = row.require("caption", (str, list, tuple))
        caption = (
            "\n".join(row.text_list("caption")) if isinstance(raw_caption, list | tuple) else raw_caption
        )
        category = row.text("category")
        if category not in LLAVA_W_CATEGORIES:
            raise row.error("category", f"must be one of {', '.join(LLAVA_W_CATEGORIES)}, got {category!r}")
        return Doc(
            doc_id=row.text("question_id", nonempty=True),
            images=[row.image("image")],
            target=row.text("gpt_answer"),
            data={
                "question": row.text("question"),
                "caption": caption,
                "category": category,
                "image_id": row.get("image_id"),
            },
        )

    def doc_to_text(self, doc: Doc) -> str:
        return doc.data["question"]

    def judge_protocol(self) -> dict[str, Any]:
        return {
            "system": LLAVA_W_SYSTEM,
            "rule": LLAVA_W_RULE,
            "layout": LLAVA_W_LAYOUT,
            "temperature": self.judge_temperature,
            "max_tokens": self.judge_max_tokens,
            "parser": "first-line-two-numbers/v0.2.0",
        }

    def judge_request(self, doc: Doc, prediction: str) -> JudgeRequest:
        content = LLAVA_W_LAYOUT.format(
            context=doc.data["caption"],
            question=doc.data["question"],
            reference=doc.target,
            answer=prediction,
            rule=LLAVA_W_RULE,
        )
        return JudgeRequest(
            messages=[{"role": "system", "content": LLAVA_W_SYSTEM}, {"role": "user", "content": content}],
            temperature=self.judge_temperature,
            max_tokens=self.judge_max_tokens,
            model=self.judge_default_model,
        )

    def empty_fields(self, doc: Doc) -> dict[str, Any]:
        return {"category": doc.data["category"], "scores": None}

    def parse_review(self, doc: Doc, review: str) -> dict[str, Any]:
        return {"scores": list(parse_llava_score_pair(review))}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for category in ("all", *LLAVA_W_CATEGORIES):
            members = [r for r in records if category == "all" or r.get("category") == category]
            pairs = [r["scores"] for r in members if r.get("judge_ok")]
            if category != "all" and not members:
                continue
            key = f"gpt_eval_llava_{category}"
            if pairs:
                ref = round(_mean([p[0] for p in pairs]), 3)
                model = round(_mean([p[1] for p in pairs]), 3)
                out[key] = round(100.0 * model / ref, 1) if ref != 0 else float("nan")
            else:
                out[key] = float("nan")
            if category != "all":
                out[f"n_judge_failed_{category}"] = float(len(members) - len(pairs))
        out.update(self._counts(records))
        return out


# ---------------------------------------------------------------------------------------------------------
# Image detailed caption (dc100_en / dc200_cn)
# ---------------------------------------------------------------------------------------------------------

#: lmms-eval ``EVALUATION_PROMPT_TEMPLATE_SIMPLE_V1`` (verbatim, typos included; the same English rubric is
#: used for the Chinese set)
IMAGE_DC_RUBRIC = (
    "Text Caption: {caption}\n"
    "From 0 to 100, how much do you rate for this Text Caption in terms of the correct and comprehensive "
    "description of the image?\n"
    "Do not dominant the rating by a single attribute such as recognition correctness, but a overall rating on "
    "the object/scene appearance, position, pose, action, shape, etc., and contents in the background. \n"
    'Do not consider the appropriateness or sensitive descriptors, such as "middle-aged western man", judge '
    "based on if it has correct specifications of the object and scenes in image.\n"
    'Provide a few lines for explanation and the rate number at last after "Final Score:".'
)


class ImageDetailCaption(JudgedTask):
    """Image detailed caption: a vision judge rates the caption 0–100 against the image itself.

    The judge gets one user message: the rubric (with the model's caption) and the image as a base64 PNG
    ``data:`` URI in the current ``{"type": "image_url", "image_url": {"url": ...}}`` form (lmms-eval sent a
    PNG labelled ``image/jpeg`` in the legacy string form). The score is the first ``Final Score: N``;
    ``gpt_eval_avg_score`` is the plain mean over successfully judged items.
    """

    split = "EN-100"
    primary_metric = "gpt_eval_avg_score"
    avg_scale = 1.0
    judge_default_model = "gpt-4-vision-preview"
    judge_temperature = 0.0
    judge_max_tokens = 1024
    generation = GenerationSettings(
        max_new_tokens=1024, temperature=0.0, top_p=1.0, num_beams=1, do_sample=False
    )

    def row_to_doc(self, row: Row, position: int) -> Doc:
        return Doc(
            doc_id=row.text("question_id", nonempty=True),
            images=[row.image("image")],
            target=None,
            data={"question": row.text("question")},
        )

    def doc_to_text(self, doc: Doc) -> str:
        return doc.data["question"]

    def judge_protocol(self) -> dict[str, Any]:
        return {
            "rubric": IMAGE_DC_RUBRIC,
            "image": "png-data-uri/image_url.url",
            "temperature": self.judge_temperature,
            "max_tokens": self.judge_max_tokens,
            "parser": "Final Score: (\\d+), 0..100",
        }

    def judge_request(self, doc: Doc, prediction: str) -> JudgeRequest:
        images = doc.load_images()
        if not images:
            raise DatasetFormatError(f"{self.name} doc {doc.doc_id}: no image to show the judge")
        return JudgeRequest(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": IMAGE_DC_RUBRIC.format(caption=prediction)},
                        {"type": "image_url", "image_url": {"url": _image_data_uri(images[0])}},
                    ],
                }
            ],
            temperature=self.judge_temperature,
            max_tokens=self.judge_max_tokens,
            model=self.judge_default_model,
        )

    def empty_fields(self, doc: Doc) -> dict[str, Any]:
        return {"score": None}

    def parse_review(self, doc: Doc, review: str) -> dict[str, Any]:
        return {"score": parse_final_score(review)}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        scores = [float(r["score"]) for r in records if r.get("judge_ok")]
        return {"gpt_eval_avg_score": _mean(scores), **self._counts(records)}


@register_task("dc100_en")
class Dc100En(ImageDetailCaption):
    name = "dc100_en"
    display_name = "Image-DC (EN-100)"
    split = "EN-100"
    source = DatasetSource("lmms-lab/DC100_EN", split="test")


@register_task("dc200_cn")
class Dc200Cn(ImageDetailCaption):
    name = "dc200_cn"
    display_name = "Image-DC (CN-200)"
    split = "CN-200"
    source = DatasetSource("lmms-lab/DC200_CN", split="test")


# ---------------------------------------------------------------------------------------------------------
# Video detailed caption (video_dc499)
# ---------------------------------------------------------------------------------------------------------

VIDEO_DC_SYSTEM = (
    "You are an intelligent chatbot designed for evaluating the detail orientation of generative outputs for "
    "video-based question-answer pairs. "
    "Your task is to compare the predicted answer with the correct answer and determine its level of detail, "
    "considering both completeness and specificity. Here's how you can accomplish the task:"
    "------"
    "##INSTRUCTIONS: "
    "- Check if the predicted answer covers all major points from the video. The response should not leave out "
    "any key aspects.\n"
    "- Evaluate whether the predicted answer includes specific details rather than just generic points. It "
    "should provide comprehensive information that is tied to specific elements of the video.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Provide a single evaluation score that reflects the level of detail orientation of the prediction, "
    "considering both completeness and specificity."
)

VIDEO_DC_USER = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\n"
    "Correct Answer: {answer}\n"
    "Predicted Answer: {prediction}\n\n"
    "Provide your evaluation only as a detail orientation score where the detail orientation score is an "
    "integer value between 0 and 5, with 5 indicating the highest level of detail orientation. "
    "Please generate the response in the form of a Python dictionary string with keys 'score', where its value "
    "is the detail orientation score in INTEGER, not STRING."
    "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. "
    "For example, your response should look like this: {{'score': 4.8}}."
)

_VIDEO_DIRS = ("Test_Videos", "evaluation/Test_Videos", "videos", ".")
_VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        raise ImportError(
            "video_dc499 decodes videos with PyAV, which is not installed: pip install 'vistune[video]' (or av)"
        ) from None
    return av


def frame_indices(total: int, num: int) -> list[int]:
    """``num`` frame indices spread uniformly over ``total`` frames, first and last included.

    Same rule as ``numpy.linspace(0, total - 1, num, dtype=int)`` (truncation); repeats when ``num > total``.
    """
    import numpy as np

    if total < 1:
        raise ValueError(f"a video needs at least one frame, got {total}")
    if num < 1:
        raise ValueError(f"num frames must be >= 1, got {num}")
    return [int(i) for i in np.linspace(0, total - 1, num, dtype=int)]


def _decode_at(path: Path, wanted: list[int]) -> tuple[dict[int, Any], int]:
    """Decode ``path`` once; return the frames at ``wanted`` indices (as PIL RGB) and the frames seen."""
    av = _import_av()
    targets = set(wanted)
    last = max(wanted)
    picked: dict[int, Any] = {}
    seen = 0
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DatasetFormatError(f"{path}: no video stream")
        for i, frame in enumerate(container.decode(video=0)):
            seen = i + 1
            if i in targets:
                picked[i] = frame.to_image().convert("RGB")
            if i >= last:
                break
    return picked, seen


def sample_video_frames(path: str | Path, num_frames: int) -> list[Any]:
    """Decode ``num_frames`` uniformly spaced frames (see :func:`frame_indices`) as PIL RGB images.

    The container's frame count is used when it reports one; if the stream turns out shorter, or reports none,
    the frames are counted by decoding and the indices recomputed, so a wrong header cannot drop frames.
    """
    path = Path(path)
    av = _import_av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetFormatError(f"{path}: no video stream")
            total = int(container.streams.video[0].frames or 0)
        if total < 1:
            _, total = _decode_at(path, [2**62])
            if total < 1:
                raise DatasetFormatError(f"{path}: video has no decodable frames")
        wanted = frame_indices(total, num_frames)
        picked, seen = _decode_at(path, wanted)
        if len(picked) < len(set(wanted)):  # header over-reported the frame count
            if seen < 1:
                raise DatasetFormatError(f"{path}: video has no decodable frames")
            wanted = frame_indices(seen, num_frames)
            picked, _ = _decode_at(path, wanted)
    except DatasetFormatError:
        raise
    except (getattr(av, "FFmpegError", OSError), OSError, ValueError) as exc:
        raise DatasetFormatError(f"{path}: cannot decode video: {exc}") from None
    return [picked[i] for i in wanted]


class _VideoFrames:
    """Decodes a doc's frames once, on first access, and hands them out one per ``Doc.images`` entry."""

    def __init__(self, path: Path, num_frames: int, where: str) -> None:
        self.path = path
        self.num_frames = num_frames
        self.where = where
        self._frames: list[Any] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # picklable (data-loader workers); decoded frames stay behind
        return {"path": self.path, "num_frames": self.num_frames, "where": self.where}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["num_frames"], state["where"])  # type: ignore[misc]

    def frame(self, i: int) -> Any:
        with self._lock:
            if self._frames is None:
                try:
                    self._frames = sample_video_frames(self.path, self.num_frames)
                except DatasetFormatError as exc:
                    raise DatasetFormatError(f"{self.where}: {exc}") from None
            return self._frames[i]


@register_task("video_dc499")
class VideoDetailCaption(JudgedTask):
    """Video detailed caption (499 ActivityNet videos), judged for *detail orientation* on a 0–5 scale.

    Videos are found as ``<dataset>/{Test_Videos,evaluation/Test_Videos,videos,.}/<video_name><ext>`` (the
    published zips must be extracted first). ``Doc.images`` holds ``num_frames`` lazily decoded, uniformly
    sampled frames (PyAV); the prompt marks them with one ``{"type": "video"}`` entry. The metric
    ``gpt_eval_score`` is the mean 0–5 score; the study's tables show it ×20 (``avg_scale``), e.g. 64.1.
    ``score_cast`` picks the blog-date ``"float"`` parsing or v0.2.0's truncating ``"int"``.
    """

    name = "video_dc499"
    display_name = "Video-DC"
    source = DatasetSource("lmms-lab/VideoDetailDescription", split="test")
    primary_metric = "gpt_eval_score"
    avg_scale = 20.0
    judge_default_model = "gpt-3.5-turbo-0613"
    judge_temperature = 0.0
    judge_max_tokens = 64
    generation = GenerationSettings(
        max_new_tokens=1024, temperature=0.2, top_p=None, num_beams=1, do_sample=True
    )

    def __init__(self, num_frames: int = 32, score_cast: str = "float") -> None:
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if score_cast not in ("float", "int"):
            raise ValueError(f"score_cast must be 'float' or 'int', got {score_cast!r}")
        self.num_frames = num_frames
        self.score_cast = score_cast
        self.split = f"{num_frames} frames"

    def load(self, data_dir: str | Path | None, limit: int | None = None) -> Iterator[Doc]:
        _import_av()  # fail before reading anything if videos cannot be decoded
        return super().load(data_dir, limit)

    def _find_video(self, row: Row, video_name: str) -> Path:
        roots = [row.root] + ([row.file.parent] if row.file.parent != row.root else [])
        for root in roots:
            for sub in _VIDEO_DIRS:
                for suffix in _VIDEO_SUFFIXES:
                    candidate = root / sub / f"{video_name}{suffix}"
                    if candidate.is_file():
                        return candidate
        raise row.error(
            "video_name",
            f"video {video_name!r} not found under {row.root} ({', '.join(_VIDEO_DIRS)} with "
            f"{'/'.join(_VIDEO_SUFFIXES)}); extract the dataset's zip files there",
        )

    def row_to_doc(self, row: Row, position: int) -> Doc:
        video_name = row.text("video_name", nonempty=True)
        question = row.text("question")
        answer = row.text("answer")
        path = self._find_video(row, video_name)
        frames = _VideoFrames(path, self.num_frames, f"{row.where}: field 'video_name'")
        return Doc(
            doc_id=video_name,
            images=[functools.partial(frames.frame, i) for i in range(self.num_frames)],
            target=answer,
            data={"question": question, "video_path": str(path), "modality": "video"},
        )

    def doc_to_text(self, doc: Doc) -> str:
        return doc.data["question"]

    def doc_to_messages(self, doc: Doc) -> list[dict[str, Any]]:
        return [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": doc.data["question"]}]}
        ]

    def judge_protocol(self) -> dict[str, Any]:
        return {
            "system": VIDEO_DC_SYSTEM,
            "user": VIDEO_DC_USER,
            "temperature": self.judge_temperature,
            "max_tokens": self.judge_max_tokens,
            "parser": f"literal_eval['score']/{self.score_cast}, 0..5",
        }

    def judge_request(self, doc: Doc, prediction: str) -> JudgeRequest:
        user = VIDEO_DC_USER.format(question=doc.data["question"], answer=doc.target, prediction=prediction)
        return JudgeRequest(
            messages=[{"role": "system", "content": VIDEO_DC_SYSTEM}, {"role": "user", "content": user}],
            temperature=self.judge_temperature,
            max_tokens=self.judge_max_tokens,
            model=self.judge_default_model,
        )

    def empty_fields(self, doc: Doc) -> dict[str, Any]:
        return {"score": None}

    def parse_review(self, doc: Doc, review: str) -> dict[str, Any]:
        return {"score": parse_detail_score(review, cast=self.score_cast)}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        scores = [float(r["score"]) for r in records if r.get("judge_ok")]
        return {"gpt_eval_score": _mean(scores), **self._counts(records)}


# ---------------------------------------------------------------------------------------------------------
# MathVista GPT answer extraction (fallback hook of the mathvista_testmini task)
# ---------------------------------------------------------------------------------------------------------

#: MathVista's extraction instruction with its five worked demos (answers 14, 0.6, 1.45, [2007, 2008], B)
MATHVISTA_DEMO_PROMPT = (
    "Please read the following example. Then extract the answer from the model response and type it at the end "
    "of the prompt.\n\n"
    "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at "
    "the end.\n"
    "Question: Which number is missing?\n\n"
    "Model response: The number missing in the sequence is 14.\n\n"
    "Extracted answer: 14\n\n"
    "Hint: Please answer the question requiring a floating-point number with one decimal place and provide the "
    "final value, e.g., 1.2, 1.3, 1.4, at the end.\n"
    "Question: What is the fraction of females facing the camera?\n\n"
    "Model response: The fraction of females facing the camera is 0.6, which means that six out of ten females "
    "in the group are facing the camera.\n\n"
    "Extracted answer: 0.6\n\n"
    "Hint: Please answer the question requiring a floating-point number with two decimal places and provide the "
    "final value, e.g., 1.23, 1.34, 1.45, at the end.\n"
    "Question: How much money does Luca need to buy a sour apple candy and a butterscotch candy? (Unit: $)\n\n"
    "Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.\n\n"
    "Extracted answer: 1.45\n\n"
    "Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., "
    "[1, 2, 3], [1.2, 1.3, 1.4], at the end.\n"
    "Question: Between which two years does the line  graph saw its maximum peak?\n\n"
    "Model response: The line graph saw its maximum peak between 2007 and 2008.\n\n"
    "Extracted answer: [2007, 2008]\n\n"
    "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
    "Question: What fraction of the shape is blue?\nChoices:\n(A) 3/11\n(B) 8/11\n(C) 6/11\n(D) 3/5\n\n"
    "Model response: The correct answer is (B) 8/11.\n\n"
    "Extracted answer: B"
)

MATHVISTA_JUDGE_MODEL = "gpt-4-0613"


def mathvista_extraction_prompt(query: str, response: str) -> str:
    """Demos, a blank line, the doc's ``query``, a blank line, the model response, then ``Extracted answer: ``."""
    return f"{MATHVISTA_DEMO_PROMPT}\n\n{query}\n\n{response}\n\nExtracted answer: "


def mathvista_judge_extract(query: str, response: str, judge: JudgeLike) -> str:
    """Ask the judge to extract the final answer from a MathVista response (one user message, temperature 0,
    ``max_tokens`` 256, ``n`` 1, default model gpt-4-0613); returns the stripped extraction.

    Raises :class:`~vistune.eval.judge.JudgeFailedError` when the request fails or the extraction is empty,
    instead of lmms-eval's silent ``""``: the caller decides (and counts) what a failed extraction means.
    """
    request = JudgeRequest(
        messages=[{"role": "user", "content": mathvista_extraction_prompt(query, response)}],
        temperature=0.0,
        max_tokens=256,
        model=MATHVISTA_JUDGE_MODEL,
        params={"n": 1},
    )
    result = judge.judge(request)
    if not result.ok:
        raise JudgeFailedError(result, f"MathVista answer extraction failed: {result.error}")
    extraction = (result.content or "").strip()
    if not extraction:
        raise JudgeFailedError(
            result, "MathVista answer extraction failed: the judge returned an empty answer"
        )
    return extraction
