"""Report 003: class-attribute accuracy, per-prompt scores and the prompt tables of the leaderboard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vqabench import results
from vqabench.gate import Threshold, check
from vqabench.leaderboard import render, table
from vqabench.metrics.zeroshot import attribute_accuracy
from vqabench.tasks import TaskData, get_task
from vqabench.tasks.zeroshot import ImageSample

TASK = get_task("zeroshot")

# Mini-CLEVR-like classes "<colour> <shape>".
CLASSES = ["red cube", "red sphere", "blue cube", "blue sphere"]
ATTRIBUTES = {"colour": ["red", "red", "blue", "blue"], "shape": ["cube", "sphere", "cube", "sphere"]}
LABELS = [0, 1, 2, 3]
# The ensemble predicts 1, 1, 0 and (a 2 / 3 tie, to the lower index) 2:
# top-1 1/4; colour right on images 0, 1, 3 (3/4); shape right on images 1, 2 (2/4).
ENSEMBLE = [[0, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1]]
TEMPLATES = ["a photo of a {c}.", "{0} {0} {0} {0} {0}", "{}"]


def one_hot(c: int) -> list[float]:
    return [1.0 if k == c else 0.0 for k in range(4)]


# Per template, the predicted class of each image:
#   "a photo of a {c}."   0 1 2 3: all right           top-1 1.0, colour 1.0, shape 1.0
#   "{0} {0} {0} {0} {0}" 2 3 0 1: the other colour    top-1 0.0, colour 0.0, shape 1.0
#   "{}"                  0 1 3 2: cubes and spheres swapped for blue   top-1 0.5, colour 1.0, shape 0.5
PREDICTED = {TEMPLATES[0]: [0, 1, 2, 3], TEMPLATES[1]: [2, 3, 0, 1], TEMPLATES[2]: [0, 1, 3, 2]}


def lines(with_prompts: bool = True) -> list[dict]:
    out = []
    for i, label in enumerate(LABELS):
        line = {"id": f"i{i}", "label": label, "logits": ENSEMBLE[i]}
        if with_prompts:
            line["prompt_logits"] = {t: one_hot(PREDICTED[t][i]) for t in TEMPLATES}
        out.append(line)
    return out


def data(**kw) -> TaskData:
    samples = [ImageSample(f"i{i}", "/x.png", c) for i, c in enumerate(LABELS)]
    base = dict(class_names=CLASSES, templates=TEMPLATES, class_attributes=ATTRIBUTES)
    return TaskData("mini-clevr", "zeroshot", Path("/"), {"train": samples, "test": samples}, "r0", **{**base, **kw})


# -- attribute_accuracy -----------------------------------------------------------------------------


def test_attribute_accuracy_counts_a_shared_attribute_value_as_right():
    assert attribute_accuracy(np.array(ENSEMBLE), LABELS, ATTRIBUTES["colour"]) == 0.75
    assert attribute_accuracy(np.array(ENSEMBLE), LABELS, ATTRIBUTES["shape"]) == 0.5
    # The class itself is an attribute with one value per class: attribute accuracy is top-1.
    assert attribute_accuracy(np.array(ENSEMBLE), LABELS, CLASSES) == 0.25


def test_attribute_accuracy_breaks_ties_to_the_lower_class_index():
    # Image 3 (blue sphere) ties blue cube and blue sphere: argmax says blue cube, a wrong shape.
    assert attribute_accuracy(np.array([[0, 0, 1, 1]]), [3], ATTRIBUTES["shape"]) == 0.0
    assert attribute_accuracy(np.array([[0, 0, 1, 1]]), [2], ATTRIBUTES["shape"]) == 1.0


def test_attribute_accuracy_needs_one_value_per_class():
    with pytest.raises(ValueError, match="values has 3 items but logits has 4 classes"):
        attribute_accuracy(np.array(ENSEMBLE), LABELS, ["red", "red", "blue"])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        attribute_accuracy(np.array(ENSEMBLE), [0, 1, 2, 4], ATTRIBUTES["colour"])


# -- score ------------------------------------------------------------------------------------------


def test_score_options_carry_the_class_attributes_as_json():
    assert TASK.score_options(data()) == {"num_classes": 4, "attributes": ATTRIBUTES}
    assert TASK.score_options(data(class_attributes=None)) == {"num_classes": 4, "attributes": None}


def test_check_data_names_dataset_and_attribute_of_a_short_list():
    TASK.check_data(data())
    with pytest.raises(ValueError, match=r"dataset 'mini-clevr' \(zeroshot\): class attribute 'shape' has 3 values"):
        TASK.check_data(data(class_attributes={**ATTRIBUTES, "shape": ["cube", "sphere", "cube"]}))


def test_score_reports_attribute_accuracy_every_prompt_and_their_spread():
    scored = TASK.score(lines(), **TASK.score_options(data()))
    assert list(scored) == [
        "top1",
        "mean_per_class_recall",
        "colour_accuracy",
        "shape_accuracy",
        "prompts",
        "by_prompt",
        "prompt_top1_mean",
        "prompt_top1_std",
    ]
    assert scored["top1"] == 0.25 and scored["mean_per_class_recall"] == 0.25
    assert scored["colour_accuracy"] == 0.75 and scored["shape_accuracy"] == 0.5
    assert scored["prompts"] == TEMPLATES  # the model's order
    assert scored["by_prompt"] == {
        "a photo of a {c}.": {"top1": 1.0, "mean_per_class_recall": 1.0, "colour_accuracy": 1.0, "shape_accuracy": 1.0},
        "{0} {0} {0} {0} {0}": {
            "top1": 0.0,
            "mean_per_class_recall": 0.0,
            "colour_accuracy": 0.0,
            "shape_accuracy": 1.0,
        },
        "{}": {"top1": 0.5, "mean_per_class_recall": 0.5, "colour_accuracy": 1.0, "shape_accuracy": 0.5},
    }
    # top-1 over the templates: 1.0, 0.0, 0.5; the sample standard deviation sqrt(0.5 / 2) = 0.5
    # (the population one would be sqrt(0.5 / 3) = 0.408).
    assert scored["prompt_top1_mean"] == 0.5
    assert scored["prompt_top1_std"] == pytest.approx(0.5)


def test_top5_per_prompt_with_five_classes():
    rows = [{"id": "a", "label": 4, "logits": [5, 4, 3, 2, 1], "prompt_logits": {"{}": [5, 4, 3, 2, 1]}}]
    scored = TASK.score(rows, num_classes=5)
    assert scored["top5"] == 1.0 and scored["by_prompt"]["{}"]["top5"] == 1.0


def test_one_template_has_no_spread():
    rows = [{**ln, "prompt_logits": {"{}": ln["prompt_logits"]["{}"]}} for ln in lines()]
    scored = TASK.score(rows, num_classes=4)
    assert scored["prompt_top1_mean"] == 0.5 and scored["prompt_top1_std"] == 0.0


def test_without_prompt_logits_or_attributes_only_the_ensemble_is_scored():
    assert TASK.score(lines(with_prompts=False), num_classes=4) == {"top1": 0.25, "mean_per_class_recall": 0.25}
    scored = TASK.score(lines(with_prompts=False), num_classes=4, attributes=ATTRIBUTES)
    assert "by_prompt" not in scored and scored["shape_accuracy"] == 0.5


def test_every_image_needs_the_same_templates():
    rows = lines()
    rows[2]["prompt_logits"] = dict(list(rows[2]["prompt_logits"].items())[:2])
    with pytest.raises(ValueError, match="prediction 'i2' has prompt_logits for"):
        TASK.score(rows, num_classes=4)


def test_baseline_scores_its_own_logits_not_the_models_prompts():
    label, prediction = TASK.baseline(data().splits["train"], data())
    # As the runner scores a baseline: the model's lines with the baseline's prediction laid over them.
    scored = TASK.score([{**ln, **prediction} for ln in lines()], **TASK.score_options(data()))
    assert "by_prompt" not in scored and "prompt_top1_mean" not in scored
    # One image per class, so the baseline predicts class 0 (red cube) everywhere.
    assert label == 'Most frequent class ("red cube")'
    assert scored == {"top1": 0.25, "mean_per_class_recall": 0.25, "colour_accuracy": 0.5, "shape_accuracy": 0.5}


# -- directions and the gate ------------------------------------------------------------------------


def test_directions_of_the_dynamic_metrics():
    assert TASK.metric("colour_accuracy").higher_is_better
    assert TASK.metric("shape_accuracy").higher_is_better
    assert TASK.metric("prompt_top1_mean").higher_is_better
    assert TASK.metric("prompt_top1_std").higher_is_better is False
    with pytest.raises(KeyError, match="does not produce metric '_accuracy'"):
        TASK.metric("_accuracy")
    # Not best-metric choices: a model without prompt_logits lacks them.
    with pytest.raises(
        ValueError, match=r"selection metric 'prompt_top1_mean' \(train.best_metric / train.keep_best\) is not"
    ):
        TASK.check_best_metric("prompt_top1_mean")


def test_gate_thresholds_follow_the_direction(tmp_path):
    test = {"top1": 0.25, "shape_accuracy": 0.5, "prompt_top1_mean": 0.5, "prompt_top1_std": 0.2}
    rec = {
        "schema": results.SCHEMA_VERSION,
        "dataset": "mini-clevr",
        "kind": "zeroshot",
        "model": "clip",
        "profile": "quick",
        "seed": 0,
        "final": {"test": test},
    }
    results.atomic_write_json(
        results.cell_dir(tmp_path, "mini-clevr", "zeroshot", "clip", "quick", 0) / "record.json", rec
    )

    def status(metric, worst):
        return check([Threshold("mini-clevr", "zeroshot", "clip", f"test.{metric}", worst=worst)], tmp_path)[0][
            "status"
        ]

    assert status("prompt_top1_std", 0.3) == "pass" and status("prompt_top1_std", 0.1) == "FAIL"
    assert status("prompt_top1_mean", 0.4) == "pass" and status("prompt_top1_mean", 0.6) == "FAIL"
    assert status("shape_accuracy", 0.6) == "FAIL"


# -- leaderboard ------------------------------------------------------------------------------------


def record(model: str, test: dict, *, display_name: str, seed: int = 0, baseline: dict | None = None) -> dict:
    """An evaluation-only zeroshot record with the fields the renderer reads."""
    return {
        "schema": results.SCHEMA_VERSION,
        "model": model,
        "display_name": display_name,
        "dataset": "mini-clevr",
        "kind": "zeroshot",
        "profile": "quick",
        "seed": seed,
        "weights": "pretrained",
        "trained": False,
        "partial": False,
        "limit": None,
        "params": {"trainable": 0, "total": 1000},
        "history": [],
        "step_losses": [],
        "config": {"model": {}},
        "final": {"test": test},
        "baseline": baseline or {},
        "timing": {"total_seconds": 30.0},
        "augmentations": {"used": [], "disabled": {}},
        "device": "cpu",
        "versions": {"vqabench": "0.1.0"},
        "finished": "2026-01-01T00:00:00Z",
    }


def records() -> list[dict]:
    opts = TASK.score_options(data())
    _, prediction = TASK.baseline(data().splits["train"], data())
    base = TASK.score([{**ln, **prediction} for ln in lines()], **opts)
    baseline = {"test": {"label": 'Most frequent class ("red cube")', "prediction": prediction, **base}}
    return [
        record("clip@openai", TASK.score(lines(), **opts), display_name="CLIP ViT-B/32", baseline=baseline),
        record("mini-clip", TASK.score(lines(with_prompts=False), **opts), display_name="Mini-CLIP", baseline=baseline),
    ]


PROMPT_SECTION = """### Prompts — CLIP ViT-B/32 [openai] (test split)

