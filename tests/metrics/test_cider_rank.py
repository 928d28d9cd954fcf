"""The vectorised CIDEr-D of a constant prediction: equal to pycocoevalcap's ``Cider``, and the best
training caption it picks is the one a brute-force search with the official scorer picks."""

from __future__ import annotations

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from vqabench.metrics.captioning import caption_metrics
from vqabench.metrics.cider_rank import (
    best_constant_caption,
    constant_cider,
    frequent_captions,
    official_constant_cider,
    ptb_tokenize,
)

# Tokenised as pycocoevalcap's scorers take them: lowercase, punctuation removed, spaces between tokens.
REFERENCES = [
    ["a man riding a wave on top of a surfboard", "a surfer rides a large wave", "man surfing in the ocean"],
    ["a plate of food with broccoli and rice", "broccoli and rice on a white plate"],
    ["two dogs play in the snow", "dogs running through the snow", "a dog a dog and a dog in snow", "snow"],
    ["a man on a surfboard", "a red bus on a street"],
]
CANDIDATES = [
    "a man riding a wave on top of a surfboard",  # one image's reference itself
    "a dog a dog a dog a dog",  # repeated n-grams: the clipping min(tf_c, tf_r) matters
    "snow",  # one word: no bigrams, so pycocoevalcap's "length" is 0
    "the quick brown fox jumps",  # no n-gram in any reference (idf = log(#images)) but "the"
    "a",  # in every image's references: idf 0 for the unigram
    "a man on a surfboard in the snow with a plate of broccoli and rice and two dogs",  # long: length penalty
]


def _official(candidate: str, references: list[list[str]]) -> float:
    gts = {i: refs for i, refs in enumerate(references)}
    return float(Cider().compute_score(gts, {i: [candidate] for i in gts})[0])


def test_vectorised_cider_equals_pycocoevalcap_on_each_candidate():
    fast = constant_cider(CANDIDATES, REFERENCES)
    official = [_official(c, REFERENCES) for c in CANDIDATES]
    assert fast == pytest.approx(official, abs=1e-6)
    assert len(set(np.round(official, 6))) == len(official) and max(official) > 0.5  # the cases differ


def test_vectorised_cider_equals_pycocoevalcap_on_random_corpora():
    rng = np.random.default_rng(3)
    words = "a the red blue square circle on of dog man riding wave".split()

    def sentence() -> str:
        return " ".join(rng.choice(words, int(rng.integers(1, 14))))

    refs = [[sentence() for _ in range(int(rng.integers(1, 7)))] for _ in range(25)]
    candidates = [sentence() for _ in range(15)]
    official = [official_constant_cider(c, refs) for c in candidates]
    assert constant_cider(candidates, refs) == pytest.approx(official, abs=1e-6)


def test_constant_cider_needs_references():
    with pytest.raises(ValueError, match="at least one reference"):
        constant_cider(["a"], [["a"], []])


def test_frequent_captions_group_spellings_and_cap_the_pool():
    captions = ["A dog.", "a dog", "a dog", "A cat", "a bird", "a bird", "a bird", "...", "A Cat!"]
    # "a dog" x3 (two spellings), "a bird" x3, "a cat" x2; ties alphabetical; "..." has no words.
    # The most frequent spelling represents its group; between equally frequent ones, the first in order.
    assert frequent_captions(captions, 10) == ["a bird", "a dog", "A Cat!"]
    assert frequent_captions(captions, 2) == ["a bird", "a dog"]


RAW_REFERENCES = [
    ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave!", "Man surfing, in the ocean."],
    ["A plate of food with broccoli and rice.", "Broccoli and rice on a white plate."],
    ["Two dogs play in the snow.", "Dogs running through the snow.", "A dog in the snow."],
]
RAW_TRAINING = [
    "A man riding a wave on top of a surfboard.",
    "A dog in the snow.",
    "A dog in the snow",
    "Broccoli on a plate.",
    "A red bus on a street.",
    "A red bus on a street.",
    "A red bus on a street.",
    "A man on a surfboard in the snow.",
]


def test_best_caption_is_the_brute_force_argmax_of_the_official_scorer():
    best = best_constant_caption(RAW_TRAINING, RAW_REFERENCES)
    tokens, refs = ptb_tokenize(sorted(set(RAW_TRAINING)), RAW_REFERENCES)
    brute = {raw: official_constant_cider(tok, refs) for raw, tok in zip(sorted(set(RAW_TRAINING)), tokens)}
    winner = max(brute, key=brute.get)
    assert best.caption == winner and best.cider == pytest.approx(brute[winner], abs=1e-12)
    assert best.caption != "A red bus on a street."  # the most frequent caption is not the best one
    assert best.ranked == 5  # distinct captions once case and punctuation are ignored
    # The number is the one the caption metrics give that caption predicted for every image.
    preds = {str(i): best.caption for i in range(len(RAW_REFERENCES))}
    scored = caption_metrics(preds, {str(i): r for i, r in enumerate(RAW_REFERENCES)}, meteor=False)
    assert scored["cider"] == pytest.approx(best.cider, abs=1e-6)


def test_the_candidate_cap_keeps_the_most_frequent_captions():
    # Capped to one candidate: the most frequent caption is the only one ranked.
    best = best_constant_caption(RAW_TRAINING, RAW_REFERENCES, max_candidates=1)
    assert (best.caption, best.ranked) == ("A red bus on a street.", 1)


def test_no_caption_no_baseline():
    assert best_constant_caption([], RAW_REFERENCES) is None
    assert best_constant_caption(["!!"], RAW_REFERENCES) is None
    assert best_constant_caption(["a dog"], []) is None
