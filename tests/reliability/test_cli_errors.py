"""Bad values and expected failures: each is refused early or recorded with counts, and the CLI says
one line naming the flag, field or path and the fix (``--debug``: the traceback)."""

from __future__ import annotations

import errno
import json
import os
import types
from pathlib import Path

import pytest

from vqabench import cli, evaluate, files
from vqabench.cell import check_lr_groups, resolve, vocab_warnings
from vqabench.plugins import load_plugins
from vqabench.results import RECORD_FIELDS, Ledger, RunWarning, write_jsonl
from vqabench.runner import RunOptions, plan
from vqabench.tasks import TaskData
from vqabench.tasks.qa import QASample
from vqabench.tasks.vqa import TASK as VQA
from vqabench.vocab import AnswerTargets

NO_SPACE = "no space left on device writing {}: free space there, or write elsewhere (--out, --cache-dir)"


def main_run(tmp_path: Path, *extra: str, models: str = "example-bow", out: str = "runs") -> int:
    """``vqabench run`` in this process (monkeypatches reach it), on the example plugin's colours."""
    where = ["--out", str(tmp_path / out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    lb = ["--leaderboards", str(tmp_path / "lb")]
    return cli.main(["run", "--models", models, "--tasks", "example-colors/vqa", *where, *lb, *extra])


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


# --- numbers on the command line -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        (
            "--epochs",
            "0",
            "argument --epochs: must be at least 1, got 0 (a model that trains trains at least one epoch; "
            "an evaluation-only model has no recipe)",
        ),
        ("--batch-size", "0", "argument --batch-size: must be at least 1, got 0"),
        ("--limit", "-5", "argument --limit: must be at least 1, got -5"),
        ("--limit", "0", "argument --limit: must be at least 1, got 0"),
        ("--seed", "-1", "argument --seed: must be at least 0, got -1 (seeds are non-negative)"),
        ("--epochs", "two", "argument --epochs: expected an integer, got 'two'"),
    ],
)
def test_bad_numbers_are_refused_naming_the_flag(capsys, flag, value, expected):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--tasks", "example-colors", flag, value])
    assert exc.value.code == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize(
    ("models", "setting", "expected"),
    [
        ("example-bow", "train.epochs=0", "train.epochs must be >= 1, got 0"),
        ("example-staged", "example-staged:train.stages.adapt.epochs=0", "train.stages.adapt.epochs must be >= 1"),
        ("example-bow", "train.batch_size=0", "train.batch_size must be >= 1, got 0"),
    ],
)
def test_zero_epochs_through_set_are_refused_before_anything_runs(
    only_example, tmp_path, capsys, models, setting, expected
):
    assert main_run(tmp_path, "--set", setting, models=models) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


# --- --lr names a parameter group of the model ----------------------------------------------------


def test_lr_of_a_group_the_model_lacks_fails_the_cell_before_training(only_example, tmp_path, capsys):
    # A killed run of another config left checkpoints: a refused cell must not delete them.
    ckpt = tmp_path / "runs" / "example-colors" / "vqa" / "example-bow" / "quick-seed0" / "ckpt"
    (ckpt / "0-train" / "last").mkdir(parents=True)
    (ckpt / "config_hash").write_text("an-older-config")
    (ckpt / "0-train" / "last" / "weights.safetensors").write_bytes(b"epoch 3")
    assert main_run(tmp_path, "--lr", "haed=0.1") == 1
    err = capsys.readouterr().err
    message = "--lr haed=...: model example-bow has no parameter group 'haed'; its groups: head"
    assert message in err
    ledger = json.loads((tmp_path / "runs" / "status.json").read_text())["cells"]
    assert message in ledger["example-bow|example-colors/vqa|quick|seed0"]["error"]
    # Refused before any epoch: no record, and the older checkpoints are as they were.
    assert not list((tmp_path / "runs").rglob("record.json"))
    assert sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file()) == [
        "0-train/last/weights.safetensors",
        "config_hash",
    ]
    assert (ckpt / "config_hash").read_text() == "an-older-config"


