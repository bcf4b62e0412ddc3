"""Unit and property tests for vistune.eval.metrics (hand-computed cases, including upstream quirks)."""

from __future__ import annotations

import math
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vistune.eval import metrics as M

FAST = settings(max_examples=150, deadline=None)
ANY_TEXT = st.text(max_size=60)


# -- Levenshtein -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [
        ("kitten", "sitting", 3),
        ("", "abc", 3),
        ("abc", "", 3),
        ("flaw", "lawn", 2),
        ("same", "same", 0),
        ("a", "b", 1),
    ],
)
def test_levenshtein_known_values(a: str, b: str, d: int) -> None:
    assert M.levenshtein(a, b) == d
    assert M.levenshtein_reference(a, b) == d


def test_levenshtein_long_strings_cross_word_boundaries() -> None:
    a = "The quick brown fox jumps over the lazy dog. " * 5  # > 64 characters: multi-word bit vectors
    b = a.replace("o", "0").upper()
    assert M.levenshtein(a, b) == M.levenshtein_reference(a, b)


@FAST
@given(st.text(alphabet="abc", max_size=90), st.text(alphabet="abc", max_size=90))
def test_levenshtein_matches_dynamic_programme(a: str, b: str) -> None:
    assert M.levenshtein(a, b) == M.levenshtein_reference(a, b)


@FAST
@given(ANY_TEXT, ANY_TEXT)
def test_levenshtein_is_a_bounded_symmetric_distance(a: str, b: str) -> None:
    d = M.levenshtein(a, b)
    assert d == M.levenshtein(b, a)
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))
    assert (d == 0) == (a == b)


# -- exact match, AI2D filter, ScienceQA ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "target", "score"),
    [("A", "A", 1.0), ("(A)", "A", 1.0), ("a.", "A", 1.0), ("The answer is A", "A", 0.0), ("B", "A", 0.0)],
)
def test_exact_match_ignores_case_and_punctuation(pred: str, target: str, score: float) -> None:
    assert M.exact_match(pred, target) == score


def test_exact_match_flags() -> None:
    assert M.exact_match("a", "A", ignore_case=False) == 0.0
    assert M.exact_match("A.", "A", ignore_punctuation=False) == 0.0
    assert M.exact_match(" A", "A") == 0.0  # no whitespace trimming beyond the harness strip


def test_ai2d_filter_only_takes_leading_capital_letter_with_period() -> None:
    assert M.leading_option_letter("B. a cat") == "B"
    assert M.leading_option_letter("  C.") == "C"
    assert M.leading_option_letter("b. a cat") == "b. a cat"
    assert M.leading_option_letter("(B)") == "(B)"
    assert M.exact_match(M.leading_option_letter("B. a cat"), "B") == 1.0


@pytest.mark.parametrize(
    ("pred", "score"),
    [
        ("B", 1.0),
        ("b", 1.0),
        (" B ", 1.0),
        ("B. a dog", 1.0),
        ("C. a dog", 0.0),
        ("(B)", 0.0),
        ("The answer is B", 0.0),
    ],
)
def test_scienceqa_letter_rule(pred: str, score: float) -> None:
    assert M.scienceqa_match(pred, "B") == score


@FAST
@given(ANY_TEXT, ANY_TEXT)
def test_exact_match_is_symmetric(a: str, b: str) -> None:
    assert M.exact_match(a, b) == M.exact_match(b, a)


# -- ChartQA -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "target", "ok"),
    [
        ("12", "12.5", True),  # 4 % off
        ("11.8", "12.5", False),  # 5.6 % off
        ("13.125", "12.5", True),  # exactly 5 %
        ("50%", "0.5", True),  # trailing % divides by 100
        ("50%", "50", False),  # ... which makes "50%" vs "50" wrong
        ("0", "0", True),  # zero target: string comparison
        ("0.0", "0", False),
        ("Yes", "yes", True),
        ("1,000", "1000", False),  # no comma stripping: non-numeric, string mismatch
        ("1e3", "1000", True),
        ("abc", "12", False),
    ],
)
def test_relaxed_correctness(pred: str, target: str, ok: bool) -> None:
    assert M.relaxed_correctness(pred, target) is ok


