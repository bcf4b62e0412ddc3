"""The family registry, the sample generator and the eval-task catalogue of the synthetic world.

A *family* turns a private random stream into one image content (scene, document, chart, or nothing
for text-only samples) plus its conversation turns. Families are registered under exact names:

=============  ===========================================================================
``color``      scene, ``What color is the {shape}?`` (VQA short answer)
``count``      scene with a controlled number of one shape, ``How many {shapes} are there?``
``exist``      scene, POPE-style ``Is there a {color} {shape} in the image?`` (yes/no, balanced)
``spatial``    scene, ``Where is the {A} relative to the {B}?`` (left/right/above/below)
``mcq``        scene, AI2D-style multiple choice (letter answer)
``caption``    scene, ``Describe the image in detail.`` -> canonical detailed description
``docvqa``     document, ``What is the {KEY}?`` -> value (ANLS)
``ocr``        document, SynDOG prompt -> transcription (nTED)
``chart``      bar chart, ChartQA-style question (relaxed accuracy)
``alt``        Stage-1: short alt-text caption
``web``        Stage-1: noisy web caption with a ``quality`` score
``recap``      Stage-1.5: detailed re-caption (the study's re-captioning prompt)
``transcribe`` Stage-1.5: document transcription under varied prompts
``chart_data`` Stage-1.5: chart to ``colour value`` list
``text``       Stage-2: text-only question (no image)
``instruct``   Stage-2: mixture of the QA families, 1..max_turns turns per image, some text-only
=============  ===========================================================================

``generate(family, split, n, seed, cfg)`` yields :class:`WorldSample` objects; see ``base`` for the
determinism and train/eval separation rules.
"""

from __future__ import annotations

import random
import string
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from vistune.data.synthetic import captions, charts, documents, scenes
from vistune.data.synthetic.base import (
    PROMPT_CHART,
    PROMPT_DETAIL,
    PROMPT_MCQ,
    PROMPT_SHORT,
    PROMPT_SYNDOG,
    QA,
    WorldSample,
    check_split,
    content_split,
    sample_rng,
)
from vistune.data.synthetic.config import WorldConfig

MAX_DRAWS = 1000


# --------------------------------------------------------------------------------------------------
# Text-only samples
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextItem:
    """Content of a text-only sample (no image)."""

    question: str

    def key(self) -> str:
        return "text|" + self.question

    def facts(self) -> dict[str, Any]:
        return {}


def build_text(rng: random.Random, cfg: WorldConfig) -> tuple[TextItem, QA]:
    """Small closed-vocabulary text questions: digit arithmetic, letter order, word length."""
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        q, ans = f"What is {a} plus {b}?", str(a + b)
    elif kind == 1:
        a, b = sorted((rng.randint(0, 9), rng.randint(0, 9)), reverse=True)
        q, ans = f"What is {a} minus {b}?", str(a - b)
    elif kind == 2:
        i = rng.randrange(25)
        q, ans = f"Which letter comes after {string.ascii_uppercase[i]}?", string.ascii_uppercase[i + 1]
    else:
        w = rng.choice(cfg.doc_keys)
        q, ans = f"How many letters are in the word {w}?", str(len(w))
    return TextItem(q), QA(f"{q}\n{PROMPT_SHORT}", ans, "text", None, {"kind": "text"})


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------
Builder = Callable[[random.Random, WorldConfig], "tuple[Any, QA | list[QA]] | None"]


@dataclass(frozen=True)
class Family:
    name: str
    content: str  # scene | document | chart | text
    build: Builder
    description: str


def _extra_askers(content: str) -> list[Callable[[Any, random.Random, WorldConfig], QA | None]]:
    if content == "scene":
        return [scenes.ask_color, scenes.ask_count, scenes.ask_exist, scenes.ask_spatial, scenes.ask_mcq]
    if content == "document":
        return [documents.ask_docvqa]
    if content == "chart":
        return [charts.ask_chart]
    return []


