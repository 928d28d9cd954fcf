import re

import pytest

from vqabench import results
from vqabench.gate import Threshold, check, load_thresholds

GOOD = """
[[check]]
dataset = "mini-clevr"
kind = "vqa"
model = "resnet-sbert"
metric = "test.vqa_accuracy"
min = 0.5
"""


def thresholds_file(tmp_path, text):
    path = tmp_path / "thresholds.toml"
    path.write_text(text)
    return path


def err(path, rest):
    return "^" + re.escape(str(path)) + rest


def test_load_thresholds(tmp_path):
    path = thresholds_file(
        tmp_path,
        GOOD + '\n[[check]]\ndataset = "d"\nkind = "zeroshot"\nmodel = "m@random"\nprofile = "quick"\n'
        'metric = "val.top1"\nmax = 0.9\nmin = 0.1\nrelative_to = "majority"\n'
        '\n[[check]]\ndataset = "d"\nkind = "vqa"\nmodel = "m"\nmetric = "test.aurc"\nworst = 0.4\n'
        'relative_to = "baseline"\n',
    )
    assert load_thresholds(path) == [
        Threshold("mini-clevr", "vqa", "resnet-sbert", "test.vqa_accuracy", min=0.5),
        Threshold("d", "zeroshot", "m@random", "val.top1", min=0.1, max=0.9, profile="quick", relative_to="majority"),
        Threshold("d", "vqa", "m", "test.aurc", worst=0.4, relative_to="baseline"),
    ]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ValueError, match=f"^thresholds file {re.escape(str(path))} does not exist$"):
        load_thresholds(path)


def test_bad_toml_names_file(tmp_path):
    path = thresholds_file(tmp_path, "[[check]\ndataset = ")
    with pytest.raises(ValueError, match=err(path, ": not valid TOML: ")):
        load_thresholds(path)


def test_no_entries(tmp_path):
    path = thresholds_file(tmp_path, "# nothing\n")
    with pytest.raises(ValueError, match=err(path, r": no \[\[check\]\] entries$")):
        load_thresholds(path)


@pytest.mark.parametrize("field", ["dataset", "kind", "model", "metric"])
def test_missing_field_names_entry_and_field(tmp_path, field):
    second = "\n".join(line for line in GOOD.splitlines() if not line.startswith(field + " "))
    path = thresholds_file(tmp_path, GOOD + second)
    with pytest.raises(ValueError, match=err(path, rf": \[\[check\]\] #2: missing field '{field}'$")):
        load_thresholds(path)


def test_unknown_field_names_entry_field_and_known_fields(tmp_path):
    path = thresholds_file(tmp_path, GOOD.replace("min = 0.5", "minimum = 0.5"))
    with pytest.raises(
        ValueError,
        match=err(
            path,
            r": \[\[check\]\] #1: unknown field 'minimum'; "
            r"fields are dataset, kind, max, metric, min, model, profile, relative_to, worst$",
        ),
    ):
        load_thresholds(path)


def test_metric_without_split(tmp_path):
    path = thresholds_file(tmp_path, GOOD.replace('"test.vqa_accuracy"', '"vqa_accuracy"'))
    with pytest.raises(ValueError, match=err(path, r": \[\[check\]\] #1: metric 'vqa_accuracy' must be SPLIT\.METRIC")):
        load_thresholds(path)


def test_no_min_or_max(tmp_path):
    path = thresholds_file(tmp_path, GOOD.replace("min = 0.5", ""))
    with pytest.raises(ValueError, match=err(path, r": \[\[check\]\] #1: give min, max or worst$")):
        load_thresholds(path)


def test_bad_relative_to(tmp_path):
    path = thresholds_file(tmp_path, GOOD + 'relative_to = "random"\n')
    with pytest.raises(
        ValueError,
        match=err(path, r": \[\[check\]\] #1: relative_to must be \"baseline\" \(or its older name \"majority\"\)$"),
    ):
        load_thresholds(path)


def test_single_table_instead_of_array(tmp_path):
    path = thresholds_file(tmp_path, GOOD.replace("[[check]]", "[check]"))
    with pytest.raises(ValueError) as exc:
        load_thresholds(path)
    assert str(exc.value).startswith(str(path))
    assert "[check]" in str(exc.value).replace("[[check]]", "") and "unknown field 'a'" not in str(exc.value)


def test_non_numeric_bound(tmp_path):
    path = thresholds_file(tmp_path, GOOD.replace("min = 0.5", 'min = "0.5"'))
    with pytest.raises(ValueError, match=err(path, r": \[\[check\]\] #1: .*min")):
        load_thresholds(path)