@FAST
@given(ANY_TEXT, ANY_TEXT)
def test_relaxed_correctness_never_raises(a: str, b: str) -> None:
    assert isinstance(M.relaxed_correctness(a, b), bool)


@FAST
@given(st.integers(min_value=-(10**9), max_value=10**9))
def test_relaxed_correctness_is_reflexive_on_numbers(n: int) -> None:
    assert M.relaxed_correctness(str(n), str(n))


# -- ANLS ----------------------------------------------------------------------------------------------------


def test_anls_exact_and_normalised_matches() -> None:
    assert M.anls("hello world", ["hello world"]) == 1.0
    assert M.anls("Hello   WORLD", ["hello world"]) == 1.0
    assert M.anls("", [""]) == 1.0


def test_anls_uses_raw_lengths_in_the_denominator() -> None:
    # normalised "ab cx" vs "ab cd": distance 1; raw prediction length 8 (not 5) → 1 - 1/8
    assert M.anls("ab    cx", ["ab cd"]) == pytest.approx(0.875)


def test_anls_threshold_and_best_answer() -> None:
    assert M.anls("abxy", ["abcd"]) == pytest.approx(0.5)  # exactly at the threshold: kept
    assert M.anls("wxyd", ["abcd"]) == 0.0  # 0.25 < 0.5 → 0
    assert M.anls("abce", ["zzzz", "abcd"]) == pytest.approx(0.75)  # best of several answers
    with pytest.raises(ValueError):
        M.anls("x", [])


@FAST
@given(ANY_TEXT, st.lists(ANY_TEXT, min_size=1, max_size=3))
def test_anls_range(pred: str, answers: list[str]) -> None:
    score = M.anls(pred, answers)
    assert score == 0.0 or 0.5 <= score <= 1.0


# -- VQA -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Two dogs.", "2 dogs"),
        ("It's a cat", "it 's cat"),
        ("dont know", "don't know"),
        ("3.5", "3.5"),
        ("yes!", "yes"),
        ("black-and-white", "black and white"),  # '-' not next to a space → space
        ("a - b", "b"),  # '-' next to a space → deleted; article dropped
        ("The Answer?", "answer"),
        ("none", "0"),
        ("Unanswerable", "unanswerable"),
        ("line\nbreak\ttab", "line break tab"),
    ],
)
def test_vqa_normalize(raw: str, norm: str) -> None:
    assert M.vqa_normalize(raw) == norm


def test_vqa_normalize_removes_at_most_32_periods() -> None:
    # upstream passes re.UNICODE (32) as the `count` argument of re.sub
    assert M.vqa_normalize("x" + "." * 40) == "x" + "." * 8


