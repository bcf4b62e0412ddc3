"""Benchmark metrics with the semantics of the lmms-eval release the study used (v0.2.0, "blog era").

Every function here is pure (no I/O, no global state) and reproduces one published scoring rule, including
its quirks, because users compare vistune numbers with published ones. Where upstream relied on a global
random generator (MMMU/CMMMU fallbacks), the choice is instead seeded by the document id, so sharding or
reordering documents cannot change a score. Deviations from upstream are listed in the docstring of the
function concerned.

Conventions: predictions are the raw generated strings; the harness strips surrounding whitespace before
scoring (the task modules do that), and functions below document any further normalisation they apply.
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
import string
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T")

__all__ = [
    "MATHVISTA_DEMO_PROMPT",
    "MME_COGNITION",
    "MME_PERCEPTION",
    "OCRBENCH_CATEGORIES",
    "OCRBENCH_RECOGNITION",
    "ChoiceParse",
    "Extraction",
    "anls",
    "cmmmu_eval_fill_blank",
    "cmmmu_judge_true_false",
    "cmmmu_normalize_str",
    "cmmmu_parse_fill_blank",
    "cmmmu_parse_multi_choice",
    "cmmmu_parse_true_false",
    "exact_match",
    "leading_option_letter",
    "levenshtein",
    "levenshtein_reference",
    "mathvista_extract_by_rules",
    "mathvista_extraction_prompt",
    "mathvista_is_correct",
    "mathvista_normalize",
    "mme_category_scores",
    "mme_parse",
    "mme_summary",
    "mmmu_eval_multi_choice",
    "mmmu_eval_open",
    "mmmu_normalize_str",
    "mmmu_parse_multi_choice",
    "mmmu_parse_open",
    "ocrbench_match",
    "ocrbench_summary",
    "pope_metrics",
    "pope_parse",
    "relaxed_correctness",
    "scienceqa_match",
    "seeded_choice",
    "synthdog_nted",
    "vqa_accuracy",
    "vqa_normalize",
]


# ----------------------------------------------------------------------------------------------------------
# Edit distance
# ----------------------------------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Character edit distance: insertions, deletions and substitutions each cost 1.

    Uses Hyyrö's bit-parallel formulation of Myers' algorithm with Python integers as bit vectors: one pass
    over the longer string with a handful of big-integer operations per character, so SynDOG-sized texts
    (~1,000 characters) cost milliseconds. :func:`levenshtein_reference` is the textbook dynamic programme the
    tests compare it against.
    """
    if a == b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, ch in enumerate(b):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    full = (1 << m) - 1
    high = 1 << (m - 1)
    pv, mv, dist = full, 0, m
    for ch in a:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | ~(xh | pv)
        mh = pv & xh
        if ph & high:
            dist += 1
        elif mh & high:
            dist -= 1
        # Global alignment: the top row grows by one per column, hence the carried-in 1.
        ph = ((ph << 1) | 1) & full
        mh = (mh << 1) & full
        pv = (mh | ~(xv | ph)) & full
        mv = ph & xv
    return dist


