import os
from pathlib import Path

import pytest

from vqabench import tasks
from vqabench.leaderboard import fmt_params, fmt_seconds, render, table, write
from vqabench.metrics.base import Metric
from vqabench.results import SCHEMA_VERSION
from vqabench.tasks import get_task
from vqabench.tasks.base import Task

GOLDEN = Path(__file__).parent / "golden" / "leaderboard_vqa.md"


def record(
    model,
    seed,
    test,
    *,
    kind="vqa",
    display_name=None,
    val=(0.3, 0.5, 0.6),
    partial=False,
    limit=None,
    trainable=1_234_567,
    weights="pretrained",
    seconds=125.0,
    baseline=None,
    disabled=None,
    profile="quick",
    dataset="mini-clevr",
    finished="2026-01-01T00:00:00Z",
    device="cpu",
):
    """A result record with the fields the renderer reads, as the runner writes them."""
    primary = get_task(kind).primary_metric
    return {
        "schema": SCHEMA_VERSION,
        "model": model,
        "display_name": display_name or model,
        "dataset": dataset,
        "kind": kind,
        "profile": profile,
        "seed": seed,
        "weights": weights,
        "partial": partial,
        "limit": limit,
        "params": {"trainable": trainable, "total": trainable * 10},
        "history": [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "val": {primary: v}} for e, v in enumerate(val)],
        "step_losses": [1.0, 0.8, 0.7, 0.5, 0.45, 0.4],
        "config": {"model": {"train": {"report_epochs": [2]}}},
        "final": {"test": test},
        "baseline": baseline if baseline is not None else {},
        "timing": {"total_seconds": seconds},
        "augmentations": {"used": [], "disabled": disabled or {}},
        "device": device,
        "versions": {"vqabench": "0.1.0"},
        "finished": finished,
    }


def majority(split_acc):
    """A vqa record's baseline: label, prediction and every scalar metric, per split."""
    return {
        split: {"label": 'Majority answer ("yes")', "prediction": {"answer": "yes"}, "vqa_accuracy": acc}
        for split, acc in split_acc.items()
    }


MAJORITY = majority({"val": 0.42, "test": 0.4})


def vqa_records():
    return [
        record(
            "resnet-sbert",
            0,
            {"vqa_accuracy": 0.61, "acc/count": 0.5, "acc/color": 0.7},
            display_name="ResNet-18 + SBERT",
            val=(0.4, 0.55, 0.6),
            baseline=MAJORITY,
            disabled={"hflip": "changes left/right answers"},
        ),
        record(
            "resnet-sbert",
            1,
            {"vqa_accuracy": 0.65, "acc/count": 0.6, "acc/color": 0.72},
            display_name="ResNet-18 + SBERT",
            val=(0.42, 0.57, 0.64),
            baseline=MAJORITY,
            seconds=135.0,
            finished="2026-01-02T10:00:00Z",
        ),
        record(
            "clip-lora@random",
            0,
            {"vqa_accuracy": 0.7, "acc/count": 0.65, "acc/color": 0.75},
            display_name="CLIP LoRA",
            partial=True,
            limit=100,
            trainable=50_000,
            weights="random init",
            val=(0.5, 0.66, 0.69),
            baseline=MAJORITY,
            seconds=3725.0,
        ),
        record(
            "bow-mlp",
            0,
            {"vqa_accuracy": 0.3, "acc/count": 0.2},
            display_name="BoW MLP",
            trainable=0,
            val=(0.2, 0.25),
            baseline=MAJORITY,
            seconds=9.4,
        ),
    ]


def cells(text):
    """The rows of the Markdown tables in ``text`` as lists of stripped cells (rule rows dropped)."""
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|") and not line.startswith("|:")
    ]


def test_render_vqa_matches_golden():
    text = render(vqa_records())["mini-clevr"]
    if os.environ.get("VQABENCH_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")


def test_render_is_independent_of_record_order():
    recs = vqa_records()
    assert render(recs) == render(list(reversed(recs)))


