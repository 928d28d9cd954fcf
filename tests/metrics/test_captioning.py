import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from vqabench.metrics import captioning
from vqabench.metrics.captioning import caption_metrics

PREDICTIONS = {
    "1": "A man is riding a horse on the beach.",
    "2": "Two dogs play in the snow.",
    "3": "A plate of food with broccoli.",
}
REFERENCES = {
    "1": ["A man rides a horse on a beach.", "A person riding a brown horse by the sea."],
    "2": ["Two dogs are playing in snow.", "Dogs running through the snow."],
    "3": ["A plate with broccoli and rice.", "Food on a white plate, with broccoli."],
}


def _tokenized():
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
    res = tokenizer.tokenize({k: [{"caption": PREDICTIONS[k]}] for k in REFERENCES})
    return gts, res


def test_scores_equal_pycocoevalcap_scorers_called_directly():
    result = caption_metrics(PREDICTIONS, REFERENCES, meteor=False)
    gts, res = _tokenized()
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert [result[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx(bleu, abs=1e-12)
    assert result["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
    assert result["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)
    assert set(result) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"}


def test_identical_prediction_and_references_score_one():
    caption = "a cat sits on a red mat"
    result = caption_metrics({"a": caption, "b": "two birds"}, {"a": [caption], "b": ["two birds"]}, meteor=False)
    # BLEU-3 and BLEU-4 are defined for "two birds" too: n-gram counts are pooled over the corpus.
    for n in range(1, 5):
        assert result[f"bleu_{n}"] == pytest.approx(1.0, abs=1e-6)
    assert result["rouge_l"] == 1.0


def test_meteor_equals_the_pycocoevalcap_scorer_on_tokenized_input():
    # A METEOR JVM loads a 60 MB paraphrase table (~13 s on two cores), so this test reuses the
    # one caption_metrics started rather than paying for a second.
    result = caption_metrics(PREDICTIONS, REFERENCES)
    scorer = captioning._meteor_scorer()
    assert isinstance(scorer, Meteor)
    gts, res = _tokenized()
    assert result["meteor"] == pytest.approx(scorer.compute_score(gts, res)[0], abs=1e-12)
    assert set(result) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"}
    same = caption_metrics({"a": "a cat sits on a mat"}, {"a": ["a cat sits on a mat"]})
    assert same["meteor"] == pytest.approx(1.0)


def test_spice_unavailable_raises_runtime_error_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(captioning, "_CORENLP_JAR", tmp_path / "stanford-corenlp-3.6.0.jar")
    with pytest.raises(RuntimeError, match="CoreNLP") as excinfo:
        caption_metrics(PREDICTIONS, REFERENCES, spice=True)
    assert "Java 8" in str(excinfo.value)
    assert "spice=False" in str(excinfo.value)


def test_missing_java_raises_a_clear_error(monkeypatch):
    monkeypatch.setattr(captioning.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="Java"):
        caption_metrics(PREDICTIONS, REFERENCES)


@pytest.mark.parametrize(
    ("predictions", "references", "name"),
    [
        ({}, {}, "predictions"),
        ({"1": "a"}, {"2": ["a"]}, "references"),
        ({"1": "a"}, {"1": []}, "references"),
        ({"1": "a"}, {"1": "a"}, "references"),
    ],
)
def test_bad_input_raises_value_error(predictions, references, name):
    with pytest.raises(ValueError, match=name):
        caption_metrics(predictions, references)