def levenshtein_reference(a: str, b: str) -> int:
    """Plain O(len(a)·len(b)) dynamic programme; the specification :func:`levenshtein` is tested against."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def seeded_choice(options: Sequence[T], key: str, seed: int = 0) -> T:
    """Pick one of ``options`` as a pure function of ``(seed, key)``.

    Upstream draws MMMU/CMMMU fallbacks from a process-global ``random`` state, so a score depends on the order
    and sharding of documents. Keying the choice by the document id (SHA-256 of ``"{seed}:{key}"``) keeps the
    "random guess" semantics while making every document's guess reproducible in isolation.
    """
    if not options:
        raise ValueError("seeded_choice needs at least one option")
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return options[int.from_bytes(digest[:8], "big") % len(options)]


# ----------------------------------------------------------------------------------------------------------
# Exact match (AI2D) and the ScienceQA letter rule
# ----------------------------------------------------------------------------------------------------------

_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)
_LEADING_LETTER = re.compile(r"^\s*([A-Z])\.")


def exact_match(
    prediction: str, target: str, *, ignore_case: bool = True, ignore_punctuation: bool = True
) -> float:
    """1.0 when the strings are equal after optional lower-casing and deletion of ``string.punctuation``.

    This is HF ``evaluate``'s ``exact_match`` as configured by lmms-eval's AI2D (``ignore_case``,
    ``ignore_punctuation``): no whitespace trimming beyond what the harness did, so ``"(A)"`` and ``"a."``
    match ``"A"`` but ``"The answer is A"`` does not.
    """
    if ignore_case:
        prediction, target = prediction.lower(), target.lower()
    if ignore_punctuation:
        prediction = prediction.translate(_PUNCTUATION_TABLE)
        target = target.translate(_PUNCTUATION_TABLE)
    return 1.0 if prediction == target else 0.0


def leading_option_letter(response: str) -> str:
    """AI2D's ``flexible-extract`` filter: ``"B. text"`` → ``"B"``; anything else is returned unchanged.

    Only an upper-case letter followed by a period at the start (after optional whitespace) is recognised;
    the regex/group arguments in the upstream YAML are never used.
    """
    m = _LEADING_LETTER.match(response)
    return m.group(1) if m else response


def scienceqa_match(prediction: str, target_letter: str) -> float:
    """ScienceQA-IMG rule ("how LLaVA parses it").

    Correct when the whole stripped prediction equals the target letter case-insensitively; otherwise, when
    the prediction has at least two characters and starts with an upper-case character followed by ``.``,
    that first character is compared; everything else scores 0.
    """
    target = target_letter.strip().lower()
    pred = prediction.strip()
    if pred.lower() == target:
        return 1.0
    if len(pred) >= 2 and pred[0].isupper() and pred[1] == ".":
        return 1.0 if pred[0].lower() == target else 0.0
    return 0.0


# ----------------------------------------------------------------------------------------------------------
# ChartQA relaxed correctness
# ----------------------------------------------------------------------------------------------------------


def _chartqa_float(text: str) -> float | None:
    """Python ``float`` parsing; a trailing ``%`` (all trailing ``%`` characters) means "divide by 100"."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(prediction: str, target: str, max_relative_change: float = 0.05) -> bool:
    """ChartQA relaxed accuracy (Qwen-VL rule as used by lmms-eval).

    Both strings are parsed with Python ``float`` (a trailing ``%`` divides by 100; commas, currency signs or
    units make a string non-numeric). When the prediction is numeric and the target is a non-zero number, the
    answer is correct iff ``|pred − target| / |target| <= 5%``. Otherwise (either side non-numeric, or target
    zero) it falls back to case-insensitive string equality. Quirk kept: ``"50%"`` against target ``"50"``
    compares 0.5 with 50 and is wrong.
    """
    pred_value = _chartqa_float(prediction)
    target_value = _chartqa_float(target)
    if pred_value is not None and target_value:
        return abs(pred_value - target_value) / abs(target_value) <= max_relative_change
    return prediction.lower() == target.lower()


# ----------------------------------------------------------------------------------------------------------
# ANLS (DocVQA / InfoVQA)
# ----------------------------------------------------------------------------------------------------------


