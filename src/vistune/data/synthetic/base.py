"""Shared pieces of the synthetic world: prompts, samples, deterministic randomness, the train/eval split.

Determinism: every sample draws from its own ``random.Random`` seeded with the string
``"vistune-world/v1/{seed}/{family}/{split}/{index}"`` (Python hashes string seeds with SHA-512, so the
stream is identical on every machine and Python >= 3.2). Sample ``i`` therefore never depends on how many
samples were generated before it, and a longer run is a prefix-extension of a shorter one.

Train/eval separation is structural, not statistical: every image content (a scene's objects, a
document's text, a chart's bars; never the pixel jitter) has a canonical ``key()``, and a fixed hash of that
key assigns the content to ``eval`` (a ``holdout`` fraction of the content space) or ``train``. Generators
reject candidates from the other side, so no eval image content can ever occur in any training file, for
any seed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from vistune.data.synthetic.config import WorldConfig

#: lmms-eval post-prompts (see the eval-semantics reference) and the study's re-captioning prompt.
PROMPT_SHORT = "Answer the question using a single word or phrase."
PROMPT_MCQ = "Answer with the option's letter from the given choices directly."
PROMPT_CHART = "Answer the question with a single word."
PROMPT_SYNDOG = (
    "OCR this image section by section, from top to bottom, and left to right. Do not insert line breaks "
    "in the output text. If a word is split due to a line break in the image, use a space instead."
)
PROMPT_RECAP = "Please generate detailed descriptions of the given image."
PROMPT_DETAIL = "Describe the image in detail."
IMAGE_TOKEN = "<image>"

SPLITS = ("train", "eval")

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


class Content(Protocol):
    """What an image-bearing sample is about (a scene, a document, a chart)."""

    def key(self) -> str: ...

    def render(self, cfg: WorldConfig) -> Image.Image: ...

    def facts(self) -> dict[str, Any]: ...


@dataclass
class QA:
    """One question/answer turn.

    ``question`` is the full human text (post-prompt included, no ``<image>`` token). ``answer_space`` is the
    number of equally plausible answers a guesser chooses from (chance = 1 / answer_space); ``None`` marks
    open-ended answers (chance 0).
    """

    question: str
    answer: str
    answer_type: str
    answer_space: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorldSample:
    """One generated sample: images, conversation turns, and the ground truth needed to score it."""

    id: str
    family: str
    split: str
    images: list[Image.Image]
    turns: list[QA]
    facts: dict[str, Any] = field(default_factory=dict)
    key: str = ""

    @property
    def target(self) -> str:
        """The answer of the first turn (eval samples have exactly one turn)."""
        return self.turns[0].answer

    def conversations(self) -> list[dict[str, str]]:
        """LLaVA turns; the first human turn starts with ``<image>\\n`` when the sample has an image."""
        conv: list[dict[str, str]] = []
        for i, qa in enumerate(self.turns):
            value = qa.question
            if i == 0 and self.images:
                value = f"{IMAGE_TOKEN}\n{value}"
            conv.append({"from": "human", "value": value})
            conv.append({"from": "gpt", "value": qa.answer})
        return conv

    def to_row(self, image_paths: list[str], eval_task: str | None = None, metric: str | None = None) -> dict:
        """A LLaVA JSON row. Eval rows also carry ``question``, ``answer`` and scoring metadata."""
        if len(image_paths) != len(self.images):
            raise ValueError(f"sample {self.id}: {len(self.images)} images but {len(image_paths)} paths")
        row: dict[str, Any] = {"id": self.id}
        if len(image_paths) == 1:
            row["image"] = image_paths[0]
        elif image_paths:
            row["image"] = list(image_paths)
        row["conversations"] = self.conversations()
        if eval_task is not None:
            qa = self.turns[0]
            row["task"] = eval_task
            row["question"] = qa.question
            row["answer"] = qa.answer
            row["answer_type"] = qa.answer_type
            row["metric"] = metric
            row["answer_space"] = qa.answer_space
            row["meta"] = {**qa.meta, **self.facts}
        return row


def sample_rng(seed: int, family: str, split: str, index: int) -> random.Random:
    """The private random stream of one sample (see module docstring)."""
    return random.Random(f"vistune-world/v1/{seed}/{family}/{split}/{index}")


def content_split(key: str, holdout: float) -> str:
    """``"eval"`` for the ``holdout`` fraction of content keys, ``"train"`` for the rest (seed-independent)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=b"vistune-split").digest()
    u = int.from_bytes(digest, "big") / 2.0**64
    return "eval" if u < holdout else "train"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def join_words(items: list[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def mcq_prompt(question: str, options: list[str]) -> str:
    """AI2D/ScienceQA layout: question, ``A. opt`` lines, then the letter instruction."""
    lines = [f"{chr(ord('A') + i)}. {opt}" for i, opt in enumerate(options)]
    return f"{question}\n" + "\n".join(lines) + f"\n{PROMPT_MCQ}"


def make_mcq(
    rng: random.Random, question: str, correct: str, distractors: list[str], n_options: int, kind: str
) -> QA | None:
    """A multiple-choice turn with the correct option at a uniformly random letter.

    ``distractors`` must not contain ``correct``; returns ``None`` when there are too few of them.
    """
    pool = sorted({d for d in distractors if d != correct})
    if len(pool) < n_options - 1:
        return None
    options = rng.sample(pool, n_options - 1)
    index = rng.randrange(n_options)
    options.insert(index, correct)
    letter = chr(ord("A") + index)
    return QA(
        mcq_prompt(question, options),
        letter,
        "letter",
        n_options,
        {"options": options, "answer_index": index, "answer_text": correct, "kind": kind},
    )