# -- check ------------------------------------------------------------------------------------------


def write_record(runs, acc, *, seed=0, model="resnet-sbert", profile="quick", majority=0.4, metric="vqa_accuracy"):
    rec = {
        "schema": results.SCHEMA_VERSION,
        "dataset": "mini-clevr",
        "kind": "vqa",
        "model": model,
        "profile": profile,
        "seed": seed,
        "final": {"test": {metric: acc}},
        "baseline": {"test": {"label": 'Majority answer ("yes")', "prediction": {"answer": "yes"}, metric: majority}},
    }
    results.atomic_write_json(results.cell_dir(runs, "mini-clevr", "vqa", model, profile, seed) / "record.json", rec)


def th(**kw):
    base = dict(dataset="mini-clevr", kind="vqa", model="resnet-sbert", metric="test.vqa_accuracy")
    return Threshold(**{**base, **kw})


def test_check_pass(tmp_path):
    write_record(tmp_path, 0.62)
    assert check([th(min=0.5)], tmp_path) == [
        {
            "check": "mini-clevr/vqa resnet-sbert test.vqa_accuracy",
            "value": 0.62,
            "min": 0.5,
            "max": None,
            "seeds": 1,
            "status": "pass",
        }
    ]


@pytest.mark.parametrize(
    ("acc", "bounds", "status"),
    [
        (0.49, {"min": 0.5}, "FAIL"),
        (0.5, {"min": 0.5}, "pass"),
        (0.91, {"max": 0.9}, "FAIL"),
        (0.9, {"max": 0.9}, "pass"),
        (0.7, {"min": 0.5, "max": 0.9}, "pass"),
        (0.95, {"min": 0.5, "max": 0.9}, "FAIL"),
    ],
)
def test_check_bounds(tmp_path, acc, bounds, status):
    write_record(tmp_path, acc)
    assert check([th(**bounds)], tmp_path)[0]["status"] == status


def test_check_missing_record(tmp_path):
    write_record(tmp_path, 0.9, model="other")
    [row] = check([th(min=0.5)], tmp_path)
    assert (row["status"], row["value"], row["seeds"]) == ("MISSING", None, 0)


def test_check_missing_for_profile(tmp_path):
    write_record(tmp_path, 0.9, profile="paper")
    assert check([th(min=0.5, profile="quick")], tmp_path)[0]["status"] == "MISSING"
    assert check([th(min=0.5, profile="paper")], tmp_path)[0]["status"] == "pass"
    assert check([th(min=0.5)], tmp_path)[0]["status"] == "pass"


def test_check_no_metric(tmp_path):
    write_record(tmp_path, 0.9, metric="top1")
    [row] = check([th(min=0.5)], tmp_path)
    assert (row["status"], row["value"], row["seeds"]) == ("NO METRIC", None, 0)
    assert check([th(min=0.5, metric="val.vqa_accuracy")], tmp_path)[0]["status"] == "NO METRIC"


def test_check_mean_over_seeds(tmp_path):
    write_record(tmp_path, 0.375, seed=0)
    write_record(tmp_path, 0.75, seed=1)
    [row] = check([th(min=0.57)], tmp_path)
    assert (row["value"], row["seeds"], row["status"]) == (0.5625, 2, "FAIL")
    assert check([th(min=0.5625)], tmp_path)[0]["status"] == "pass"


def test_check_value_is_rounded(tmp_path):
    write_record(tmp_path, 0.123456)
    assert check([th(min=0.1)], tmp_path)[0]["value"] == 0.1235


@pytest.mark.parametrize("relative_to", ["baseline", "majority"])
def test_check_relative_to_baseline(tmp_path, relative_to):
    write_record(tmp_path, 0.625, majority=0.5, seed=0)
    write_record(tmp_path, 0.5, majority=0.25, seed=1)
    # Margins 0.125 and 0.25: mean 0.1875, while the plain accuracy mean is 0.5625.
    [ok, fail, plain] = check(
        [th(min=0.18, relative_to=relative_to), th(min=0.19, relative_to=relative_to), th(min=0.19)], tmp_path
    )
    assert ok["check"] == "mini-clevr/vqa resnet-sbert test.vqa_accuracy vs baseline"
    assert (ok["value"], ok["seeds"], ok["status"]) == (0.1875, 2, "pass")
    assert (fail["value"], fail["status"]) == (0.1875, "FAIL")
    assert (plain["value"], plain["status"]) == (0.5625, "pass")