def build_instruct(rng: random.Random, cfg: WorldConfig) -> tuple[Any, list[QA]] | None:
    """Stage-2 mixture: a weighted family, then extra turns about the same image (never for captions)."""
    if rng.random() < cfg.text_fraction:
        item, qa = build_text(rng, cfg)
        return item, [qa]
    names = sorted(n for n, w in cfg.stage2_mix.items() if w > 0)
    name = rng.choices(names, weights=[cfg.stage2_mix[n] for n in names])[0]
    if name == "caption":
        scene, qa = captions.build_caption_paraphrased(rng, cfg)
        return scene, [qa]
    fam = FAMILIES[name]
    res = fam.build(rng, cfg)
    if res is None:
        return None
    content, first = res
    turns = [first] if isinstance(first, QA) else list(first)
    want = rng.randint(1, cfg.max_turns)
    askers = _extra_askers(fam.content)
    for _ in range(4 * cfg.max_turns):
        if len(turns) >= want:
            break
        asker = rng.choice(askers)
        if asker is documents.ask_docvqa:
            qa = asker(content, rng, cfg, exclude={t.meta.get("key") for t in turns})
        else:
            qa = asker(content, rng, cfg)
        if qa is not None and all(qa.question != t.question for t in turns):
            turns.append(qa)
    return content, turns


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("color", "scene", scenes.build_color, "colour of the unique object of a shape"),
        Family("count", "scene", scenes.build_count, "number of objects of a shape"),
        Family("exist", "scene", scenes.build_exist, "POPE-style object existence (yes/no)"),
        Family("spatial", "scene", scenes.build_spatial, "relation of two objects (left/right/above/below)"),
        Family("mcq", "scene", scenes.build_mcq, "AI2D-style multiple choice about the scene"),
        Family("caption", "scene", captions.build_caption, "detailed description of the scene"),
        Family("docvqa", "document", documents.build_docvqa, "value printed after a key"),
        Family("ocr", "document", documents.build_ocr, "SynDOG-style transcription"),
        Family("chart", "chart", charts.build_chart, "ChartQA-style bar chart question"),
        Family("alt", "scene", captions.build_alt, "Stage-1 short alt-text"),
        Family("web", "scene", captions.build_web, "Stage-1 noisy web caption with quality score"),
        Family("recap", "scene", captions.build_recap, "Stage-1.5 detailed re-caption"),
        Family("transcribe", "document", documents.build_transcribe, "Stage-1.5 document transcription"),
        Family("chart_data", "chart", charts.build_chart_data, "Stage-1.5 chart to data"),
        Family("text", "text", build_text, "text-only question"),
        Family("instruct", "mixed", build_instruct, "Stage-2 mixed instruction data"),
    )
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"unknown synthetic family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def generate(
    family: str,
    split: str = "train",
    n: int = 100,
    seed: int = 0,
    cfg: WorldConfig | None = None,
    start: int = 0,
) -> Iterator[WorldSample]:
    """Yield samples ``start .. start+n-1`` of ``family`` for ``split`` (``"train"`` or ``"eval"``).

    Sample ``i`` depends only on ``(seed, family, split, i, cfg)``. Candidates whose content belongs to the
    other split (see :func:`vistune.data.synthetic.base.content_split`) are redrawn from the same stream.
    """
    cfg = cfg or WorldConfig()
    check_split(split)
    fam = get_family(family)
    if n < 0 or start < 0:
        raise ValueError(f"generate: n and start must be >= 0, got n={n}, start={start}")
    for i in range(start, start + n):
        rng = sample_rng(seed, family, split, i)
        for _ in range(MAX_DRAWS):
            res = fam.build(rng, cfg)
            if res is None:
                continue
            content, turns = res
            if content_split(content.key(), cfg.eval_holdout) == split:
                break
        else:
            raise RuntimeError(
                f"family {family!r}: no {split} sample after {MAX_DRAWS} draws for index {i}; the content "
                f"space of this config is too small for eval_holdout={cfg.eval_holdout}"
            )
        turns = [turns] if isinstance(turns, QA) else list(turns)
        images = [] if isinstance(content, TextItem) else [content.render(cfg)]
        yield WorldSample(
            f"{family}-{split}-{i:06d}", family, split, images, turns, content.facts(), content.key()
        )