| Prompt                                       | Top-1   | Colour acc   | Shape acc   |
|:---------------------------------------------|:--------|:-------------|:------------|
| a photo of a {object}.                       | 1.000   | 1.000        | 1.000       |
| {object} {object} {object} {object} {object} | 0.000   | 0.000        | 1.000       |
| {object}                                     | 0.500   | 1.000        | 0.500       |
| Ensemble (mean of normalised embeddings)     | 0.250   | 0.750        | 0.500       |

Sensitivity over the 3 prompts: top-1 mean 0.500, standard deviation 0.500.
"""


def cells(text: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|") and not line.startswith("|:")
    ]


def test_attribute_columns_follow_the_static_ones():
    assert TASK.columns_for(records()) == [
        ("top1", "Top-1"),
        ("top5", "Top-5"),
        ("mean_per_class_recall", "Mean per-class"),
        ("colour_accuracy", "Colour acc"),
        ("shape_accuracy", "Shape acc"),
    ]
    df = table(records())
    assert list(df.columns) == [
        "Model",
        "Weights",
        "Trainable params",
        "Top-1",
        "Mean per-class",
        "Colour acc",
        "Shape acc",
        "Time",
    ]
    assert df.values.tolist()[-1] == [
        'Most frequent class ("red cube")',
        "–",
        "0",
        "0.250",
        "0.250",
        "0.500",
        "0.500",
        "–",
    ]
    # Records without class attributes get no attribute columns.
    plain = record("m", {"top1": 0.5, "mean_per_class_recall": 0.5}, display_name="M")
    assert TASK.columns_for([plain]) == list(TASK.columns)


def test_render_adds_the_prompt_table_of_the_model_with_prompt_logits():
    text = render(records())["mini-clevr"]
    main = text.index("| Model")
    assert text.index(PROMPT_SECTION) > main
    assert text.count("### Prompts") == 1  # Mini-CLIP has no prompt_logits, so no section
    assert "Mini-CLIP" in text
    rows = cells(text[text.index("### Prompts") :])
    assert [r[0] for r in rows] == [
        "Prompt",
        "a photo of a {object}.",
        "{object} {object} {object} {object} {object}",
        "{object}",
        "Ensemble (mean of normalised embeddings)",
    ]


def test_no_prompt_section_without_prompt_logits():
    text = render(records()[1:])["mini-clevr"]
    assert "### Prompts" not in text and "Sensitivity" not in text
    assert cells(text)[0][-3:] == ["Colour acc", "Shape acc", "Time"]


def test_several_seeds_show_the_lowest_one():
    first, _ = records()
    other = {**first, "seed": 1, "final": {"test": {**first["final"]["test"], "prompt_top1_mean": 0.9}}}
    text = render([other, first])["mini-clevr"]
    assert "### Prompts — CLIP ViT-B/32 [openai] (test split, seed 0)" in text
    assert "top-1 mean 0.500, standard deviation 0.500." in text
