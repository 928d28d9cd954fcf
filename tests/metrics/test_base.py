import re

import numpy as np
import pytest

from vqabench.metrics import base
from vqabench.metrics.answerability import answerability_metrics, risk_coverage
from vqabench.metrics.base import METRICS, Metric, get_metric
from vqabench.metrics.classification import majority_baseline, weighted_prf
from vqabench.metrics.vqa import vqa_accuracy
from vqabench.metrics.zeroshot import zero_shot_metrics

# Keys the metric functions return that are breakdowns or metadata, not scalar metrics.
NON_METRIC_KEYS = {"per_question_type", "per_answer_type", "coverage", "risk_accuracy", "answer", "clipscore_model"}
CAPTION_AND_CLIP_KEYS = {
    "bleu_1",
    "bleu_2",
    "bleu_3",
    "bleu_4",
    "meteor",
    "rouge_l",
    "cider",
    "spice",
    "clipscore",
    "refclipscore",
}


def test_every_returned_scalar_key_is_registered():
    returned = set()
    returned |= set(vqa_accuracy(["yes"], [["yes"] * 10], ["is"], ["yes/no"]))
    returned |= set(weighted_prf(["a"], ["a"])) | {"accuracy"}
    returned |= set(majority_baseline(["a"], [["a"]]))
    returned |= set(answerability_metrics([True, False], [0.8, 0.1]))
    returned |= set(risk_coverage([1.0], [0.5]))
    returned |= set(zero_shot_metrics(np.eye(5), [0, 1, 2, 3, 4]))
    returned |= CAPTION_AND_CLIP_KEYS
    assert returned - NON_METRIC_KEYS == set(METRICS)


def test_keys_are_snake_case_and_match_their_metric():
    for key, metric in METRICS.items():
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", key)
        assert metric.name == key
        assert metric.description


def test_every_key_is_documented_in_the_module_docstring():
    for key in METRICS:
        assert re.search(rf"^{key}\s", base.__doc__, re.MULTILINE), key


def test_direction():
    assert not get_metric("aurc").higher_is_better
    assert all(m.higher_is_better for name, m in METRICS.items() if name != "aurc")


def test_metric_is_frozen_with_defaults():
    metric = Metric("x")
    assert metric.higher_is_better and metric.description == ""
    with pytest.raises(AttributeError):
        metric.name = "y"


def test_unknown_metric_suggests_close_names():
    with pytest.raises(KeyError, match="did you mean vqa_accuracy"):
        get_metric("vqa_acuracy")
    with pytest.raises(KeyError, match="unknown metric 'zzz'") as excinfo:
        get_metric("zzz")
    assert "did you mean" not in str(excinfo.value)