def test_vqa_accuracy_ten_choose_nine() -> None:
    assert M.vqa_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)
    assert M.vqa_accuracy("dog", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(1.0)
    assert M.vqa_accuracy("cat", ["cat"] * 2 + ["dog"] * 8) == pytest.approx(0.6)
    assert M.vqa_accuracy("Two", ["2"] * 10) == 1.0  # normalisation applies to both sides
    assert M.vqa_accuracy("cat", []) == 0.0


@FAST
@given(ANY_TEXT)
def test_vqa_normalize_output_invariants(text: str) -> None:
    out = M.vqa_normalize(text)
    assert out == " ".join(out.split())
    assert not any(p in out for p in ';/[]"{}()=+\\_-><@`,?!')


@FAST
@given(ANY_TEXT, st.lists(st.sampled_from(["cat", "dog", "two", "2", "a cat"]), max_size=10))
def test_vqa_accuracy_range(pred: str, answers: list[str]) -> None:
    assert 0.0 <= M.vqa_accuracy(pred, answers) <= 1.0


# -- POPE ----------------------------------------------------------------------------------------------------


def test_pope_strict_matching_and_metrics() -> None:
    preds = [M.pope_parse(p) for p in ["Yes", "no", "yes.", "YES ", "No"]]
    assert preds == ["yes", "no", "yes.", "yes", "no"]
    m = M.pope_metrics(preds, ["yes", "yes", "no", "no", "no"])
    # TP=1 (0), FN=1 (1), FP=1 (3); "yes." is neither yes nor no: out of P/R, wrong for accuracy
    assert m["pope_accuracy"] == pytest.approx(0.4)
    assert m["pope_precision"] == pytest.approx(0.5)
    assert m["pope_recall"] == pytest.approx(0.5)
    assert m["pope_f1_score"] == pytest.approx(0.5)
    assert m["pope_yes_ratio"] == pytest.approx(0.4)  # from the ground truth, not the predictions


def test_pope_degenerate_and_invalid() -> None:
    m = M.pope_metrics(["maybe", "maybe"], ["yes", "no"])
    assert m["pope_f1_score"] == 0.0 and m["pope_precision"] == 0.0 and m["pope_accuracy"] == 0.0
    with pytest.raises(ValueError, match="yes"):
        M.pope_metrics(["yes"], ["true"])


@FAST
@given(ANY_TEXT)
def test_pope_parse_idempotent(text: str) -> None:
    assert M.pope_parse(M.pope_parse(text)) == M.pope_parse(text)


# -- MME -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("Yes", "yes"),
        ("No.", "no"),
        ("y", "yes"),
        ("N", "no"),
        ("x", "other"),
        ("Yes, there is a dog.", "yes"),
        ("There is no dog", "other"),  # only the first 4 characters are inspected
        ("not sure", "no"),  # "not " contains "no"
        ("", "other"),
    ],
)
def test_mme_parse(raw: str, label: str) -> None:
    assert M.mme_parse(raw) == label


@FAST
@given(ANY_TEXT)
def test_mme_parse_total_and_idempotent(text: str) -> None:
    label = M.mme_parse(text)
    assert label in ("yes", "no", "other")
    assert M.mme_parse(label) == label


def test_mme_acc_plus_per_image_and_sums() -> None:
    cats = M.mme_category_scores(
        [
            ("existence", "e1.png", 1.0),
            ("existence", "e1.png", 1.0),  # acc 100 + acc+ 100
            ("existence", "e2.png", 1.0),
            ("existence", "e2.png", 0.0),  # acc 50 + acc+ 0
            ("code_reasoning", "c1.png", 0.0),
            ("code_reasoning", "c1.png", 0.0),
        ]
    )
    assert cats == {"existence": pytest.approx(125.0), "code_reasoning": 0.0}
    summary = M.mme_summary(cats)
    assert summary["mme_perception_score"] == pytest.approx(125.0)
    assert summary["mme_cognition_score"] == 0.0
    assert summary["mme_accuracy"] == pytest.approx(125.0 / 2800)


def test_mme_split_pair_is_an_error() -> None:
    with pytest.raises(ValueError, match="pairs must never be split"):
        M.mme_category_scores([("count", "x.png", 1.0)])
    with pytest.raises(ValueError, match="unknown MME categories"):
        M.mme_summary({"nonsense": 1.0})


# -- MMMU ----------------------------------------------------------------------------------------------------

OPTS = ["cat", "dog", "fish", "bird"]


@pytest.mark.parametrize(
    ("resp", "answer", "method"),
    [
        ("B", "B", "letter_space"),
        ("(C)", "C", "bracket"),
        ("The answer is (A) not (B)", "B", "bracket"),  # several: right-most wins
        ("A.", "A", "letter_space"),  # trailing '.' stripped first
        ("A or B", "B", "letter_space"),
        ("DNA sequencing is the answer", "A", "letter_space"),  # quirk: "DNA " contains "A "
        ("I think the animal shown is a dog for sure", "B", "option_text"),  # > 5 words
    ],
)
def test_mmmu_multi_choice_parser(resp: str, answer: str, method: str) -> None:
    parsed = M.mmmu_parse_multi_choice(resp, OPTS, key="validation_Art_1")
    assert (parsed.answer, parsed.method) == (answer, method)


