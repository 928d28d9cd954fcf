import json

from helpers import run_cli, run_in


def _run_example(tmp_path):
    proc = run_in(tmp_path, "example-bow", "example-colors/vqa", "--leaderboards", str(tmp_path / "lb"))
    assert proc.returncode == 0, proc.stderr
    return tmp_path / "runs"


def test_run_then_check_passes_and_fails_on_a_regressed_threshold(only_example, tmp_path):
    runs = _run_example(tmp_path)
    assert (tmp_path / "lb" / "example-colors.md").exists() and (
        tmp_path / "lb" / "example-colors-vqa-quick.png"
    ).exists()
    good = tmp_path / "good.toml"
    head = '[[check]]\ndataset = "example-colors"\nkind = "vqa"\n'
    good.write_text(
        f'{head}model = "example-bow"\nmetric = "test.vqa_accuracy"\nmin = 0.1\n'
        # It learns: a margin over the majority answer, and a risk-coverage area below the baseline's.
        f'{head}model = "example-bow"\nmetric = "test.vqa_accuracy"\nrelative_to = "baseline"\nmin = 0.05\n'
        f'{head}model = "example-bow"\nmetric = "test.aurc"\nrelative_to = "baseline"\nworst = 0.0\n'
    )
    proc = run_cli("check", "--thresholds", str(good), str(runs))
    assert proc.returncode == 0, proc.stdout
    assert "3 passed, 0 failed" in proc.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(
        f'{head}model = "example-bow"\nmetric = "test.vqa_accuracy"\nmin = 1.01\n'
        f'{head}model = "nobody"\nmetric = "test.vqa_accuracy"\nmin = 0\n'
    )
    proc = run_cli("check", "--thresholds", str(bad), str(runs))
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout and "MISSING" in proc.stdout and "0 passed, 2 failed" in proc.stdout


def test_score_recomputes_metrics_from_stored_predictions(only_example, tmp_path):
    runs = _run_example(tmp_path)
    rec_path = next(runs.rglob("record.json"))
    rec = json.loads(rec_path.read_text())
    true_acc = rec["final"]["test"]["vqa_accuracy"]
    true_base = dict(rec["baseline"]["test"])
    rec["final"]["test"]["vqa_accuracy"] = -1.0  # as if an older metric had been wrong
    rec["baseline"]["test"]["vqa_accuracy"] = -1.0
    del rec["baseline"]["test"]["aurc"]
    rec_path.write_text(json.dumps(rec))
    proc = run_cli("score", str(runs))
    assert proc.returncode == 0, proc.stderr
    assert f"updated {rec_path}" in proc.stdout
    after = json.loads(rec_path.read_text())
    assert after["final"]["test"]["vqa_accuracy"] == true_acc
    # The baseline is rescored from its stored prediction over the same lines, as the run scored it.
    assert after["baseline"]["test"] == true_base and after["schema"] == 2


def test_check_reports_a_bad_thresholds_file(tmp_path):
    bad = tmp_path / "t.toml"
    bad.write_text('[[check]]\ndataset = "x"\n')
    proc = run_cli("check", "--thresholds", str(bad), str(tmp_path))
    assert proc.returncode == 2 and "missing field 'kind'" in proc.stderr and str(bad) in proc.stderr


def test_bad_override_names_the_field(only_example, tmp_path):
    proc = run_cli(
        "run",
        "--models",
        "example-bow",
        "--tasks",
        "example-colors/vqa",
        "--out",
        str(tmp_path),
        "--set",
        "train.epoch=3",
    )
    assert proc.returncode == 2
    assert "unknown field 'epoch'" in proc.stderr and "did you mean 'epochs'" in proc.stderr