def test_vqa_table_rows_and_columns():
    df = table(vqa_records())
    assert list(df.columns) == [
        "Model",
        "Weights",
        "Trainable params",
        "Val Acc (2 ep)",
        "Val Acc (3 ep)",
        "Test Acc",
        "Acc color",
        "Acc count",
        "Time",
    ]
    assert list(df["Model"]) == [
        "CLIP LoRA [random] (partial: --limit 100)",
        "ResNet-18 + SBERT",
        'Majority answer ("yes")',
        "BoW MLP",
    ]
    assert list(df["Test Acc"]) == ["0.700", "0.630 ± 0.028", "0.400", "0.300"]
    assert list(df["Val Acc (3 ep)"]) == ["0.690", "0.620 ± 0.028", "0.420", "–"]
    assert list(df["Acc color"]) == ["0.750", "0.710 ± 0.014", "–", "–"]
    assert list(df["Trainable params"]) == ["50.0 K", "1.23 M", "0", "0"]
    assert list(df["Time"]) == ["1h 02m", "2m 10s", "–", "0m 09s"]


def test_partial_rows_marked_only_when_partial():
    names = list(table(vqa_records())["Model"])
    assert sum("(partial: --limit" in n for n in names) == 1


def test_partial_label_uses_the_partial_record_limit():
    recs = [record("a", 0, {"vqa_accuracy": 0.5}), record("a", 1, {"vqa_accuracy": 0.6}, partial=True, limit=64)]
    assert list(table(recs)["Model"]) == ["a (partial: --limit 64)"]


def test_no_majority_row_without_baseline():
    recs = [record("a", 0, {"vqa_accuracy": 0.5})]
    assert list(table(recs)["Model"]) == ["a"]


def test_zeroshot_columns():
    r = record(
        "clip",
        0,
        {"top1": 0.52, "top5": 0.9, "mean_per_class_recall": 0.5},
        kind="zeroshot",
        val=(0.4, 0.5, 0.52),
        baseline={
            split: {
                "label": 'Most frequent class ("cube")',
                "prediction": {"logits": [2.0, 1.0]},
                "top1": top1,
                "top5": 1.0,
                "mean_per_class_recall": 0.5,
            }
            for split, top1 in (("val", 0.3), ("test", 0.25))
        },
    )
    text = render([r])["mini-clevr"]
    assert "## zeroshot — quick profile" in text
    assert cells(text) == [
        [
            "Model",
            "Weights",
            "Trainable params",
            "Val top1 (2 ep)",
            "Val top1 (3 ep)",
            "Top-1",
            "Top-5",
            "Mean per-class",
            "Time",
        ],
        ["clip", "pretrained", "1.23 M", "0.500", "0.520", "0.520", "0.900", "0.500", "2m 05s"],
        ['Most frequent class ("cube")', "–", "0", "0.300", "0.300", "0.250", "1.000", "0.500", "–"],
    ]


def test_captioning_columns():
    test = {"bleu_1": 0.6, "bleu_4": 0.2, "meteor": 0.25, "rouge_l": 0.45, "cider": 0.81}
    r = record("cap", 0, test, kind="captioning", val=(0.5, 0.7), profile="paper")
    text = render([r])["mini-clevr"]
    assert "## captioning — paper profile" in text
    main, params = text.split("### Trainable Parameters")
    assert cells(params) == [["Settings", "Trainable Parameters"], ["cap", "1.23 M"]]
    assert cells(main) == [
        [
            "Model",
            "Weights",
            "Trainable params",
            "Val cider (2 ep)",
            "BLEU-1",
            "BLEU-4",
            "METEOR",
            "ROUGE-L",
            "CIDEr",
            "Time",
        ],
        ["cap", "pretrained", "1.23 M", "0.700", "0.600", "0.200", "0.250", "0.450", "0.810", "2m 05s"],
    ]


