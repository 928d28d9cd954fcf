"""Answer vocabularies and training targets (vqabench.vocab): the rules its docstring documents."""

from __future__ import annotations

import pytest

from vqabench.metrics import vqa_score
from vqabench.tasks.qa import QASample
from vqabench.vocab import AnswerTargets, answer_vocabulary, coverage, describe_rule


def qa(*answers: str, id: str = "q") -> QASample:
    return QASample(id, "/img.png", "q?", tuple(answers))


# Answer counts over every human answer of every question:
#   no 5, yes 5, two 3, blue 2, red 2, cat 1
TRAIN = [
    qa("yes", "yes", "no", "two", "blue"),
    qa("no", "no", "no", "yes", "red"),
    qa("yes", "yes", "two", "two", "cat"),
    qa("no", "blue", "red"),
]


# -- answer_vocabulary ------------------------------------------------------------------------------


def test_all_keeps_every_answer_by_frequency_then_alphabetically():
    assert answer_vocabulary(TRAIN) == ["no", "yes", "two", "blue", "red", "cat"]
    assert answer_vocabulary(TRAIN, "all") == answer_vocabulary(TRAIN)


def test_all_counts_every_human_answer_not_only_the_consensus():
    # "cat" is never a consensus answer, yet it is in the vocabulary.
    assert "cat" in answer_vocabulary(TRAIN)
    assert "cat" not in {s.consensus for s in TRAIN}


def test_all_ignores_min_count_and_top_k():
    assert answer_vocabulary(TRAIN, "all", top_k=2, min_count=5) == answer_vocabulary(TRAIN)


@pytest.mark.parametrize(
    ("top_k", "min_count", "expected"),
    [
        (None, 1, ["no", "yes", "two", "blue", "red", "cat"]),
        (3, 1, ["no", "yes", "two"]),
        (4, 1, ["no", "yes", "two", "blue"]),  # the blue / red tie is broken alphabetically
        (None, 2, ["no", "yes", "two", "blue", "red"]),
        (None, 3, ["no", "yes", "two"]),
        (2, 3, ["no", "yes"]),
        (10, 3, ["no", "yes", "two"]),  # min_count first, then at most top_k
        (None, 6, []),
    ],
)
def test_top_rule_with_top_k_and_min_count(top_k, min_count, expected):
    assert answer_vocabulary(TRAIN, "top", top_k=top_k, min_count=min_count) == expected


def test_index_zero_is_the_most_frequent_answer():
    train = [qa("b"), qa("a"), qa("b"), qa("c"), qa("c"), qa("c")]
    assert answer_vocabulary(train) == ["c", "b", "a"]


def test_unknown_rule_names_the_rules():
    with pytest.raises(ValueError, match=r"unknown vocabulary rule 'most'; choose all, top or confident"):
        answer_vocabulary(TRAIN, "most")


def test_describe_rule():
    assert describe_rule() == "all training answers"
    assert describe_rule("top", 3000, 9) == "top 3000 training answers with count >= 9"
    assert describe_rule("top") == "top all training answers with count >= 1"


# -- AnswerTargets.hard -----------------------------------------------------------------------------

VOCAB = ["yes", "no", "two", "blue", "red"]


def test_hard_single_answer_is_its_index_or_minus_one():
    t = AnswerTargets(VOCAB)
    assert [t.hard(("no",)), t.hard(("red",)), t.hard(("cat",))] == [1, 4, -1]
    assert len(t) == 5


def test_hard_ten_answers_is_the_most_common_in_vocabulary_answer():
    t = AnswerTargets(VOCAB)
    ten = ("red",) * 2 + ("blue",) * 3 + ("cat",) * 4 + ("yes",)
    # "cat" is the most common answer but is not in the vocabulary: "blue" (3) beats "red" (2).
    assert t.hard(ten) == VOCAB.index("blue")


def test_hard_ten_answers_tie_goes_to_the_answer_earlier_in_the_vocabulary():
    t = AnswerTargets(VOCAB)
    ten = ("red",) * 4 + ("two",) * 4 + ("cat",) * 2
    assert t.hard(ten) == VOCAB.index("two")
    # Order of the human answers does not matter, only the vocabulary order.
    assert t.hard(tuple(reversed(ten))) == VOCAB.index("two")
    assert AnswerTargets(["red", "two"]).hard(ten) == 0


def test_hard_ten_answers_none_in_vocabulary_is_minus_one():
    t = AnswerTargets(VOCAB)
    assert t.hard(("cat",) * 6 + ("dog",) * 4) == -1


