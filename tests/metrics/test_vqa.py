import json
import random
from pathlib import Path

import pytest

from vqabench.metrics.vqa import normalize_answer, vqa_accuracy, vqa_score


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Yes.", "yes"),
        ("The Dog!", "dog"),
        ("1,000", "1000"),
        ("well-known", "well known"),
        ("U.S.A.", "usa"),
        ("3:30", "3:30"),
        ("ten dogs", "10 dogs"),
        ("hello , world", "hello world"),
    ],
)
def test_normalize_answer_metrics_md_examples(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("3.5", "3.5"),  # a period before a digit stays
        ("a.b", "ab"),
        ("man's hat", "man's hat"),  # the apostrophe is not in the punctuation list
        ("red/blue", "red blue"),
        ("red / blue", "red blue"),
        ("1,000 (approx)", "1000 approx"),  # digit-comma-digit deletes every listed mark
        ("none", "0"),
        ("An apple", "apple"),
        ("dont", "don't"),
        ("whats that", "what's that"),
        ("Im", "im"),  # capitalised table keys never match after lowercasing
    ],
)
def test_normalize_answer_rules(raw, expected):
    assert normalize_answer(raw) == expected


def test_period_strip_stops_after_32_like_the_official_re_unicode_count():
    assert normalize_answer("." * 40) == "." * 8


@pytest.mark.parametrize(("k", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0)])
def test_vqa_score_ladder_for_k_matching_humans_out_of_ten(k, expected):
    answers = ["cat"] * k + ["dog"] * (10 - k)
    assert vqa_score("cat", answers) == pytest.approx(expected)


def test_all_identical_answers_are_not_normalised():
    assert vqa_score("Yes", ["yes"] * 10) == 0.0
    assert vqa_score("yes", ["yes"] * 10) == 1.0