def test_mmmu_random_fallback_is_seeded_per_document() -> None:
    first = [M.mmmu_parse_multi_choice("no idea", OPTS, key=f"validation_Math_{i}") for i in range(40)]
    # same key → same guess, whatever was parsed before or in which order
    again = [
        M.mmmu_parse_multi_choice("no idea", OPTS, key=f"validation_Math_{i}") for i in reversed(range(40))
    ]
    assert [p.answer for p in first] == [p.answer for p in reversed(again)]
    assert all(p.method == "random" for p in first)
    assert len({p.answer for p in first}) > 1  # it is a guess, not a constant
    seeded = [
        M.mmmu_parse_multi_choice("no idea", OPTS, key=f"validation_Math_{i}", seed=1) for i in range(40)
    ]
    assert [p.answer for p in seeded] != [p.answer for p in first]


def test_mmmu_open_parser_and_eval() -> None:
    assert M.mmmu_parse_open("The answer is 42.") == [42.0]
    assert M.mmmu_eval_open("42", M.mmmu_parse_open("The answer is 42."))
    assert M.mmmu_parse_open("Paris") == ["paris"]
    assert M.mmmu_eval_open("Paris", ["paris"])
    assert M.mmmu_parse_open("12abc") == ["12abc"]  # \d+\b: no number inside a word
    assert 1000.0 in M.mmmu_parse_open("1,000 apples")
    assert M.mmmu_normalize_str("B") == [" b", "b "]  # single characters are padded
    assert M.mmmu_eval_open(["3", "three"], ["three"])  # list gold: any member
    assert not M.mmmu_eval_open("41", [42.0])
    assert M.mmmu_eval_multi_choice("B", "B") and not M.mmmu_eval_multi_choice("B", "C")


@FAST
@given(ANY_TEXT, st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6))
def test_mmmu_multi_choice_always_returns_an_option_letter(resp: str, options: list[str]) -> None:
    parsed = M.mmmu_parse_multi_choice(resp, options, key="k")
    assert parsed.answer in [chr(ord("A") + i) for i in range(len(options))]
    assert parsed == M.mmmu_parse_multi_choice(resp, options, key="k")


@FAST
@given(ANY_TEXT)
def test_mmmu_open_parser_never_raises(resp: str) -> None:
    parsed = M.mmmu_parse_open(resp)
    assert parsed and all(isinstance(p, str | float) for p in parsed)


# -- CMMMU ---------------------------------------------------------------------------------------------------

CN_OPTS = ["猫", "狗", "鱼", "鸟"]


@pytest.mark.parametrize(
    ("resp", "answer"),
    [("(B)", "B"), ("AB", "AB"), ("答案是A，不是B和B", "B"), ("狗", "B"), ("(A)(C)", "AC")],
)
def test_cmmmu_multi_choice(resp: str, answer: str) -> None:
    assert M.cmmmu_parse_multi_choice(resp, CN_OPTS, key="1").answer == answer


def test_cmmmu_multi_choice_fallback_is_seeded() -> None:
    a = M.cmmmu_parse_multi_choice("没有", CN_OPTS, key="42")
    assert a.method == "random" and a == M.cmmmu_parse_multi_choice("没有", CN_OPTS, key="42")


def test_cmmmu_true_false_vote() -> None:
    keys = M.cmmmu_parse_true_false("这个说法是正确的。")
    assert keys == ["正确的"]
    assert M.cmmmu_judge_true_false(keys, key="1") == ("对", False)
    assert M.cmmmu_judge_true_false(M.cmmmu_parse_true_false("错误"), key="1") == ("错", False)
    # quirk: positive words are checked first and "不对" contains "对"
    assert M.cmmmu_judge_true_false(["不对"], key="1") == ("对", False)
    verdict, rnd = M.cmmmu_judge_true_false(["是否正确"], key="7")  # ambiguous → dropped → tie
    assert rnd and verdict in ("对", "错") and M.cmmmu_judge_true_false(["是否正确"], key="7")[0] == verdict