# --------------------------------------------------------------------------------------------------
# Eval tasks
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    """An eval task of the world: which family, metric and study benchmark it mirrors.

    Metric names: ``exact_match`` (case-insensitive, punctuation-stripped string equality), ``pope_f1``
    (POPE: exact ``yes``/``no``, F1 of the ``yes`` class), ``anls`` (DocVQA), ``nted`` (SynDOG normalised
    tree-edit-distance accuracy; the world's text is upper case, so compare case-insensitively),
    ``relaxed_accuracy`` (ChartQA, 5 % tolerance on numbers), ``caption_f1``
    (:func:`vistune.data.synthetic.captions.score_caption`, mean F1).
    """

    name: str
    family: str
    metric: str
    answer_type: str
    mirrors: str
    prompt_suffix: str
    description: str


EVAL_TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "synth_color", "color", "exact_match", "word", "VQA (short answer)", PROMPT_SHORT, "object colour"
        ),
        TaskSpec(
            "synth_count", "count", "exact_match", "number", "VQA counting", PROMPT_SHORT, "object count"
        ),
        TaskSpec("synth_exist", "exist", "pope_f1", "yesno", "POPE", PROMPT_SHORT, "object existence"),
        TaskSpec("synth_spatial", "spatial", "exact_match", "word", "VQA spatial", PROMPT_SHORT, "relation"),
        TaskSpec(
            "synth_mcq", "mcq", "exact_match", "letter", "AI2D / ScienceQA-IMG", PROMPT_MCQ, "multiple choice"
        ),
        TaskSpec("synth_docvqa", "docvqa", "anls", "text", "DocVQA", PROMPT_SHORT, "read a document field"),
        TaskSpec("synth_ocr", "ocr", "nted", "text", "SynDOG-EN", PROMPT_SYNDOG, "transcribe a document"),
        TaskSpec("synth_chart", "chart", "relaxed_accuracy", "number", "ChartQA", PROMPT_CHART, "bar charts"),
        TaskSpec(
            "synth_caption", "caption", "caption_f1", "caption", "Image-DC", PROMPT_DETAIL, "detailed caption"
        ),
    )
}


def get_task_spec(name: str) -> TaskSpec:
    if name not in EVAL_TASKS:
        raise KeyError(f"unknown synthetic task {name!r}; known: {', '.join(EVAL_TASKS)}")
    return EVAL_TASKS[name]


def baselines(spec: TaskSpec, samples: Sequence[WorldSample]) -> dict[str, float]:
    """Reference scores of an eval split: ``chance`` and ``majority``.

    ``chance`` is the expected score of a uniform guess over each question's answer space (0 for open
    answers); for ``pope_f1`` it is the F1 of a fair coin's expected counts (precision = share of ``yes``
    targets, recall = 1/2; 0.5 when balanced). ``majority`` is the score of always giving the most frequent
    target: exact-match rate, or for ``pope_f1`` the F1 of always answering ``yes``.
    """
    if not samples:
        return {"chance": 0.0, "majority": 0.0}
    targets = [s.target for s in samples]
    n = len(targets)
    if spec.metric == "pope_f1":
        pos = sum(t == "yes" for t in targets)
        if pos == 0:
            return {"chance": 0.0, "majority": 0.0}
        # fair coin: TP = pos/2, FP = (n-pos)/2, FN = pos/2 -> P = pos/n, R = 1/2
        p, r = pos / n, 0.5
        chance = 2 * p * r / (p + r)
        majority = 2 * p / (p + 1)  # always "yes": P = pos/n, R = 1
        return {"chance": round(chance, 6), "majority": round(majority, 6)}
    spaces = [s.turns[0].answer_space for s in samples]
    chance = sum(1.0 / a for a in spaces if a) / n
    majority = Counter(targets).most_common(1)[0][1] / n
    return {"chance": round(chance, 6), "majority": round(majority, 6)}