def test_captioning_sections_follow_reports_003_and_004():
    from vqabench.tasks.caption_tables import decoding_table, selections_table, splits_table

    test = {"bleu_1": 0.6, "bleu_2": 0.5, "bleu_3": 0.4, "bleu_4": 0.3, "meteor": 0.25, "rouge_l": 0.45, "cider": 0.8}
    r = record("cap", 0, test, kind="captioning")
    r["final"]["target_test"] = {**test, "cider": 0.5}
    r["selections"] = {
        "val_loss": {"epoch": 3, "val": 1.2, "split": "test", "test": {"cider": 0.7, "clipscore": 0.71}},
        "cider": {"epoch": 4, "val": 0.9, "split": "test", "test": {"cider": 0.8, "clipscore": 0.72}},
        "clipscore": {"epoch": None, "val": None, "split": "test", "note": "validation never produced clipscore"},
    }
    r["variants"] = [
        {"name": "greedy-50", "split": "test", "test": {"cider": 0.8}, "samples_per_second": 120.0},
        {"name": "beam5", "split": "test", "test": {"cider": 0.9}, "samples_per_second": 30.5},
    ]
    assert cells("\n".join(selections_table([r]))) == [
        ["Model", "Model Saved Method", "Epoch", "CIDEr", "CLIPScore", "Note"],
        ["cap", "By best validation loss", "3", "0.700", "0.710", ""],
        ["cap", "By best CIDEr", "4", "0.800", "0.720", ""],
        ["cap", "By best CLIPScore", "–", "–", "–", "validation never produced clipscore"],
    ]
    assert cells("\n".join(decoding_table([r]))) == [
        ["Model", "Decoding", "CIDEr", "CLIPScore", "Captions / s"],
        ["cap", "greedy-50", "0.800", "–", "120.0"],
        ["cap", "beam5", "0.900", "–", "30.5"],
    ]
    rows = cells("\n".join(splits_table([r])))
    assert rows[0] == ["Model", "Split", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
    assert [row[:2] + row[-1:] for row in rows[1:]] == [["cap", "target_test", "0.5000"], ["cap", "test", "0.8000"]]
    # One evaluated test split: the main table says it all.
    del r["final"]["target_test"]
    assert splits_table([r]) == []


def test_render_one_file_per_dataset_one_table_per_kind_and_profile():
    recs = vqa_records() + [
        record("m", 0, {"vqa_accuracy": 0.5}, profile="paper"),
        record("m", 0, {"top1": 0.5}, kind="zeroshot"),
        record("m", 0, {"vqa_accuracy": 0.5}, dataset="vqa-v2"),
    ]
    out = render(recs)
    assert sorted(out) == ["mini-clevr", "vqa-v2"]
    headings = [line for line in out["mini-clevr"].splitlines() if line.startswith("## ")]
    assert headings == ["## vqa — paper profile", "## vqa — quick profile", "## zeroshot — quick profile"]
    assert out["vqa-v2"].startswith("# vqa-v2\n")


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0"), (999, "1.0 K"), (99_999, "100.0 K"), (100_000, "0.10 M"), (86_000_000, "86.00 M")]
)
def test_fmt_params(n, text):
    assert fmt_params(n) == text


@pytest.mark.parametrize(
    ("s", "text"),
    [(0, "0m 00s"), (59.6, "1m 00s"), (125, "2m 05s"), (3599, "59m 59s"), (3600, "1h 00m"), (7325, "2h 02m")],
)
def test_fmt_seconds(s, text):
    assert fmt_seconds(s) == text


def test_write_creates_markdown_and_curves(tmp_path):
    recs = vqa_records() + [
        record("m", 0, {"top1": 0.5}, kind="zeroshot"),
        record("m", 0, {"vqa_accuracy": 0.5}, dataset="vqa-v2", val=()),
    ]
    paths = write(recs, tmp_path / "lb")
    assert sorted(p.name for p in paths) == ["mini-clevr.md", "vqa-v2.md"]
    files = sorted(p.name for p in (tmp_path / "lb").iterdir())
    assert files == ["mini-clevr-vqa-quick.png", "mini-clevr-zeroshot-quick.png", "mini-clevr.md", "vqa-v2.md"]
    for png in ["mini-clevr-vqa-quick.png", "mini-clevr-zeroshot-quick.png"]:
        assert (tmp_path / "lb" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "lb" / "mini-clevr.md").read_text()
    assert "![training curves](mini-clevr-vqa-quick.png)" in md
    assert "![training curves](mini-clevr-zeroshot-quick.png)" in md
    assert md.rstrip("\n") == render(
        recs,
        {
            "mini-clevr": {
                ("vqa", "quick"): "mini-clevr-vqa-quick.png",
                ("zeroshot", "quick"): "mini-clevr-zeroshot-quick.png",
            }
        },
    )["mini-clevr"].rstrip("\n")
    assert "![training curves]" not in (tmp_path / "lb" / "vqa-v2.md").read_text()