def test_lr_that_no_stage_reads_is_refused_before_anything_runs(only_example, tmp_path, capsys):
    assert main_run(tmp_path, "--lr", "adapter=0.5", models="example-staged") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "model example-staged: --lr adapter=... would change nothing: each stage of its recipe (head, adapt)" in line
    assert "--set example-staged:train.stages.adapt.lrs.adapter=VALUE" in line
    assert not (tmp_path / "runs").exists()


def test_lr_takes_a_group_name_not_a_key(tmp_path, capsys):
    assert main_run(tmp_path, "--lr", "example-bow:head=0.1") == 2
    assert "use --set MODEL:train.lrs.GROUP=LR" in one_error_line(capsys.readouterr().err)


def test_lr_groups_count_the_groups_a_stage_adds_and_only_the_names_given_with_lr(only_example, tmp_path):
    registry, _ = load_plugins()
    # Stage "head" takes the recipe's top-level rates, so --lr reaches it; stage "adapt" trains
    # the adapter group, which the model only has once begin_stage added it.
    overrides = {"example-staged:train.stages.head.lrs": "", "train.lrs.adapter": "0.5", "train.lrs.typo": "1"}
    opts = RunOptions(
        models=("example-staged",), tasks=("example-colors/vqa",), model_overrides=overrides, lr_groups=("adapter",)
    )
    (cell,), _ = plan(registry, opts)
    mcfg, dcfg = resolve(cell, opts)
    model = cell.model.build(mcfg, cell.dataset.load(dcfg, "vqa", tmp_path), "cpu")
    assert set(model.param_groups()) == {"head"}
    check_lr_groups(cell, opts, mcfg)
    check_lr_groups(cell, opts, mcfg, model)  # "typo" came from --set, not --lr: not checked
    typo = RunOptions(**{**vars(opts), "lr_groups": ("adapter", "typo")})
    with pytest.raises(ValueError, match=r"--lr typo=\.\.\.: model example-staged has no parameter group 'typo'; "):
        check_lr_groups(cell, typo, mcfg, model)
    with pytest.raises(ValueError, match=r"its groups: adapter, head"):
        check_lr_groups(cell, typo, mcfg, model)


# --- answers ----------------------------------------------------------------------------------------


def _qa_data(answers_of_q1, vocab=("red", "blue")) -> TaskData:
    good = QASample("q0", "/img/0.png", "what color?", ("red",))
    bad = QASample("q1", "/img/1.png", "what color?", answers_of_q1)
    return TaskData("jsonset", "vqa", Path("/"), {"train": [good], "test": [good, bad]}, "rev", list(vocab))


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (("red", 2), "field 'answers[1]' is a int (2), not a string"),
        (("red", None), "field 'answers[1]' is a NoneType (None), not a string"),
        ("red", "field 'answers' must be a tuple of strings, got str 'red'"),
        ((), "field 'answers' is empty"),
    ],
)
def test_a_non_string_answer_is_refused_naming_dataset_split_sample_and_field(answers, expected):
    with pytest.raises(ValueError, match="^dataset 'jsonset' \\(vqa\\): split 'test', sample 'q1': ") as exc:
        VQA.check_data(_qa_data(answers))
    assert expected in str(exc.value)
    VQA.check_data(_qa_data(("blue",)))  # the same data with a string answer passes


def test_answers_outside_the_vocabulary_are_counted_per_split_and_recorded():
    samples = [
        QASample(f"q{i}", "/img.png", "?", answers) for i, answers in enumerate([("red",), ("mauve",), ("teal",)])
    ]
    data = types.SimpleNamespace(unlabelled=frozenset({"challenge"}))
    splits = {"train": samples[:1], "test": samples, "challenge": samples}  # an unlabelled split has none to miss
    prep = types.SimpleNamespace(answers=AnswerTargets(["red", "blue"]), splits=splits, data=data)
    assert vocab_warnings(prep) == [
        "2 of 3 test questions have no answer in the vocabulary (2 answers): training has no target for them and "
        "they lower its coverage (the accuracy ceiling)"
    ]
    assert vocab_warnings(types.SimpleNamespace(answers=None, splits={"test": samples}, data=data)) == []
    assert "warnings" in RECORD_FIELDS
    # Scoring takes them: a prediction scores 0 against a reference outside the vocabulary.
    lines = [{"answer": "red", "answers": list(s.answers), "question_type": "", "answer_type": ""} for s in samples]
    assert evaluate.score("vqa", lines)["vqa_accuracy"] == pytest.approx(1 / 3)