def test_cmmmu_fill_blank() -> None:
    assert M.cmmmu_parse_fill_blank("答案是3.5", "3.5") == [3.5]
    assert M.cmmmu_eval_fill_blank("3.5", [3.5])
    assert M.cmmmu_eval_fill_blank("北京", M.cmmmu_parse_fill_blank("答案是北京", "北京"))
    assert M.cmmmu_normalize_str("x" * 30, "ab") == []  # longer than len(answer) + 20
    assert M.cmmmu_normalize_str("abcdef", "a") == []  # more than letters(answer) + 2 ASCII letters
    assert M.cmmmu_normalize_str("1,000", "x") == [1000.0]


@FAST
@given(ANY_TEXT)
def test_cmmmu_parsers_never_raise(resp: str) -> None:
    answer = M.cmmmu_parse_multi_choice(resp, CN_OPTS, key="k").answer
    assert answer and list(answer) == sorted(set(answer)) and set(answer) <= set("ABCD")
    M.cmmmu_judge_true_false(M.cmmmu_parse_true_false(resp), key="k")
    M.cmmmu_parse_fill_blank(resp, "答案")


# -- MathVista -----------------------------------------------------------------------------------------------

CHOICES = ["3/11", "8/11", "6/11", "3/5"]


def _rules(resp: str, qt: str = "multi_choice", at: str = "text", choices=CHOICES, **kw) -> M.Extraction:
    return M.mathvista_extract_by_rules(resp, question_type=qt, answer_type=at, choices=choices, **kw)


def test_mathvista_upstream_rules() -> None:
    assert _rules("") == M.Extraction("", "empty")
    assert _rules("8/11") == M.Extraction("8/11", "choice_text")
    assert _rules("12", "free_form", "integer", None) == M.Extraction("12", "integer")
    assert _rules("1.50", "free_form", "float", None) == M.Extraction("1.5", "float")


@pytest.mark.parametrize("resp", ["B", "B.", "B)", "(B)", "(b)", "B. 8/11", "(B) 8/11"])
def test_mathvista_local_letter_rule(resp: str) -> None:
    assert _rules(resp) == M.Extraction("B", "rule:letter")


@pytest.mark.parametrize("resp", ["B. 9/11", "E", "The answer is B", "b"])
def test_mathvista_undecided_cases_need_the_judge(resp: str) -> None:
    assert _rules(resp).text is None


def test_mathvista_local_numeric_and_list_rules_and_switch() -> None:
    assert _rules("12.0", "free_form", "integer", None) == M.Extraction("12.0", "rule:number")
    assert _rules("[2007,2008]", "free_form", "list", None) == M.Extraction("[2007, 2008]", "rule:list")
    assert _rules("B", local_rules=False).text is None
    assert _rules("12.0", "free_form", "integer", None, local_rules=False).text is None


def test_mathvista_normalisation() -> None:
    def norm(x, qt="multi_choice", at="text", choices=CHOICES, precision=None):
        return M.mathvista_normalize(
            x, choices=choices, question_type=qt, answer_type=at, precision=precision
        )

    assert norm("B") == "8/11"
    assert norm("(c) 6/11") == "6/11"
    assert norm("") == "3/5"  # failed judge → Levenshtein-nearest choice (shortest; first on ties)
    assert norm("", choices=["10 cm", "5", "100"]) == "5"
    assert norm("3.7", "free_form", "integer", None) == "3"
    assert norm("3.14159", "free_form", "float", None, 2) == "3.14"
    assert norm("3.14159", "free_form", "float", None, 2.0) == "3.14"  # float precision from parquet
    assert norm("abc", "free_form", "float", None, 1) is None
    assert norm("", "free_form", "integer", None) is None
    assert norm("[1, 2]", "free_form", "list", None) == "[1, 2]"
    assert M.mathvista_is_correct("3.14", " 3.14 ") and not M.mathvista_is_correct(None, "3")


def test_mathvista_extraction_prompt_shape() -> None:
    prompt = M.mathvista_extraction_prompt("Question: Q?", "I think B")
    assert prompt.startswith("Please read the following example.")
    assert prompt.endswith("Question: Q?\n\nI think B\n\nExtracted answer: ")
    assert (
        "Extracted answer: [2007, 2008]" in prompt
        and "Question: What fraction of the shape is blue?\nChoices:" in prompt
    )