# -- task-driven behaviour: direction, evaluation-only models, stages, extra splits --------------


class Counting(Task):
    """A plugin-style kind whose primary metric is lower-is-better."""

    name = "counting"
    primary_metric = "mae"
    metric_names = ("mae", "exact")
    extra_metrics = {"mae": Metric("mae", higher_is_better=False, description="mean absolute count error")}
    columns = (("mae", "MAE"), ("exact", "Exact"))


@pytest.fixture
def counting():
    before = dict(tasks._PLUGIN)
    tasks.set_plugin_tasks({**before, "counting": Counting()})
    yield
    tasks.set_plugin_tasks(before)


def test_lower_is_better_primary_metric_sorts_ascending(counting):
    base = {"test": {"label": "Mean count (3)", "prediction": {"count": 3}, "mae": 1.5, "exact": 0.2}}
    recs = [
        record("far", 0, {"mae": 2.0, "exact": 0.1}, kind="counting", baseline=base),
        record("close", 0, {"mae": 0.5, "exact": 0.6}, kind="counting", baseline=base),
        record("none", 0, {"exact": 0.9}, kind="counting", baseline=base),  # no primary metric: last
        record("mid", 0, {"mae": 1.0, "exact": 0.4}, kind="counting", baseline=base),
    ]
    df = table(recs)
    assert list(df["Model"]) == ["close", "mid", "Mean count (3)", "far", "none"]
    assert list(df["MAE"]) == ["0.500", "1.000", "1.500", "2.000", "–"]
    assert "Val mae (3 ep)" in df.columns


def test_higher_is_better_primary_metric_sorts_descending():
    recs = [record(m, 0, {"vqa_accuracy": a}) for m, a in (("b", 0.2), ("a", 0.9), ("c", 0.5))]
    assert list(table(recs)["Model"]) == ["a", "c", "b"]


def untrained(model, test, **kw):
    r = record(model, 0, test, **kw)
    for key in ("history", "step_losses"):
        del r[key]
    r["trained"] = False
    r["training"] = "not trained (evaluation only)"
    r["config"] = {"model": {"eval": {"splits": ["val", "test"]}}}
    return r


def test_evaluation_only_models_show_not_trained_and_no_val_curve():
    recs = [untrained("zs", {"top1": 0.4}, kind="zeroshot"), record("tuned", 0, {"top1": 0.6}, kind="zeroshot")]
    df = table(recs)
    assert list(df["Model"]) == ["tuned", "zs"]
    assert list(df["Trainable params"]) == ["1.23 M", "not trained"]
    assert list(df["Val top1 (3 ep)"]) == ["0.600", "–"]
    only = table([untrained("zs", {"top1": 0.4}, kind="zeroshot")])
    assert [c for c in only.columns if c.startswith("Val")] == []