def test_hard_is_memoised_per_answer_set():
    t = AnswerTargets(VOCAB)
    ten = ("yes",) * 6 + ("no",) * 4
    assert t.hard(ten) == t.hard(list(ten)) == 0
    assert list(t._hard) == [ten]


def test_hard_of_empty_vocabulary_is_minus_one():
    assert AnswerTargets([]).hard(("yes", "no")) == -1


# -- AnswerTargets.soft -----------------------------------------------------------------------------

TEN_ANSWER_SETS = [
    ("yes",) * 10,
    ("yes",) * 4 + ("no",) * 6,
    ("yes",) * 3 + ("no",) * 2 + ("two",) * 5,
    ("blue",) * 2 + ("red",) * 2 + ("cat",) * 6,
    ("red", "blue", "two", "no", "yes", "cat", "dog", "cow", "pig", "owl"),
    ("cat",) * 10,
]


@pytest.mark.parametrize("answers", TEN_ANSWER_SETS)
def test_soft_equals_the_official_vqa_score_of_each_vocabulary_answer(answers):
    t = AnswerTargets(VOCAB)
    soft = dict(t.soft(answers))
    for i, a in enumerate(VOCAB):
        assert soft.get(i, 0.0) == pytest.approx(vqa_score(a, list(answers)), abs=1e-12), a
    assert all(v > 0 for v in soft.values())  # answers scoring 0 are left out
    assert set(soft) == {VOCAB.index(a) for a in answers if a in VOCAB}


def test_soft_known_values():
    t = AnswerTargets(VOCAB)
    # 3 of 10: leave-one-out mean of min(1, matches / 3) = (7 * 1 + 3 * 2/3) / 10.
    assert dict(t.soft(("yes",) * 3 + ("no",) * 7)) == pytest.approx({0: 0.9, 1: 1.0})
    assert dict(t.soft(("two",) * 1 + ("no",) * 9)) == pytest.approx({2: 0.3, 1: 1.0})
    assert t.soft(("cat",) * 10) == []
    assert t.soft(("two",)) == [(2, 1.0)]


def test_soft_follows_the_vizwiz_mode():
    t = AnswerTargets(["yes"], mode="vizwiz")
    answers = ["yes"] * 2 + ["no"] * 8
    assert dict(t.soft(answers)) == pytest.approx({0: vqa_score("yes", answers, mode="vizwiz")})


# -- coverage ---------------------------------------------------------------------------------------


def test_coverage_is_the_fraction_whose_best_score_is_one():
    samples = [
        qa(*(("yes",) * 4 + ("cat",) * 6), id="a"),  # yes: 4 matches -> 1.0
        qa(*(("yes",) * 3 + ("cat",) * 7), id="b"),  # yes: 3 matches -> 0.9, not covered
        qa(*(("cat",) * 10), id="c"),  # nothing in the vocabulary
        qa("two", id="d"),  # single answer, in the vocabulary
    ]
    assert coverage(samples, VOCAB) == pytest.approx(0.5)
    assert coverage(samples, [*VOCAB, "cat"]) == 1.0
    assert coverage(samples, []) == 0.0


def test_coverage_of_no_samples_is_none():
    assert coverage([], VOCAB) is None


def test_coverage_is_the_accuracy_ceiling_of_the_hard_target():
    # A classifier that always predicts the hard target reaches at least the coverage.
    samples = [qa(*s, id=str(i)) for i, s in enumerate(TEN_ANSWER_SETS)]
    t = AnswerTargets(VOCAB)
    best = [vqa_score(VOCAB[t.hard(s.answers)], list(s.answers)) if t.hard(s.answers) >= 0 else 0 for s in samples]
    assert sum(b >= 1.0 for b in best) / len(samples) == coverage(samples, VOCAB)


def test_confident_rule_takes_each_question_s_most_frequent_sure_answer():
    def sure(answers, confidences):
        return QASample("q", "i.png", "what?", tuple(answers), answer_confidences=tuple(confidences))

    train = [
        sure(["a", "b", "b", "c"], ["yes", "yes", "maybe", "yes"]),  # sure: a, b, c (ties: first given) -> a
        sure(["b", "b", "a"], ["yes", "yes", "yes"]),  # -> b
        sure(["c", "c"], ["no", "maybe"]),  # nobody sure: nothing
        sure(["b"], ["yes"]),  # -> b
    ]
    assert answer_vocabulary(train, "confident") == ["b", "a"]
    assert "confidence" in describe_rule("confident")