def _anls_normalize(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity for one question, as lmms-eval computes it.

    For each ground-truth answer: both strings are stripped, lower-cased and have internal whitespace
    collapsed; the normalised distance is ``Levenshtein(gt_norm, pred_norm) / max(len(gt_raw), len(pred_raw))``
    where the lengths are those of the **raw** (un-normalised, upper-cased) strings — an upstream quirk that
    makes padded predictions score higher. A zero denominator gives distance 0. The score is ``1 − min`` over
    answers, and scores below ``threshold`` (0.5) become 0.
    """
    if not answers:
        raise ValueError("ANLS needs at least one ground-truth answer")
    pred_norm = _anls_normalize(prediction)
    pred_len = len(prediction.upper())
    best = math.inf
    for answer in answers:
        length = max(len(answer.upper()), pred_len)
        value = 0.0 if length == 0 else levenshtein(_anls_normalize(answer), pred_norm) / length
        best = min(best, value)
    score = 1.0 - best
    return 0.0 if score < threshold else score


# ----------------------------------------------------------------------------------------------------------
# VQA accuracy (OK-VQA, VizWiz) with the EvalAI answer normaliser
# ----------------------------------------------------------------------------------------------------------

# The official VQA contraction table (keys with capitals can never match, since text is lower-cased first).
_VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_VQA_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_VQA_ARTICLES = frozenset({"a", "an", "the"})
_VQA_PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip
# The lookbehind is written as a lookahead in the original ("(?!<=\d)"), so it never fires: every period not
# followed by a digit is removed.
_VQA_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_VQA_DIGIT_COMMA = re.compile(r"(?<=\d)(,)+(?=\d)")
# Upstream passes ``re.UNICODE`` (== 32) positionally as ``count``: at most 32 periods are removed.
_VQA_PERIOD_MAX_REMOVALS = 32


def _vqa_punctuation(text: str) -> str:
    out = text
    # Commas were already deleted by the first step, so this digit-comma-digit branch is dead in the full
    # pipeline; it is kept so the function matches the published step on its own.
    strip_all = _VQA_DIGIT_COMMA.search(text) is not None
    for p in _VQA_PUNCTUATION:
        if strip_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _VQA_PERIOD.sub("", out, count=_VQA_PERIOD_MAX_REMOVALS)


def vqa_normalize(answer: str) -> str:
    """The EvalAI/MMF VQA answer processor, applied to predictions and to every ground-truth answer.

    Steps: lower-case, delete ``,`` and ``?``, split ``'s`` off (``"it's"`` → ``"it 's"``), strip; newlines and
    tabs to spaces; each of 21 punctuation characters is deleted when it touches a space anywhere in the text
    (else replaced by a space); periods not followed by a digit are deleted (at most 32, upstream quirk);
    number words ``none``/``zero``…``ten`` become digits, articles ``a an the`` are dropped, apostrophe-less
    contractions are expanded (``dont`` → ``don't``), and words are joined by single spaces.
    """
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _vqa_punctuation(text)
    words = []
    for word in text.lower().split():
        word = _VQA_NUMBER_WORDS.get(word, word)
        if word not in _VQA_ARTICLES:
            words.append(word)
    return " ".join(_VQA_CONTRACTIONS.get(word, word) for word in words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy with 10-choose-9 averaging.

    The prediction and all ground-truth answers are normalised with :func:`vqa_normalize`. For each answer
    ``i``, count how many of the *other* answers equal the prediction; ``acc_i = min(1, count / 3)``; the score
    is the mean of the ``acc_i``. No answers → 0 (as upstream). VizWiz "unanswerable" has no special branch.
    """
    pred = vqa_normalize(prediction)
    gts = [vqa_normalize(a) for a in answers]
    if not gts:
        return 0.0
    total = sum(1 for g in gts if g == pred)
    # For answer i the "others" contain every match except answer i itself when it matches.
    accs = [min(1.0, (total - (g == pred)) / 3) for g in gts]
    return math.fsum(accs) / len(accs)


# ----------------------------------------------------------------------------------------------------------
# POPE
# ----------------------------------------------------------------------------------------------------------


def pope_parse(response: str) -> str:
    """POPE keeps ``response.lower().strip()`` verbatim: no yes/no extraction, so ``"yes."`` is not ``"yes"``."""
    return response.lower().strip()


def pope_metrics(predictions: Sequence[str], targets: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio over parsed predictions and ``yes``/``no`` targets.

    Strict upstream semantics: accuracy is exact equality; TP = (gt yes, pred ``yes``), FP = (gt no, pred
    ``yes``), FN = (gt yes, pred ``no``) — a prediction that is neither exactly ``yes`` nor ``no`` drops out of
    precision and recall but still counts as wrong for accuracy. Empty denominators give 0. The yes-ratio is
    computed from the *ground truth* (always 0.5 on POPE; an upstream bug kept for comparability).
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    if not targets:
        raise ValueError("POPE metrics need at least one sample")
    tp = fp = fn = correct = yes = no = 0
    for pred, gt in zip(predictions, targets, strict=True):
        if gt not in ("yes", "no"):
            raise ValueError(f"POPE ground truth must be 'yes' or 'no', got {gt!r}")
        correct += pred == gt
        if gt == "yes":
            yes += 1
            tp += pred == "yes"
            fn += pred == "no"
        else:
            no += 1
            fp += pred == "yes"
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "pope_accuracy": correct / len(targets),
        "pope_precision": precision,
        "pope_recall": recall,
        "pope_f1_score": f1,
        "pope_yes_ratio": yes / (yes + no),
    }


# ----------------------------------------------------------------------------------------------------------
# MME
# ----------------------------------------------------------------------------------------------------------

MME_PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_parse(response: str) -> Literal["yes", "no", "other"]:
    """MME answer parser (from Otter): lower-case, strip, delete every ``.``; exact ``yes``/``no``; a single
    ``y``/``n``; otherwise look for ``yes`` then ``no`` inside the first four characters; else ``other``."""
    text = response.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text  # type: ignore[return-value]
    if len(text) == 1:
        return "yes" if text == "y" else "no" if text == "n" else "other"
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_category_scores(items: Iterable[tuple[str, str, float]]) -> dict[str, float]:
    """Per-category MME scores from ``(category, image_id, score)`` triples.

    Each image carries exactly two yes/no questions. Per image ``acc = 100·mean`` of its two scores and
    ``acc+ = 100`` only when both are correct; the category score is the mean over images of ``acc + acc+``
    (0–200). An image with a number of scored questions other than two is an error (upstream asserts), which
    is why a limited MME run must keep pairs together.
    """
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for category, image_id, score in items:
        groups[category][image_id].append(float(score))
    result: dict[str, float] = {}
    for category, images in groups.items():
        total = 0.0
        for image_id, scores in images.items():
            if len(scores) != 2:
                raise ValueError(
                    f"MME image {image_id!r} (category {category!r}) has {len(scores)} scored question(s); "
                    "MME scores each image's pair of questions together, so pairs must never be split"
                )
            acc = 100.0 * sum(scores) / 2
            acc_plus = 100.0 if sum(scores) == 2 else 0.0
            total += acc + acc_plus
        result[category] = total / len(images)
    return result


def mme_summary(category_scores: Mapping[str, float]) -> dict[str, float]:
    """Perception = sum over the 10 perception categories (max 2000), cognition = sum over the 4 cognition
    categories (max 800); the study's accuracy is ``(perception + cognition) / 2800``."""
    unknown = sorted(set(category_scores) - set(MME_PERCEPTION) - set(MME_COGNITION))
    if unknown:
        raise ValueError(f"unknown MME categories {unknown}; expected {MME_PERCEPTION + MME_COGNITION}")
    perception = sum(v for k, v in category_scores.items() if k in MME_PERCEPTION)
    cognition = sum(v for k, v in category_scores.items() if k in MME_COGNITION)
    return {
        "mme_perception_score": perception,
        "mme_cognition_score": cognition,
        "mme_total_score": perception + cognition,
        "mme_accuracy": (perception + cognition) / 2800,
    }


# ----------------------------------------------------------------------------------------------------------
# MMMU
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChoiceParse:
    """A parsed multiple-choice answer and how it was obtained (``random`` = the seeded fallback)."""

    answer: str
    method: Literal["bracket", "letter_space", "letter_dot", "option_text", "letter", "random"]


_MMMU_STRIP = (",", ".", "!", "?", ";", ":", "'")


def mmmu_parse_multi_choice(response: str, options: Sequence[Any], *, key: str, seed: int = 0) -> ChoiceParse:
    """MMMU's official multiple-choice parser with a per-document seeded random fallback.

    Strip the characters ``, . ! ? ; : '`` from both ends one after another, pad with a space on each side,
    then collect candidate letters: those written ``(X)``; else those followed by a space (``"X "``, anywhere,
    e.g. inside ``"DNA "``); else those followed by a period; else — only when the response has more than five
    words — options whose text occurs case-insensitively. Several candidates → the one occurring last
    (right-most ``rfind``, first candidate on ties); none → a random letter chosen by
    :func:`seeded_choice` from ``key`` (the document id).
    """
    letters = [chr(ord("A") + i) for i in range(len(options))]
    if not letters:
        raise ValueError("a multiple-choice question needs at least one option")
    index2ans = {letter: str(opt) for letter, opt in zip(letters, options, strict=True)}
    for ch in _MMMU_STRIP:
        response = response.strip(ch)
    padded = f" {response} "

    method: str
    candidates = [c for c in letters if f"({c})" in padded]
    method = "bracket"
    if not candidates:
        candidates = [c for c in letters if f"{c} " in padded]
        method = "letter_space"
    if not candidates:
        candidates = [c for c in letters if f"{c}." in padded]
        method = "letter_dot"
    if not candidates and len(padded.split()) > 5:
        lowered = padded.lower()
        candidates = [c for c in letters if index2ans[c].lower() in lowered]
        method = "option_text"
    if not candidates:
        return ChoiceParse(seeded_choice(letters, key, seed), "random")
    if len(candidates) == 1:
        return ChoiceParse(candidates[0], method)  # type: ignore[arg-type]
    if method == "bracket":
        positions = [padded.rfind(f"({c})") for c in candidates]
    elif method == "option_text":
        lowered = padded.lower()
        positions = [lowered.rfind(index2ans[c].lower()) for c in candidates]
    else:
        # Upstream searches " X " here even for "X." candidates (all -1 → the first candidate wins).
        positions = [padded.rfind(f" {c} ") for c in candidates]
    best = max(range(len(candidates)), key=lambda i: (positions[i], -i))
    return ChoiceParse(candidates[best], method)  # type: ignore[arg-type]


_MMMU_NUM_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_MMMU_NUM_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")
_MMMU_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL_TAILS = frozenset({":", ",", ".", "!", "?", ";", "'"})


def _python_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def mmmu_normalize_str(text: str) -> list[str | float]:
    """Numbers (commas removed, Python ``float`` syntax) become floats rounded to 2 decimals; other strings are
    lower-cased, and a single character ``x`` becomes ``[" x", "x "]`` to avoid trivial substring matches."""
    text = text.strip()
    value = _python_float(text.replace(",", ""))
    if value is not None:
        return [round(value, 2)]
    text = text.lower()
    if len(text) == 1:
        return [" " + text, text + " "]
    return [text]


def _shortest_tails(
    response: str, split_pattern: str, indicators: Sequence[str], equals_in_last: bool
) -> list[str]:
    """Shared "key sub-response" step of the MMMU/CMMMU open parsers.

    Each sub-response keeps its shortest tail after any indicator; an empty tail is replaced by the next
    non-empty one (upstream's falsy check), trivial punctuation-only tails are dropped, and ``=`` counts as an
    indicator in the last sub-response only.
    """
    subs = re.split(split_pattern, response)
    keys = []
    inds = list(indicators)
    for index, sub in enumerate(subs):
        if equals_in_last and index == len(subs) - 1:
            inds.append("=")
        shortest: str | None = None
        for indicator in inds:
            if indicator in sub:
                tail = sub.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL_TAILS:
            keys.append(shortest)
    return keys


def _sorted_unique(values: Iterable[str | float]) -> list[str | float]:
    """Deduplicate like upstream's ``list(set(...))`` but in a stable order (numbers first) for logging."""
    unique = set(values)
    return sorted(unique, key=lambda v: (isinstance(v, str), str(v)))


def mmmu_parse_open(response: str) -> list[str | float]:
    """MMMU's official open-answer parser.

    Strip, strip trailing/leading ``.``, lower-case; split into sub-responses on newlines (the ``". " before a
    capital`` split is dead after lower-casing); keep each sub-response's shortest tail after an indicator
    (``could be``, ``so``, ``is``, ``thus``, ``therefore``, ``final``, ``answer``, ``result``, and ``=`` in the
    last one), or the whole response if none; add every number found (comma-grouped, scientific, plain);
    normalise each with :func:`mmmu_normalize_str`; deduplicate.
    """
    text = response.strip().strip(".").lower()
    keys = _shortest_tails(text, r"\.\s(?=[A-Z])|\n", _MMMU_INDICATORS, equals_in_last=True) or [text]
    preds: list[str] = list(keys)
    for key in keys:
        preds.extend(_MMMU_NUM_COMMAS.findall(key))
        preds.extend(_NUM_SCIENTIFIC.findall(key))
        preds.extend(_MMMU_NUM_SIMPLE.findall(key))
    normalized: list[str | float] = []
    for pred in preds:
        normalized.extend(mmmu_normalize_str(pred))
    return _sorted_unique(normalized)


def mmmu_eval_multi_choice(gold: str | Sequence[str], pred: str) -> bool:
    """Exact letter equality; a list gold accepts any of its members."""
    if isinstance(gold, list | tuple):
        return pred in gold
    return gold == pred


def mmmu_eval_open(gold: str | Sequence[str], preds: Sequence[str | float]) -> bool:
    """Correct when a normalised string gold occurs inside a string prediction, or a float prediction equals a
    normalised gold. A gold given as a list accepts any member (a *string* that looks like a list is not
    parsed — upstream leaves it as text)."""
    golds = list(gold) if isinstance(gold, list | tuple) else [gold]
    norm_answers: list[str | float] = []
    for g in golds:
        norm_answers.extend(mmmu_normalize_str(str(g)))
    for pred in preds:
        if isinstance(pred, str):
            if any(isinstance(ans, str) and ans in pred for ans in norm_answers):
                return True
        elif pred in norm_answers:
            return True
    return False


# ----------------------------------------------------------------------------------------------------------
# CMMMU
# ----------------------------------------------------------------------------------------------------------

_CMMMU_NUM_COMMAS = re.compile(r"-?\d{1,3}(?:，\d{3})+")
_CMMMU_NUM_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?!，\d)")
_CMMMU_TF_INDICATORS = ("是", "为", "所以", "判断", "陈述", "说法", "表达", "答案", "结果")
_CMMMU_FILL_INDICATORS = (
    "是",
    "为",
    "所以",
    "等于",
    "方案",
    "选择",
    "正确答案",
    "因此",
    "最后",
    "答案",
    "结果",
)
_CMMMU_POSITIVE = ("正确", "对", "准确", "肯定", "对的")
_CMMMU_NEGATIVE = ("不对", "错误", "不正确", "不准确", "不合适", "否定", "错的", "错")
_CMMMU_AMBIGUOUS = ("对错", "是否正确", "否正确", "或者", "是否", "正确性", "对不")


def cmmmu_parse_multi_choice(
    response: str, options: Sequence[Any], *, key: str, seed: int = 0
) -> ChoiceParse:
    """CMMMU multiple-choice parser (single or multiple answers).

    After MMMU-style stripping and padding, count occurrences of ``(A)``…; if none, count bare letters
    anywhere in the response (also inside words); if none, count occurrences of the option texts
    (case-sensitive); none → a seeded random letter. The answer is the concatenation, in option order, of all
    letters tied for the highest count (e.g. ``"AB"``). Deviation: empty option texts are ignored (counting
    ``""`` would match everywhere).
    """
    letters = [chr(ord("A") + i) for i in range(len(options))]
    if not letters:
        raise ValueError("a multiple-choice question needs at least one option")
    for ch in _MMMU_STRIP:
        response = response.strip(ch)
    padded = f" {response} "
    counts = Counter({c: padded.count(f"({c})") for c in letters})
    method = "bracket"
    if not +counts:
        counts = Counter({c: padded.count(c) for c in letters})
        method = "letter"
    if not +counts and padded.split():
        counts = Counter({c: padded.count(str(o)) for c, o in zip(letters, options, strict=True) if str(o)})
        method = "option_text"
    counts = +counts
    if not counts:
        return ChoiceParse(seeded_choice(letters, key, seed), "random")
    top = max(counts.values())
    return ChoiceParse("".join(c for c in letters if counts.get(c, 0) == top), method)  # type: ignore[arg-type]


def cmmmu_parse_true_false(response: str) -> list[str]:
    """Key sub-responses of a CMMMU true/false answer: split on ``。`` and newlines, keep each part's shortest
    tail after an indicator (是, 为, 所以, 判断, 陈述, 说法, 表达, 答案, 结果), or the whole response if none."""
    text = response.strip("。").strip()
    keys = _shortest_tails(text, r"。|\n", _CMMMU_TF_INDICATORS, equals_in_last=False) or [text]
    return sorted(set(keys))


def cmmmu_judge_true_false(key_responses: Sequence[str], *, key: str, seed: int = 0) -> tuple[str, bool]:
    """Vote 对 (true) / 错 (false) over key sub-responses; returns ``(verdict, used_random)``.

    Sub-responses containing an ambiguity word (对错, 是否正确, …) are dropped; each remaining one votes positive
    if it contains any positive word, else negative if it contains any negative word. Quirk kept: positive
    words are checked first, so ``不对``/``不正确`` (which contain ``对``/``正确``) vote *positive*. Ties → a
    seeded random verdict (upstream draws it globally at aggregation time).
    """
    kept = [r for r in key_responses if not any(a in r for a in _CMMMU_AMBIGUOUS)]
    pos = neg = 0
    for r in kept:
        if any(w in r for w in _CMMMU_POSITIVE):
            pos += 1
        elif any(w in r for w in _CMMMU_NEGATIVE):
            neg += 1
    if pos > neg:
        return "对", False
    if neg > pos:
        return "错", False
    return seeded_choice(["对", "错"], key, seed), True


def _count_ascii_letters(text: str) -> int:
    return sum(1 for c in text if "a" <= c <= "z" or "A" <= c <= "Z")


def cmmmu_normalize_str(text: str | None, answer: str | None) -> list[str | float | None]:
    """CMMMU normaliser: numbers (ASCII commas removed) → float rounded to 2 decimals; other strings are kept
    (no lower-casing) unless longer than ``len(answer) + 20`` or holding more than ``letters(answer) + 2``
    ASCII letters, in which case they are discarded."""
    if text is None:
        return [None]
    text = text.strip()
    value = _python_float(text.replace(",", ""))
    if value is not None:
        return [round(value, 2)]
    answer = answer or ""
    if len(text) > len(answer) + 20 or _count_ascii_letters(text) > _count_ascii_letters(answer) + 2:
        return []
    return [text]


def cmmmu_parse_fill_blank(response: str, answer: str) -> list[str | float | None]:
    """CMMMU fill-in-the-blank parser: MMMU-style key tails with Chinese indicators (是, 为, 所以, 等于, 方案,
    选择, 正确答案, 因此, 最后, 答案, 结果; ``=`` in the last part), plus every number found (``，``-grouped,
    scientific, plain), each normalised by :func:`cmmmu_normalize_str` against the gold answer."""
    text = response.strip("。").strip()
    keys = _shortest_tails(text, r"。|\n", _CMMMU_FILL_INDICATORS, equals_in_last=True) or [text]
    preds: list[str] = list(keys)
    for k in keys:
        preds.extend(_CMMMU_NUM_COMMAS.findall(k))
        preds.extend(_NUM_SCIENTIFIC.findall(k))
        preds.extend(_CMMMU_NUM_SIMPLE.findall(k))
    normalized: list[str | float | None] = []
    for pred in preds:
        normalized.extend(cmmmu_normalize_str(pred, answer))
    return _sorted_unique(normalized)  # type: ignore[arg-type]


def cmmmu_eval_fill_blank(gold: str, preds: Sequence[str | float | None]) -> bool:
    """Substring match of the (normalised) gold string in a string prediction, or float equality."""
    norm_answers = cmmmu_normalize_str(gold, gold)
    for pred in preds:
        if isinstance(pred, str):
            if any(isinstance(ans, str) and ans in pred for ans in norm_answers):
                return True
        elif pred in norm_answers:
            return True
    return False


# ----------------------------------------------------------------------------------------------------------
# MathVista
# ----------------------------------------------------------------------------------------------------------

#: The fixed instruction + five worked demos that MathVista sends to its answer-extraction LLM.
MATHVISTA_DEMO_PROMPT = """
Please read the following example. Then extract the answer from the model response and type it at the end of the prompt.

Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.
Question: Which number is missing?

Model response: The number missing in the sequence is 14.

Extracted answer: 14

Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.
Question: What is the fraction of females facing the camera?

Model response: The fraction of females facing the camera is 0.6, which means that six out of ten females in the group are facing the camera.

Extracted answer: 0.6

Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.
Question: How much money does Luca need to buy a sour apple candy and a butterscotch candy? (Unit: $)

Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.

Extracted answer: 1.45

Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.
Question: Between which two years does the line  graph saw its maximum peak?

Model response: The line graph saw its maximum peak between 2007 and 2008.

Extracted answer: [2007, 2008]

Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.
Question: What fraction of the shape is blue?
Choices:
(A) 3/11
(B) 8/11
(C) 6/11
(D) 3/5

Model response: The correct answer is (B) 8/11.

Extracted answer: B
"""  # noqa: E501


def mathvista_extraction_prompt(query: str, response: str) -> str:
    """The user message MathVista sends to the extraction LLM: demos, the dataset's ``query`` field, the model
    response, and a trailing ``Extracted answer: `` cue."""
    return f"{MATHVISTA_DEMO_PROMPT.strip()}\n\n{query}\n\n{response}\n\nExtracted answer: "


@dataclass(frozen=True)
class Extraction:
    """Result of the rule stage: ``text`` is ``None`` when no rule decides (the item needs the LLM judge)."""

    text: str | None
    method: str


_MV_BARE_LETTER = re.compile(r"\(([A-Za-z])\)\.?|([A-Z])[.):]?")
_MV_LETTER_WITH_TEXT = re.compile(r"(?:\(([A-Za-z])\)|([A-Z])[.):])\s+(.+)", re.DOTALL)


def mathvista_extract_by_rules(
    response: str,
    *,
    question_type: str,
    answer_type: str,
    choices: Sequence[str] | None,
    local_rules: bool = True,
) -> Extraction:
    """MathVista answer extraction, rule stage.

    Upstream rules (always on): empty response → ``""``; a multiple-choice response equal to one choice's
    text → that text; ``integer`` answers that parse with ``int`` → ``str(int)``; ``float`` answers that parse
    with ``float`` → ``str(float)``. Everything else goes to the LLM in upstream.

    ``local_rules`` (vistune's documented addition, on by default) settles the cases an extraction LLM answers
    trivially in format-prompt mode: a bare option letter (``B``, ``B.``, ``B)``, ``(B)``/``(b)``), or a letter
    followed by exactly that option's text (``B. 8/11``), when the letter indexes an existing choice; a
    numeric response to an ``integer`` question (``"12.0"`` → normalised to ``12`` like upstream would after
    extraction); and a Python list literal for ``list`` answers (re-printed as ``str(list)``).
    """
    if not response:
        return Extraction("", "empty")
    choices = list(choices or [])
    if question_type == "multi_choice" and response in choices:
        return Extraction(response, "choice_text")
    if answer_type == "integer":
        try:
            return Extraction(str(int(response)), "integer")
        except ValueError:
            pass
    if answer_type == "float":
        try:
            return Extraction(str(float(response)), "float")
        except ValueError:
            pass
    if not local_rules:
        return Extraction(None, "needs_judge")
    text = response.strip()
    if question_type == "multi_choice" and choices:
        m = _MV_BARE_LETTER.fullmatch(text)
        if m:
            letter = (m.group(1) or m.group(2)).upper()
            if ord(letter) - ord("A") < len(choices):
                return Extraction(letter, "rule:letter")
        m = _MV_LETTER_WITH_TEXT.fullmatch(text)
        if m:
            letter = (m.group(1) or m.group(2)).upper()
            index = ord(letter) - ord("A")
            tail = m.group(3).strip().rstrip(".").strip().lower()
            if index < len(choices) and tail == str(choices[index]).strip().lower():
                return Extraction(letter, "rule:letter")
    if answer_type == "integer" and _python_float(text) is not None:
        return Extraction(text, "rule:number")
    if answer_type == "list":
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = None
        if isinstance(value, list | tuple):
            return Extraction(str(list(value)), "rule:list")
    return Extraction(None, "needs_judge")


def mathvista_normalize(
    extraction: Any,
    *,
    choices: Sequence[str] | None,
    question_type: str,
    answer_type: str,
    precision: float | int | None,
) -> str | None:
    """MathVista ``normalize_extracted_answer``.

    Multiple choice: strip; a ``(X)`` anywhere → letter ``X`` (upper-cased); an option letter maps to that
    choice's text; anything else — including the empty extraction left by a failed judge — maps to the choice
    with the smallest Levenshtein distance (first on ties), so MC always yields a choice. ``integer`` →
    ``str(int(float(x)))``; ``float`` → ``str(round(float(x), int(precision)))``; ``list`` → ``str(x)``; a
    value that does not convert gives ``None``. (``int(precision)`` as in the official MathVista code; see the
    report notes on lmms-eval passing the raw value.)
    """
    if question_type == "multi_choice":
        choice_list = [str(c) for c in (choices or [])]
        if not choice_list:
            raise ValueError("a multi_choice MathVista item needs choices")
        text = extraction.strip() if isinstance(extraction, str) else str(extraction)
        letters = re.findall(r"\(([a-zA-Z])\)", text)
        if letters:
            text = letters[0].upper()
        options = [chr(ord("A") + i) for i in range(len(choice_list))]
        if text in options:
            return choice_list[options.index(text)]
        distances = [levenshtein(text, c) for c in choice_list]
        return choice_list[distances.index(min(distances))]
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            return str(round(float(extraction), int(precision)))  # type: ignore[arg-type]
        if answer_type == "list":
            return str(extraction)
    except (TypeError, ValueError, OverflowError):
        return None
    return extraction


def mathvista_is_correct(normalized: Any, answer: Any) -> bool:
    """``str(prediction).strip() == str(answer).strip()`` (``None`` compares as the string ``"None"``)."""
    return str(normalized).strip() == str(answer).strip()


# ----------------------------------------------------------------------------------------------------------
# SynDOG
# ----------------------------------------------------------------------------------------------------------


def _leaf_text(text: str) -> str:
    # Donut labels leaves "<leaf>" + text and removes every "<leaf>" when costing them.
    return ("<leaf>" + text).replace("<leaf>", "")


def synthdog_nted(prediction: str, ground_truth: str) -> float:
    """Donut's normalised-tree-edit-distance accuracy for one SynDOG sample, as lmms-eval computes it.

    The prediction tree is ``{"output": prediction.lower().strip()}`` and the ground truth
    ``{"text_sequence": text}`` with case kept. The key nodes always differ (relabel cost 1) and leaves cost
    their character Levenshtein distance, so ``TED = 1 + Lev(pred, gt)`` and the score is
    ``max(0, 1 − (1 + Lev(pred_lower, gt)) / (1 + len(gt)))``: every upper-case ground-truth character costs an
    edit and an empty prediction scores 0. The study reports the *sum* over the 500 validation images.
    """
    if ground_truth == "":
        raise ValueError("SynDOG ground-truth text is empty (the tree edit distance is undefined)")
    gt = _leaf_text(ground_truth.strip())
    pred = _leaf_text(prediction.lower().strip())
    ted = 1 + levenshtein(pred, gt)
    return max(0.0, 1.0 - ted / (1 + len(gt)))


# ----------------------------------------------------------------------------------------------------------
# OCRBench
# ----------------------------------------------------------------------------------------------------------

#: Question types and their maximum scores (the full benchmark totals 1000).
OCRBENCH_CATEGORIES = {
    "Regular Text Recognition": 50,
    "Irregular Text Recognition": 50,
    "Artistic Text Recognition": 50,
    "Handwriting Recognition": 50,
    "Digit String Recognition": 50,
    "Non-Semantic Text Recognition": 50,
    "Scene Text-centric VQA": 200,
    "Doc-oriented VQA": 200,
    "Key Information Extraction": 200,
    "Handwritten Mathematical Expression Recognition": 100,
}
OCRBENCH_RECOGNITION = tuple(list(OCRBENCH_CATEGORIES)[:6])


def ocrbench_match(
    prediction: str, answers: str | Sequence[str], dataset: str, *, fix_hme_case: bool = False
) -> int:
    """1 when any ground-truth answer is a substring of the prediction.

    Both sides are lower-cased, stripped and have newlines turned into spaces. For ``HME100k`` (handwritten
    formulas) all spaces are removed and the ground-truth case is kept — but the prediction was already
    lower-cased (the v0.2.0 case bug, fixed later upstream); ``fix_hme_case=True`` keeps the prediction's case.
    """
    answer_list = [answers] if isinstance(answers, str) else list(answers)
    pred = prediction.lower().strip()
    if dataset == "HME100k":
        source = prediction.strip() if fix_hme_case else pred
        predict = source.strip().replace("\n", " ").replace(" ", "")
        return int(any(a.strip().replace("\n", " ").replace(" ", "") in predict for a in answer_list))
    predict = pred.lower().strip().replace("\n", " ")
    return int(any(a.lower().strip().replace("\n", " ") in predict for a in answer_list))


def ocrbench_summary(items: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Per-question-type sums, the text-recognition subtotal (/300), the final score (/1000) and
    ``ocrbench_accuracy = final / 1000`` — divided by the constant 1000 even for a partial run, as upstream."""
    sums = dict.fromkeys(OCRBENCH_CATEGORIES, 0.0)
    for question_type, score in items:
        if question_type not in sums:
            raise ValueError(
                f"unknown OCRBench question_type {question_type!r}; expected one of {list(sums)}"
            )
        sums[question_type] += score
    recognition = sum(sums[k] for k in OCRBENCH_RECOGNITION)
    final = sum(sums.values())
    out = {f"ocrbench/{k}": v for k, v in sums.items()}
    out["ocrbench_text_recognition"] = recognition
    out["ocrbench_final_score"] = final
    out["ocrbench_accuracy"] = final / 1000
    return out