def test_write_draws_no_curves_for_evaluation_only_models(tmp_path):
    write([untrained("zs", {"top1": 0.4}, kind="zeroshot")], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini-clevr.md"]


def staged(model, test, probe, tune):
    r = record(model, 0, test)
    r["stages"] = [
        {"name": "probe", "best_epoch": 1, "val": {"vqa_accuracy": probe}},
        {"name": "tune", "best_epoch": 3, "val": {"vqa_accuracy": tune}},
    ]
    return r


def test_staged_records_get_a_val_column_per_stage():
    single = record("single", 0, {"vqa_accuracy": 0.5})
    single["stages"] = [{"name": "train", "best_epoch": 3, "val": {"vqa_accuracy": 0.6}}]
    df = table([staged("lora", {"vqa_accuracy": 0.7}, 0.4, 0.66), single])
    assert "Val vqa_accuracy after probe" in df.columns and "Val vqa_accuracy after tune" in df.columns
    assert "Val vqa_accuracy after train" not in df.columns
    assert list(df["Val vqa_accuracy after probe"]) == ["0.400", "–"]
    assert list(df["Val vqa_accuracy after tune"]) == ["0.660", "–"]


def test_single_stage_records_get_no_stage_columns():
    r = record("single", 0, {"vqa_accuracy": 0.5})
    r["stages"] = [{"name": "train", "best_epoch": 3, "val": {"vqa_accuracy": 0.6}}]
    assert not [c for c in table([r]).columns if "after" in c]


def test_extra_evaluated_splits_get_a_primary_metric_column():
    r = record("da", 0, {"vqa_accuracy": 0.7}, baseline=majority({"test": 0.4, "target_test": 0.3}))
    r["final"]["target_test"] = {"vqa_accuracy": 0.55}
    r["final"]["val"] = {"vqa_accuracy": 0.69}
    df = table([r, record("plain", 0, {"vqa_accuracy": 0.6})])
    assert list(df["Test Acc (target_test)"]) == ["0.550", "–", "0.300"]
    assert not any("(val)" in c for c in df.columns)


def test_answerability_baseline_row_uses_its_label():
    base = {
        "test": {
            "label": "Prior (answerable 0.80)",
            "prediction": {"answerable_score": 0.8, "answer": "yes"},
            "ap_unanswerable": 0.2,
            "auroc": 0.5,
            "f1_unanswerable": 0.0,
            "accuracy": 0.8,
            "vqa_accuracy": 0.3,
        }
    }
    test = {"ap_unanswerable": 0.6, "auroc": 0.8, "accuracy": 0.85, "vqa_accuracy": 0.5}
    df = table([record("m", 0, test, kind="answerability", baseline=base)])
    assert list(df["Model"]) == ["m", "Prior (answerable 0.80)"]
    assert list(df["AP (unanswerable)"]) == ["0.600", "0.200"]
    assert "F1 @0.5" not in df.columns
    assert list(df["VQA Acc"]) == ["0.500", "0.300"]
    # A column only the baseline has is left out (as optional metrics are).
    df = table([record("m", 0, {"ap_unanswerable": 0.6}, kind="answerability", baseline=base)])
    assert "VQA Acc" not in df.columns and "AUROC" not in df.columns


def test_report_001_metrics_block_per_model_with_its_prediction_distribution_and_stages():
    test = {
        "vqa_accuracy": 0.35,
        "weighted_precision": 0.47,
        "weighted_recall": 0.22,
        "weighted_f1": 0.22,
        "prediction_distribution": [["yes", 40], ["no", 30]],
    }
    r = record("dino-bert-two-stage", 0, test, display_name="DINO-BERT two-stage", val=(0.18, 0.3, 0.34))
    r.update(best_epoch=3, stages=[{"name": "head", "val": {"vqa_accuracy": 0.185}}, {"name": "lora", "val": {}}])
    r["timing"]["epoch_seconds"] = [2.0, 4.0]
    lines = get_task("vqa").sections([r, record("plain", 0, {"vqa_accuracy": 0.5})])  # no weighted metrics: no block
    text = "\n".join(lines)
    assert text.count("<details>") == 1 and "DINO-BERT two-stage: metrics and prediction distribution" in text
    for row in (
        "| Accuracy (validation, best epoch) | 0.340 |",
        "| Accuracy (training sample, best epoch) | – |",  # train.train_metrics off
        "| Accuracy (test) | 0.350 |",
        "| Precision (test, weighted) | 0.470 |",
        "| F1-score (test, weighted) | 0.220 |",
        "| Accuracy (validation) after stage head | 0.185 |",
        "| Accuracy (validation) after stage lora | – |",
        "| Time per epoch | 3.0 s |",
        "| yes | 40 |",
    ):
        assert row in text, row
