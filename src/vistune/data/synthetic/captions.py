"""Captions of scenes: generation (alt-text, detailed, noisy web) and the judge-free caption metric.

The metric is the Image-DC analogue of the synthetic world. A caption is parsed back into *mentions*
``(color, shape, position)`` (any of them may be unstated) and matched one-to-one to the scene's objects
by an exact maximum-agreement assignment. Each object contributes one fact per scored attribute; a mention
contributes the facts it states. With ``matched`` = agreeing facts under the best assignment::

    recall    = matched / (attributes per object * number of objects)
    precision = matched / facts stated by the caption
    f1        = harmonic mean (0 when either is 0)

So a perfect caption scores 1.0, an omitted object lowers recall, a hallucinated object or a wrong colour
lowers precision, and sentence order or phrasing does not matter.

Parsing rules (documented because paraphrases depend on them):

* Text is lower-cased; hyphens become spaces. Clauses are split at ``. , ; : ! ?``, newlines and the
  conjunctions ``and / with / while / whereas / but``.
* Every shape word (singular, plural or synonym: ``box`` = square, ``rhombus`` = diamond, ``disc`` = circle)
  or generic noun (``object``, ``shape``, ``thing``, ``item``, ``figure``) starts a mention.
* Colour: the last colour word between the previous mention and this one; for the last mention of a
  clause, else the first colour word after it (``the circle at the top is red``). A colour word followed
  by ``background`` is never an object colour.
* Position: absolute position words after the mention (up to the next mention), or, for the first mention
  of a clause only, before it (``at the top left there is ...``). ``top/upper`` and ``bottom/lower`` give
  the row, ``left/right`` the column, ``center/centre/middle/central`` fill what is missing. A position
  word followed by ``of`` + something other than the image (``to the left of the square``) is a relation,
  not a position, and is ignored.
* Count: a number word or digit before the mention (``two red circles``) repeats it (at most
  ``MAX_COUNT`` times); ``no``, ``not``, ``zero``, ``without``, ``none`` before it drop it; a plural
  without a number counts as two.
* A clause without a mention (``..., which is red``) completes the unset attributes of the previous mention.
* Mentions that state no scored fact (``the image shows three objects``) are dropped.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from vistune.data.synthetic.base import (
    NUMBER_WORDS,
    PROMPT_DETAIL,
    PROMPT_RECAP,
    QA,
    join_words,
    number_word,
)
from vistune.data.synthetic.config import PALETTE, SHAPES, WorldConfig
from vistune.data.synthetic.scenes import POSITIONS, Scene, SceneObject, plural, sample_scene

ATTRIBUTES = ("color", "shape", "position")
#: A stated count is capped here ("1000 circles" counts as 100 mentions, all but 9 unmatched).
MAX_COUNT = 100

#: Short captioning prompts of Stage-1 (LLaVA-style brief-description instructions).
BRIEF_PROMPTS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Summarize the visual content of the image.",
    "Write a short caption for the image.",
)

_CANON_PHRASE = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
_PHRASE_VARIANTS = {
    "top left": ("at the top left", "in the upper left corner", "at the top-left"),
    "top": ("at the top", "at the top center", "in the upper middle"),
    "top right": ("at the top right", "in the upper right corner", "at the top-right"),
    "left": ("on the left", "on the left side", "in the middle left"),
    "center": ("in the center", "in the middle", "in the centre of the image"),
    "right": ("on the right", "on the right side", "in the middle right"),
    "bottom left": ("at the bottom left", "in the lower left corner", "at the bottom-left"),
    "bottom": ("at the bottom", "at the bottom center", "in the lower middle"),
    "bottom right": ("at the bottom right", "in the lower right corner", "at the bottom-right"),
}


@dataclass(frozen=True)
class Fact:
    """A ground-truth object or a parsed mention; ``None`` = not stated."""

    color: str | None
    shape: str | None
    position: str | None

    def stated(self, attributes: Sequence[str] = ATTRIBUTES) -> int:
        return sum(getattr(self, a) is not None for a in attributes)

    def agreement(self, other: Fact, attributes: Sequence[str] = ATTRIBUTES) -> int:
        return sum(getattr(self, a) is not None and getattr(self, a) == getattr(other, a) for a in attributes)


def as_fact(obj: Any) -> Fact:
    """Normalise a :class:`SceneObject`, a fact dict (as stored in eval rows) or a :class:`Fact`."""
    if isinstance(obj, Fact):
        return obj
    if isinstance(obj, SceneObject):
        return Fact(obj.color, obj.shape, obj.position)
    if isinstance(obj, dict):
        missing = [a for a in ATTRIBUTES if a not in obj]
        if missing:
            raise ValueError(f"object fact {obj!r} lacks field(s) {missing}")
        return Fact(obj["color"], obj["shape"], obj["position"])
    raise TypeError(f"cannot read an object fact from {type(obj).__name__}: {obj!r}")


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe_alt(objects: Iterable[SceneObject | Fact]) -> str:
    """Short alt-text: colour + shape groups in reading order, e.g. ``"two red circles and a blue square"``."""
    groups: dict[tuple[str, str], int] = {}
    for o in objects:
        f = as_fact(o)
        groups[(f.color, f.shape)] = groups.get((f.color, f.shape), 0) + 1
    parts = []
    for (color, shape), n in groups.items():
        parts.append(
            f"{_article(color)} {color} {shape}" if n == 1 else f"{number_word(n)} {color} {plural(shape)}"
        )
    return join_words(parts)


def describe_detailed(
    objects: Sequence[SceneObject | Fact], background: str, rng: random.Random | None = None
) -> str:
    """A detailed description stating every object's colour, shape and position.

    Without ``rng`` the canonical re-caption style is produced (used for targets and Stage-1.5); with
    ``rng`` sentence templates and position phrases are paraphrased (Stage-2 variety). Both parse back to
    exactly the scene's facts.
    """
    facts = [as_fact(o) for o in objects]
    n = len(facts)
    noun = "object" if n == 1 else "objects"
    if rng is None:
        sentences = [f"The image shows {number_word(n)} {noun} on a {background} background."]
        sentences += [
            f"There is {_article(f.color)} {f.color} {f.shape} {_CANON_PHRASE[f.position]}." for f in facts
        ]
        return " ".join(sentences)
    intro = rng.choice(
        (
            f"The image shows {number_word(n)} {noun} on a {background} background.",
            f"There {'is' if n == 1 else 'are'} {number_word(n)} {noun} on a {background} background.",
            f"This picture contains {number_word(n)} {noun}.",
        )
    )
    sentences = [intro]
    for f in facts:
        phrase = rng.choice(_PHRASE_VARIANTS[f.position])
        art = _article(f.color)
        template = rng.randrange(5)
        if template == 0:
            s = f"There is {art} {f.color} {f.shape} {phrase}."
        elif template == 1:
            s = f"{art.capitalize()} {f.color} {f.shape} is {phrase}."
        elif template == 2:
            s = f"{phrase[0].upper()}{phrase[1:]}, there is {art} {f.color} {f.shape}."
        elif template == 3:
            s = f"The {f.shape} {phrase} is {f.color}."
        else:
            s = f"{art.capitalize()} {f.color} {f.shape} can be seen {phrase}."
        sentences.append(s)
    return " ".join(sentences)


def web_caption(scene: Scene, rng: random.Random, cfg: WorldConfig) -> tuple[str, bool, str]:
    """A web-style alt-text that is wrong with probability ``cfg.web_noise``.

    Returns ``(caption, correct, kind)`` with ``kind`` one of ``clean``, ``mismatch`` (the caption of another
    scene), ``swap`` (one object's colour or shape changed) or ``hallucinate`` (an absent object added).
    """
    if rng.random() >= cfg.web_noise:
        return describe_alt(scene.objects), True, "clean"
    kind = rng.choice(("mismatch", "swap", "hallucinate"))
    truth = describe_alt(scene.objects)
    objs = list(scene.objects)
    if kind == "mismatch":
        for _ in range(100):
            text = describe_alt(sample_scene(rng, cfg).objects)
            if text != truth:
                return text, False, kind
        raise RuntimeError("web_caption: could not draw a mismatching scene (vocabulary too small?)")
    i = rng.randrange(len(objs))
    o = objs[i]
    if kind == "swap":
        if rng.random() < 0.5:
            objs[i] = replace(o, color=rng.choice([c for c in cfg.colors if c != o.color]))
        else:
            objs[i] = replace(o, shape=rng.choice([s for s in cfg.shapes if s != o.shape]))
    else:
        present = {(p.color, p.shape) for p in objs}
        absent = [(c, s) for c in cfg.colors for s in cfg.shapes if (c, s) not in present]
        c, s = rng.choice(absent)
        objs.insert(rng.randrange(len(objs) + 1), replace(o, color=c, shape=s))
    return describe_alt(objs), False, kind


def web_quality(caption: str, scene: Scene, rng: random.Random, cfg: WorldConfig) -> float:
    """A CLIP-score-like quality in [0, 1]: colour/shape caption F1 plus uniform noise of ``web_quality_noise``."""
    f1 = score_caption(caption, scene.objects, attributes=("color", "shape")).f1
    noise = rng.uniform(-cfg.web_quality_noise, cfg.web_quality_noise) if cfg.web_quality_noise else 0.0
    return round(min(1.0, max(0.0, f1 + noise)), 4)


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------
_COLOR_WORDS = {c: c for c in PALETTE} | {"grey": "gray", "violet": "purple"}
_SHAPE_WORDS = {s: s for s in SHAPES} | {plural(s): s for s in SHAPES}
_SHAPE_WORDS |= {
    "box": "square",
    "boxes": "square",
    "rhombus": "diamond",
    "rhombi": "diamond",
    "rhombuses": "diamond",
    "disc": "circle",
    "discs": "circle",
    "disk": "circle",
    "disks": "circle",
}
_PLURAL_SHAPES = {plural(s) for s in SHAPES} | {"boxes", "rhombi", "rhombuses", "discs", "disks"}
_GENERIC = {"object", "shape", "thing", "item", "figure"}
_GENERIC_PLURAL = {"objects", "shapes", "things", "items", "figures"}
_NUMBERS = {w: i for i, w in enumerate(NUMBER_WORDS)} | {"a": 1, "an": 1, "single": 1, "another": 1}
_ADJECTIVES = {"small", "large", "big", "tiny", "bright", "dark", "light", "solid", "filled", "other", "more"}
_NEGATIONS = {"no", "not", "zero", "without", "none", "nor"}
_ROW_WORDS = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
_COL_WORDS = {"left": "left", "right": "right"}
_CENTER_WORDS = {"center", "centre", "middle", "central"}
_FILLERS = {"side", "hand", "corner", "part", "half", "edge", "area", "region", "portion", "section", "most"}
_FRAME = {"image", "picture", "scene", "canvas", "frame", "photo", "photograph"}
_DETERMINERS = {"the", "a", "an", "this", "that"}
_SPLIT_WORDS = {"and", "with", "while", "whereas", "but"}
_TOKEN_RE = re.compile(r"[a-z]+|\d+|[.,;:!?\n]")
_ROW_INDEX = {"top": 0, None: 1, "bottom": 2}
_COL_INDEX = {"left": 0, None: 1, "right": 2}


def _sentences(text: str) -> list[list[list[str]]]:
    """Sentences (split at ``. ; ! ?`` and newlines) of clauses (split at ``, :`` and conjunctions)."""
    tokens = _TOKEN_RE.findall(text.lower().replace("-", " "))
    sentences: list[list[list[str]]] = [[[]]]
    for t in tokens:
        if t in ".;!?\n":
            sentences.append([[]])
        elif t in ",:" or t in _SPLIT_WORDS:
            sentences[-1].append([])
        else:
            sentences[-1][-1].append(t)
    return [[c for c in sent if c] for sent in sentences if any(sent)]


def _is_relational(tokens: list[str], j: int) -> bool:
    k = j + 1
    while k < len(tokens) and tokens[k] in _FILLERS:
        k += 1
    if k >= len(tokens) or tokens[k] != "of":
        return False
    k += 1
    while k < len(tokens) and tokens[k] in _DETERMINERS:
        k += 1
    return not (k < len(tokens) and tokens[k] in _FRAME)


def _position(tokens: list[str], start: int, end: int) -> str | None:
    row = col = None
    centre = False
    for j in range(start, end):
        t = tokens[j]
        if t not in _ROW_WORDS and t not in _COL_WORDS and t not in _CENTER_WORDS:
            continue
        if _is_relational(tokens, j):
            continue
        if t in _ROW_WORDS and row is None:
            row = _ROW_WORDS[t]
        elif t in _COL_WORDS and col is None:
            col = _COL_WORDS[t]
        elif t in _CENTER_WORDS:
            centre = True
    if row is None and col is None and not centre:
        return None
    return POSITIONS[_ROW_INDEX[row]][_COL_INDEX[col]]


def _colors(tokens: list[str], start: int, end: int) -> list[str]:
    return [
        _COLOR_WORDS[tokens[j]]
        for j in range(start, end)
        if tokens[j] in _COLOR_WORDS and not (j + 1 < len(tokens) and tokens[j + 1] == "background")
    ]


def _count(tokens: list[str], start: int, idx: int, is_plural: bool) -> int:
    if any(tokens[j] in _NEGATIONS for j in range(start, idx)):
        return 0
    for j in range(idx - 1, start - 1, -1):
        t = tokens[j]
        if t in _NUMBERS:
            return _NUMBERS[t]
        if t.isdigit():
            return int(t)
        if t in _COLOR_WORDS or t in _ADJECTIVES:
            continue
        break
    return 2 if is_plural else 1


def _complete(m: Fact, color: str | None, position: str | None) -> Fact:
    return replace(
        m,
        color=m.color if m.color is not None else color,
        position=m.position if m.position is not None else position,
    )


def parse_caption(text: str) -> list[Fact]:
    """Parse a caption into mentions (one :class:`Fact` per mentioned object; see module rules)."""
    mentions: list[Fact] = []
    for sentence in _sentences(text):
        first_in_sentence = len(mentions)
        # fronted attributes of the next mention: "At the top, there is ..."
        pending: tuple[str | None, str | None] = (None, None)
        for tokens in sentence:
            idxs = [
                j for j, t in enumerate(tokens) if t in _SHAPE_WORDS or t in _GENERIC or t in _GENERIC_PLURAL
            ]
            if not idxs:
                cols = _colors(tokens, 0, len(tokens))
                color = cols[0] if cols else None
                pos = _position(tokens, 0, len(tokens))
                if len(mentions) > first_in_sentence:
                    # "..., which is red": complete every copy of the previous mention group
                    last = mentions[-1]
                    n = 1
                    while len(mentions) - n > first_in_sentence and mentions[-1 - n] == last:
                        n += 1
                    mentions[-n:] = [_complete(last, color, pos)] * n
                else:
                    pending = (pending[0] or color, pending[1] or pos)
                continue
            for k, i in enumerate(idxs):
                prev_end = idxs[k - 1] + 1 if k > 0 else 0
                next_start = idxs[k + 1] if k + 1 < len(idxs) else len(tokens)
                last_in_clause = k + 1 == len(idxs)
                t = tokens[i]
                shape = _SHAPE_WORDS.get(t)
                is_plural = t in _PLURAL_SHAPES or t in _GENERIC_PLURAL
                pre = _colors(tokens, prev_end, i)
                color = pre[-1] if pre else None
                if color is None and last_in_clause:
                    post = _colors(tokens, i + 1, next_start)
                    color = post[0] if post else None
                pos = _position(tokens, i + 1, next_start)
                if pos is None and k == 0:
                    pos = _position(tokens, prev_end, i)
                mention = _complete(Fact(color, shape, pos), *pending)
                pending = (None, None)
                mentions.extend([mention] * min(MAX_COUNT, _count(tokens, prev_end, i, is_plural)))
    return mentions


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaptionScore:
    """Fact-level caption score (see module docstring); ``per_attribute`` holds recall per attribute."""

    precision: float
    recall: float
    f1: float
    matched: int
    stated: int
    expected: int
    object_precision: float
    object_recall: float
    n_mentions: int
    n_objects: int
    per_attribute: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "matched": self.matched,
            "stated": self.stated,
            "expected": self.expected,
            "object_precision": self.object_precision,
            "object_recall": self.object_recall,
            "n_mentions": self.n_mentions,
            "n_objects": self.n_objects,
            **{f"{a}_recall": v for a, v in self.per_attribute.items()},
        }


def _best_assignment(mentions: list[Fact], truth: list[Fact], attributes: Sequence[str]) -> list[int]:
    """``match[m]`` = index of the object assigned to mention m (or -1), maximising total agreement.

    Exact dynamic programme over subsets of ground-truth objects (scenes hold at most 9 objects).
    Mentions that agree with no object, and copies of a mention beyond the number of objects, cannot change
    the optimum and are skipped, so long or repetitive captions stay cheap.
    """
    g = len(truth)
    if g > 16:
        raise ValueError(f"caption scoring supports at most 16 ground-truth objects, got {g}")
    agree = [[m.agreement(o, attributes) for o in truth] for m in mentions]
    # copies of one mention beyond the number of objects can never be matched: skip them (exact)
    copies: dict[Fact, int] = {}
    useful = []
    for i, row in enumerate(agree):
        copies[mentions[i]] = copies.get(mentions[i], 0) + 1
        if any(row) and copies[mentions[i]] <= g:
            useful.append(i)
    neg = -1
    best: dict[int, tuple[int, tuple[tuple[int, int], ...]]] = {0: (0, ())}
    for mi in useful:
        nxt = dict(best)
        for mask, (score, pairs) in best.items():
            for j in range(g):
                if mask >> j & 1 or not agree[mi][j]:
                    continue
                nm = mask | 1 << j
                cand = score + agree[mi][j]
                if nm not in nxt or nxt[nm][0] < cand:
                    nxt[nm] = (cand, pairs + ((mi, j),))
        best = nxt
    _, pairs = max(best.values(), key=lambda sp: sp[0])
    match = [neg] * len(mentions)
    for mi, j in pairs:
        match[mi] = j
    return match


def score_caption(
    caption: str | Sequence[Fact], objects: Iterable[Any], attributes: Sequence[str] = ATTRIBUTES
) -> CaptionScore:
    """Score a caption (text, or already-parsed mentions) against a scene's objects.

    ``objects`` may be :class:`SceneObject`, fact dicts ``{"color", "shape", "position"}`` or :class:`Fact`.
    ``attributes`` selects the scored facts (alt-text without positions: ``("color", "shape")``).
    """
    bad = [a for a in attributes if a not in ATTRIBUTES]
    if bad or not attributes:
        raise ValueError(f"attributes must be a non-empty subset of {ATTRIBUTES}, got {attributes}")
    truth = [as_fact(o) for o in objects]
    mentions = parse_caption(caption) if isinstance(caption, str) else [as_fact(m) for m in caption]
    mentions = [m for m in mentions if m.stated(attributes) > 0]
    match = _best_assignment(mentions, truth, attributes)
    matched = sum(mentions[i].agreement(truth[j], attributes) for i, j in enumerate(match) if j >= 0)
    stated = sum(m.stated(attributes) for m in mentions)
    expected = len(attributes) * len(truth)
    precision = matched / stated if stated else 0.0
    recall = matched / expected if expected else (1.0 if not mentions else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    if not truth and not mentions:
        precision = recall = f1 = 1.0
    shape_hits = sum(1 for i, j in enumerate(match) if j >= 0 and mentions[i].shape == truth[j].shape)
    with_shape = sum(1 for m in mentions if m.shape is not None)
    per_attr = {
        a: (
            sum(1 for i, j in enumerate(match) if j >= 0 and getattr(mentions[i], a) == getattr(truth[j], a))
            / len(truth)
            if truth
            else 1.0
        )
        for a in attributes
    }
    return CaptionScore(
        precision=precision,
        recall=recall,
        f1=f1,
        matched=matched,
        stated=stated,
        expected=expected,
        object_precision=shape_hits / with_shape if with_shape else 0.0,
        object_recall=shape_hits / len(truth) if truth else 1.0,
        n_mentions=len(mentions),
        n_objects=len(truth),
        per_attribute=per_attr,
    )


# --------------------------------------------------------------------------------------------------
# Family builders
# --------------------------------------------------------------------------------------------------
def build_alt(rng: random.Random, cfg: WorldConfig) -> tuple[Scene, QA]:
    scene = sample_scene(rng, cfg)
    return scene, QA(rng.choice(BRIEF_PROMPTS), describe_alt(scene.objects), "caption")


def build_web(rng: random.Random, cfg: WorldConfig) -> tuple[Scene, QA]:
    scene = sample_scene(rng, cfg)
    prompt = rng.choice(BRIEF_PROMPTS)
    text, correct, kind = web_caption(scene, rng, cfg)
    quality = web_quality(text, scene, rng, cfg)
    return scene, QA(
        prompt, text, "caption", None, {"quality": quality, "caption_correct": correct, "noise": kind}
    )


def build_recap(rng: random.Random, cfg: WorldConfig) -> tuple[Scene, QA]:
    scene = sample_scene(rng, cfg)
    return scene, QA(PROMPT_RECAP, describe_detailed(scene.objects, scene.background), "caption")


def build_caption(rng: random.Random, cfg: WorldConfig) -> tuple[Scene, QA]:
    scene = sample_scene(rng, cfg)
    return scene, QA(PROMPT_DETAIL, describe_detailed(scene.objects, scene.background), "caption")


def build_caption_paraphrased(rng: random.Random, cfg: WorldConfig) -> tuple[Scene, QA]:
    scene = sample_scene(rng, cfg)
    return scene, QA(PROMPT_DETAIL, describe_detailed(scene.objects, scene.background, rng), "caption")