@FAST
@given(ANY_TEXT, st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=5))
def test_mathvista_multi_choice_always_yields_a_choice(extraction: str, choices: list[str]) -> None:
    out = M.mathvista_normalize(
        extraction, choices=choices, question_type="multi_choice", answer_type="text", precision=None
    )
    assert out in choices


# -- SynDOG --------------------------------------------------------------------------------------------------


def test_synthdog_nted_including_key_and_case_penalties() -> None:
    # perfect text still pays 1 for relabelling the key node "output" -> "text_sequence": 1 - 1/12
    assert M.synthdog_nted("hello world", "hello world") == pytest.approx(11 / 12)
    # only the prediction is lower-cased: each upper-case GT character costs an edit: 1 - (1 + 1)/(1 + 5)
    assert M.synthdog_nted("Hello", "Hello") == pytest.approx(1 - 2 / 6)
    assert M.synthdog_nted("  hello world ", "hello world") == pytest.approx(11 / 12)
    assert M.synthdog_nted("", "abc") == 0.0
    assert M.synthdog_nted("completely different and much longer text", "abc") == 0.0
    with pytest.raises(ValueError):
        M.synthdog_nted("x", "")


def test_synthdog_summed_total() -> None:
    scores = [M.synthdog_nted(p, g) for p, g in [("abc", "abc"), ("abd", "abc"), ("", "abc")]]
    assert sum(scores) == pytest.approx((1 - 1 / 4) + (1 - 2 / 4) + 0.0)


@FAST
@given(ANY_TEXT, st.text(min_size=1, max_size=40))
def test_synthdog_range(pred: str, gt: str) -> None:
    assert 0.0 <= M.synthdog_nted(pred, gt) < 1.0


# -- OCRBench ------------------------------------------------------------------------------------------------


def test_ocrbench_matching_and_hme_case_bug() -> None:
    assert M.ocrbench_match("The text says HELLO", ["hello"], "IIIT5K") == 1
    assert M.ocrbench_match("line one\nline two", ["one line two"], "IIIT5K") == 1
    assert M.ocrbench_match("nothing", ["hello", "world"], "IIIT5K") == 0
    assert M.ocrbench_match("x", "x", "IIIT5K") == 1  # a single string answer
    pred, gt = "\\frac { a } { B }", ["\\frac{a}{B}"]
    assert M.ocrbench_match(pred, gt, "HME100k") == 0  # prediction lower-cased, GT case kept
    assert M.ocrbench_match(pred, gt, "HME100k", fix_hme_case=True) == 1


def test_ocrbench_buckets_and_constant_denominator() -> None:
    out = M.ocrbench_summary(
        [
            ("Regular Text Recognition", 1),
            ("Doc-oriented VQA", 1),
            ("Doc-oriented VQA", 0),
            ("Digit String Recognition", 1),
        ]
    )
    assert out["ocrbench/Doc-oriented VQA"] == 1
    assert out["ocrbench_text_recognition"] == 2
    assert out["ocrbench_final_score"] == 3
    assert out["ocrbench_accuracy"] == pytest.approx(0.003)  # / 1000 even for a 4-item run
    assert sum(M.OCRBENCH_CATEGORIES.values()) == 1000
    with pytest.raises(ValueError, match="question_type"):
        M.ocrbench_summary([("Unknown", 1)])


# -- seeded choice -------------------------------------------------------------------------------------------


@FAST
@given(st.text(max_size=20), st.integers(0, 5), st.lists(st.sampled_from(string.ascii_uppercase), min_size=1))
def test_seeded_choice_is_a_pure_function(key: str, seed: int, options: list[str]) -> None:
    choice = M.seeded_choice(options, key, seed)
    assert choice in options and choice == M.seeded_choice(list(options), key, seed)


def test_seeded_choice_needs_options() -> None:
    with pytest.raises(ValueError):
        M.seeded_choice([], "k")
    assert math.isclose(len({M.seeded_choice("ABCD", str(i)) for i in range(200)}), 4)