def test_check_relative_to_baseline_without_baseline(tmp_path):
    write_record(tmp_path, 0.62)
    path = next(tmp_path.rglob("record.json"))
    rec = results.read_record(path)
    del rec["baseline"]
    results.atomic_write_json(path, rec)
    assert check([th(min=0.0, relative_to="baseline")], tmp_path)[0]["status"] == "NO METRIC"
    assert check([th(min=0.0)], tmp_path)[0]["status"] == "pass"


def test_label_with_profile():
    assert th(min=0.5, profile="paper").label == "mini-clevr/vqa resnet-sbert [paper] test.vqa_accuracy"


def test_check_end_to_end_from_file(tmp_path):
    runs = tmp_path / "runs"
    write_record(runs, 0.61)
    rows = check(load_thresholds(thresholds_file(tmp_path, GOOD)), runs)
    assert [r["status"] for r in rows] == ["pass"]


# -- direction: a lower-is-better metric ------------------------------------------------------------


def write_aurc(runs, aurc, *, seed=0, baseline=0.5, kind="vqa"):
    rec = {
        "schema": results.SCHEMA_VERSION,
        "dataset": "mini-clevr",
        "kind": kind,
        "model": "resnet-sbert",
        "profile": "quick",
        "seed": seed,
        "final": {"test": {"vqa_accuracy": 0.7, "aurc": aurc}},
        "baseline": {
            "test": {"label": "Majority", "prediction": {"answer": "yes"}, "vqa_accuracy": 0.4, "aurc": baseline}
        },
    }
    results.atomic_write_json(
        results.cell_dir(runs, "mini-clevr", kind, "resnet-sbert", "quick", seed) / "record.json", rec
    )


@pytest.mark.parametrize(("aurc", "status"), [(0.2, "pass"), (0.3, "pass"), (0.31, "FAIL")])
def test_worst_is_a_maximum_for_a_lower_is_better_metric(tmp_path, aurc, status):
    write_aurc(tmp_path, aurc)
    [row] = check([th(metric="test.aurc", worst=0.3)], tmp_path)
    assert (row["value"], row["status"]) == (aurc, status)


@pytest.mark.parametrize(("acc", "status"), [(0.69, "FAIL"), (0.7, "pass"), (0.8, "pass")])
def test_worst_is_a_minimum_for_a_higher_is_better_metric(tmp_path, acc, status):
    write_record(tmp_path, acc)
    assert check([th(worst=0.7)], tmp_path)[0]["status"] == status


def test_relative_to_baseline_of_a_lower_is_better_metric_is_baseline_minus_value(tmp_path):
    write_aurc(tmp_path, 0.125, baseline=0.5)
    [margin, worse] = check(
        [
            th(metric="test.aurc", relative_to="baseline", min=0.375),
            th(metric="test.aurc", relative_to="baseline", min=0.4),
        ],
        tmp_path,
    )
    assert (margin["value"], margin["status"]) == (0.375, "pass")
    assert (worse["value"], worse["status"]) == (0.375, "FAIL")


@pytest.mark.parametrize(("aurc", "status"), [(0.25, "pass"), (0.3, "pass"), (0.35, "FAIL")])
def test_worst_margin_is_a_minimum_margin_even_for_a_lower_is_better_metric(tmp_path, aurc, status):
    # baseline 0.5: margins 0.25, 0.2, 0.15; a margin is better when higher, so worst = 0.2 is a minimum.
    write_aurc(tmp_path, aurc, baseline=0.5)
    [row] = check([th(metric="test.aurc", relative_to="baseline", worst=0.2)], tmp_path)
    assert row["status"] == status


def test_a_kind_no_plugin_registers_counts_as_higher_is_better(tmp_path):
    write_aurc(tmp_path, 0.4, kind="not-registered")
    [row] = check([th(kind="not-registered", metric="test.aurc", worst=0.3)], tmp_path)
    assert (row["value"], row["status"]) == (0.4, "pass")


def test_worst_alone_is_enough_and_must_be_a_number(tmp_path):
    path = thresholds_file(tmp_path, GOOD.replace("min = 0.5", "worst = 0.5"))
    assert load_thresholds(path)[0].worst == 0.5
    path = thresholds_file(tmp_path, GOOD.replace("min = 0.5", "worst = true"))
    with pytest.raises(ValueError, match=err(path, r": \[\[check\]\] #1: worst must be a number, got True$")):
        load_thresholds(path)