# --- vqabench score and leaderboard on nothing -------------------------------------------------------


def test_score_on_a_missing_empty_or_file_path_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for path, expected in (
        (tmp_path / "missing", f"{tmp_path / 'missing'} does not exist: give the --out directory of a vqabench run"),
        (tmp_path / "empty", f"no result records (record.json) under {tmp_path / 'empty'}"),
        (tmp_path / "file", f"{tmp_path / 'file'} is not a directory"),
    ):
        assert cli.main(["score", str(path)]) == 2
        assert expected in one_error_line(capsys.readouterr().err)
    assert cli.main(["leaderboard", str(tmp_path / "empty"), "--out", str(tmp_path / "lb")]) == 2
    assert "no result records (record.json) under" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv", [["--debug", "score", "MISSING"], ["score", "MISSING", "--debug"]])
def test_debug_shows_the_traceback_instead(tmp_path, capsys, argv):
    argv = [a.replace("MISSING", str(tmp_path / "missing")) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "FileNotFoundError" in err
    assert not any(line.startswith("error: ") for line in err.splitlines())


# --- --out that cannot be written ---------------------------------------------------------------------


def test_out_that_is_a_file_is_refused_before_anything_runs(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    assert main_run(tmp_path, out="taken") == 2
    target = tmp_path / "taken"
    assert one_error_line(capsys.readouterr().err) == (
        f"error: --out {target}: {target} is a file; give a directory (or move the file) (--debug shows the traceback)"
    )
    assert main_run(tmp_path, out="taken/runs") == 2
    assert f"{target} is a file, so {target / 'runs'} cannot be created" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory anyway")
def test_out_in_a_read_only_directory_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert main_run(tmp_path, out="locked/runs") == 2
        assert f"{locked} is not writable by this user (permission denied)" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_out_in_a_read_only_directory_is_refused_as_os_access_reports_it(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(files.os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    assert main_run(tmp_path, out="locked/runs") == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--out {locked / 'runs'}: {locked} is not writable by this user (permission denied)" in line
    assert "choose another --out or make it writable" in line and not (locked / "runs").exists()


# --- disk full and permission denied while writing -----------------------------------------------------


def test_disk_full_while_writing_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    path.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError) as exc:
        files.atomic_write_json(path, {"a": 1})
    assert exc.value.errno == errno.ENOSPC and str(exc.value) == f"[Errno 28] {NO_SPACE.format(path)}"
    assert cli.describe_error(exc.value) == NO_SPACE.format(path)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["record.json"]


def test_disk_full_writing_predictions_names_them(tmp_path, monkeypatch):
    real = Path.write_bytes

    def full_for_predictions(self, data):
        if self.name.startswith(".predictions-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_for_predictions)
    target = tmp_path / "cell" / "predictions-test.jsonl"
    with pytest.raises(OSError, match=f"no space left on device writing {target}"):
        write_jsonl(target, [{"id": "q0"}])
    assert not target.exists() and os.listdir(target.parent) == []


def test_permission_denied_while_writing_names_the_file(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "status.json"

    def denied(**kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(kwargs["dir"]))

    monkeypatch.setattr(files.tempfile, "mkstemp", denied)
    with pytest.raises(OSError) as exc:
        files.atomic_write_text(target, "x")
    assert cli.describe_error(exc.value) == (
        f"permission denied writing {target} (at {target.parent}): give this user access to it (chmod, chown), "
        f"or choose another path"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory anyway")
def test_permission_denied_in_a_read_only_directory_names_the_file(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(OSError, match=f"permission denied writing {locked / 'x.json'}"):
            files.atomic_write_json(locked / "x.json", {})
    finally:
        locked.chmod(0o700)


def test_a_message_of_several_lines_is_printed_as_one(monkeypatch, tmp_path, capsys):
    def several(args):
        raise RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be reported later")

    monkeypatch.setattr(cli, "cmd_score", several)
    assert cli.main(["score", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "error: CUDA error: out of memory; CUDA kernel errors might be reported later (--debug shows the traceback)\n"
    )


def test_oserrors_from_anywhere_become_one_line(tmp_path):
    path = tmp_path / "file" / "sub"
    assert cli.describe_error(NotADirectoryError(errno.ENOTDIR, "Not a directory", str(path))) == (
        f"not a directory: {path}: a part of the path is a file: choose another path, or move that file"
    )
    assert cli.describe_error(OSError(errno.EIO, "Input/output error", str(path))) == f"Input/output error: {path}"
    assert cli.describe_error(KeyError("unknown model 'x'")) == "unknown model 'x'"


def test_disk_full_writing_a_record_fails_that_cell_naming_the_record(only_example, tmp_path, monkeypatch, capsys):
    real = Path.write_bytes

    def full_for_records(self, data):
        if self.name.startswith(".record.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_for_records)
    assert main_run(tmp_path, "--epochs", "1") == 1
    (cell,) = {p.parent for p in (tmp_path / "runs").rglob("predictions-test.jsonl")}
    message = NO_SPACE.format(cell / "record.json")
    assert message in capsys.readouterr().err
    ledger = json.loads((tmp_path / "runs" / "status.json").read_text())["cells"]
    assert ledger["example-bow|example-colors/vqa|quick|seed0"]["state"] == "failed"
    assert message in ledger["example-bow|example-colors/vqa|quick|seed0"]["error"]
    assert not (cell / "record.json").exists() and not list(cell.glob(".record.json.*"))


def test_disk_full_writing_the_ledger_is_one_error_line(only_example, tmp_path, monkeypatch, capsys):
    real = Path.write_bytes

    def full_for_ledger(self, data):
        if self.name.startswith(".status.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_for_ledger)
    assert main_run(tmp_path) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == f"error: {NO_SPACE.format(tmp_path / 'runs' / 'status.json')} (--debug shows the traceback)"


# --- the ledger --------------------------------------------------------------------------------------


def test_an_unreadable_ledger_is_moved_aside_and_rebuilt_from_the_records(only_example, tmp_path, capsys):
    assert main_run(tmp_path, "--epochs", "1", "--lr", "head=0.02") == 0
    (record,) = (tmp_path / "runs").rglob("record.json")
    rec = json.loads(record.read_text())
    assert rec["config"]["model"]["train"]["lrs"] == {"head": 0.02} and rec["warnings"] == []
    before = record.read_bytes()
    ledger = tmp_path / "runs" / "status.json"
    truncated = ledger.read_text()[:25]
    ledger.write_text(truncated)  # as a killed writer of an older version could leave it
    with pytest.warns(RunWarning, match=r"status\.json could not be read \(JSONDecodeError: .*\); moved it to "):
        assert main_run(tmp_path, "--epochs", "1", "--lr", "head=0.02") == 0
    assert "already done (same config hash)" in capsys.readouterr().out
    assert record.read_bytes() == before  # not retrained: the rebuilt ledger and the record agree
    cells = json.loads(ledger.read_text())["cells"]
    assert cells["example-bow|example-colors/vqa|quick|seed0"]["state"] == "done"
    (aside,) = ledger.parent.glob("status.json.corrupt-*")
    assert aside.read_text() == truncated


def test_a_ledger_of_the_wrong_shape_is_rebuilt_too(tmp_path):
    (tmp_path / "status.json").write_text("[]")
    with pytest.warns(RunWarning, match=r"rebuilt the ledger from the 0 record\(s\)"):
        assert Ledger(tmp_path).cells == {}
    assert json.loads((tmp_path / "status.json").read_text()) == {"cells": {}}
    assert [p.read_text() for p in tmp_path.glob("status.json.corrupt-*")] == ["[]"]