def test_mixed_answers_normalise_both_sides():
    assert vqa_score("Yes.", ["yes"] * 9 + ["no"]) == 1.0
    assert vqa_score("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)


def test_whitespace_is_cleaned_before_the_identity_check():
    assert vqa_score(" yes\n", ["yes"] * 9 + ["yes\t"]) == 1.0


def test_vizwiz_normalises_the_prediction_only():
    assert vqa_score("Yes.", ["yes"] * 10, mode="vizwiz") == 1.0
    assert vqa_score("Yes.", ["yes"] * 9 + ["no"], mode="vizwiz") == 1.0
    assert vqa_score("yes", ["Yes"] * 9 + ["no"], mode="vqa") == 1.0
    assert vqa_score("yes", ["Yes"] * 9 + ["no"], mode="vizwiz") == 0.0
    assert vqa_score("unanswerable", ["unanswerable"] * 4 + ["no"] * 6, mode="vizwiz") == 1.0


def test_single_reference_is_exact_match_after_normalisation():
    assert vqa_score("The Dog!", ["dog"]) == 1.0
    assert vqa_score("Yes", ["yes"]) == 1.0
    assert vqa_score("no", ["yes"]) == 0.0
    assert vqa_score("Yes.", ["yes"], mode="vizwiz") == 1.0


def _official_vqa_score(prediction, answers, normalize):
    # Transcription of the master vqaEval.py loop: answers are dicts, compared by identity of content.
    gts = [{"answer": a.replace("\n", " ").replace("\t", " ").strip(), "answer_id": i} for i, a in enumerate(answers)]
    res = prediction.replace("\n", " ").replace("\t", " ").strip()
    if len(set(g["answer"] for g in gts)) > 1:
        for g in gts:
            g["answer"] = normalize(g["answer"])
        res = normalize(res)
    accs = []
    for datum in gts:
        others = [item for item in gts if item != datum]
        matching = [item for item in others if item["answer"] == res]
        accs.append(min(1, float(len(matching)) / 3))
    return float(sum(accs)) / len(accs)


def test_vqa_score_matches_a_transcription_of_the_official_loop():
    rng = random.Random(0)
    vocab = ["yes", "Yes", "no", "two", "2", "a dog", "dog", "the dog!", "1,000", "1000", "red"]
    for _ in range(500):
        answers = [rng.choice(vocab) for _ in range(10)]
        prediction = rng.choice(vocab)
        expected = _official_vqa_score(prediction, answers, normalize_answer)
        assert vqa_score(prediction, answers) == pytest.approx(expected, abs=1e-12)


def test_vqa_accuracy_per_type_averages_by_hand():
    predictions = ["yes", "no", "2", "red"]
    answers = [
        ["yes"] * 10,  # 1.0
        ["yes"] * 8 + ["no"] * 2,  # 0.6
        ["2"] * 3 + ["3"] * 7,  # 0.9
        ["blue"] * 10,  # 0.0
    ]
    result = vqa_accuracy(
        predictions,
        answers,
        question_types=["is the", "is the", "how many", "what color"],
        answer_types=["yes/no", "yes/no", "number", "other"],
    )
    assert result["vqa_accuracy"] == pytest.approx((1.0 + 0.6 + 0.9 + 0.0) / 4)
    assert result["per_question_type"] == pytest.approx({"is the": 0.8, "how many": 0.9, "what color": 0.0})
    assert result["per_answer_type"] == pytest.approx({"yes/no": 0.8, "number": 0.9, "other": 0.0})


def test_vqa_accuracy_without_types_has_empty_breakdowns():
    result = vqa_accuracy(["yes"], [["yes"] * 10])
    assert result == {"vqa_accuracy": 1.0, "per_question_type": {}, "per_answer_type": {}}


def test_vqa_accuracy_is_not_rounded():
    result = vqa_accuracy(["cat", "cat", "cat"], [["cat"] + ["dog"] * 9] * 3)
    assert result["vqa_accuracy"] == pytest.approx(0.3, abs=1e-12)
    # Each "cat" sees one other match (1/3), the "dog" sees two (2/3): (1/3 + 1/3 + 2/3) / 3.
    assert vqa_score("cat", ["cat", "cat", "dog"]) == pytest.approx(4 / 9, abs=1e-15)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: vqa_accuracy([], []), "predictions"),
        (lambda: vqa_accuracy(["a"], [["a"], ["b"]]), "answers"),
        (lambda: vqa_accuracy(["a"], [["a"]], question_types=["x", "y"]), "question_types"),
        (lambda: vqa_accuracy(["a"], [["a"]], answer_types=[]), "answer_types"),
        (lambda: vqa_score("a", []), "answers"),
        (lambda: vqa_score("a", "abc"), "answers"),
        (lambda: vqa_score("a", ["a"], mode="gqa"), "mode"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# 426 cases scored by the official VizWiz evaluation code (its vqaEval.py), with real VizWiz crowd
# answers and real vocabulary answers holding an apostrophe: its contraction table differs from VQA v2's.
VIZWIZ_CASES = json.loads((Path(__file__).parent / "data" / "vizwiz_official_cases.json").read_text(encoding="utf-8"))


def test_vizwiz_mode_matches_the_official_code_on_every_apostrophe_case():
    wrong = [
        (c["prediction"], c["official"], vqa_score(c["prediction"], c["answers"], mode="vizwiz"))
        for c in VIZWIZ_CASES
        if abs(vqa_score(c["prediction"], c["answers"], mode="vizwiz") - c["official"]) > 1e-9
    ]
    assert len(VIZWIZ_CASES) == 426
    assert wrong == []


def test_vizwiz_contractions_use_the_typographic_apostrophe_where_the_official_table_does():
    assert vqa_score("2 oclock", ["2 o'clock"] * 10, mode="vizwiz") == 0.0
    assert vqa_score("2 oclock", ["2 o’clock"] * 10, mode="vizwiz") == 1.0
    assert vqa_score("doesnt say", ["doesn't say"] * 10, mode="vizwiz") == 0.0
    assert vqa_score("cant tell", ["can't tell"] * 10, mode="vizwiz") == 1.0  # one of the ASCII entries
    # VQA v2's table keeps the ASCII apostrophe
    assert normalize_answer("2 oclock") == "2 o'clock"
    assert normalize_answer("2 oclock", mode="vizwiz") == "2 o’clock"
