import json
import os
import re

import pytest

from vqabench import files
from vqabench.results import (
    RECORD_FIELDS,
    SCHEMA_VERSION,
    Ledger,
    atomic_write_json,
    atomic_write_text,
    cell_dir,
    iter_records,
    read_jsonl,
    read_record,
    write_jsonl,
)


def test_atomic_write_text_creates_parents_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a" / "b" / "out.txt"
    atomic_write_text(path, "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    assert os.listdir(path.parent) == ["out.txt"]


def test_atomic_write_text_replaces_content(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_text_keeps_old_content_when_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_text_keeps_old_content_when_write_fails(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_text(path, 123)  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_json_sorted_and_indented(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"b": 1, "a": [1, 2], "p": tmp_path})
    text = path.read_text()
    assert text.endswith("}\n")
    assert text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [1, 2], "b": 1, "p": str(tmp_path)}


def test_atomic_write_json_keeps_old_content_when_serialisation_fails(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"old": true}')
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        atomic_write_json(path, {"x": loop})
    assert path.read_text() == '{"old": true}'
    assert os.listdir(tmp_path) == ["r.json"]


def test_write_and_read_jsonl_round_trip(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [{"id": "1", "answer": "yes"}, {"id": "2", "answer": "no", "x": [1.5]}]
    write_jsonl(path, lines)
    assert path.read_text().splitlines()[0] == '{"answer": "yes", "id": "1"}'
    assert read_jsonl(path) == lines


def test_read_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_read_jsonl_error_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(path))}:3: not valid JSON .*delete the file and rerun the cell"
    ):
        read_jsonl(path)


def record(**kw):
    return {"schema": SCHEMA_VERSION, "model": "m", **kw}


def test_read_record(tmp_path):
    path = tmp_path / "record.json"
    atomic_write_json(path, record(seed=3))
    assert read_record(path) == {"schema": SCHEMA_VERSION, "model": "m", "seed": 3}


@pytest.mark.parametrize("schema", [None, 0, SCHEMA_VERSION + 1, "1"])
def test_read_record_rejects_wrong_schema_naming_file(tmp_path, schema):
    path = tmp_path / "record.json"
    body = {"model": "m"} if schema is None else {"schema": schema, "model": "m"}
    path.write_text(json.dumps(body))
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(path))}: record schema {schema!r}, this vqabench reads {SCHEMA_VERSION}$"
    ):
        read_record(path)


def test_read_record_rejects_bad_json_naming_file(tmp_path):
    path = tmp_path / "record.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: not valid JSON"):
        read_record(path)


def test_iter_records_in_path_order(tmp_path):
    for name in ["b", "a", "c/d"]:
        atomic_write_json(tmp_path / name / "record.json", record(model=name))
    (tmp_path / "a" / "other.json").write_text("{}")
    assert [(p.relative_to(tmp_path).as_posix(), r["model"]) for p, r in iter_records(tmp_path)] == [
        ("a/record.json", "a"),
        ("b/record.json", "b"),
        ("c/d/record.json", "c/d"),
    ]


def test_iter_records_empty(tmp_path):
    assert list(iter_records(tmp_path)) == []


def test_cell_dir_layout(tmp_path):
    assert (
        cell_dir(tmp_path, "mini-clevr", "vqa", "clip-lora", "quick", 0)
        == tmp_path / "mini-clevr" / "vqa" / "clip-lora" / "quick-seed0"
    )
    assert (
        cell_dir(tmp_path, "d", "zeroshot", "clip-lora@random", "paper", 12)
        == tmp_path / "d" / "zeroshot" / "clip-lora_at_random" / "paper-seed12"
    )


def test_ledger_persists_across_instances(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set("m/d/vqa", "running")
    ledger.set("m/d/vqa", "done", seconds=3.5)
    ledger.set("n/d/vqa", "skipped", reason="profile quick not supported")
    ledger.set("a/d/vqa", "failed", error="CUDA OOM")
    again = Ledger(tmp_path)
    assert {c: v["state"] for c, v in again.cells.items()} == {
        "m/d/vqa": "done",
        "n/d/vqa": "skipped",
        "a/d/vqa": "failed",
    }
    assert again.cells["m/d/vqa"]["seconds"] == 3.5
    assert again.cells["m/d/vqa"]["updated"].endswith("Z")
    assert again.summary() == [
        ("a/d/vqa", "failed", "CUDA OOM"),
        ("m/d/vqa", "done", ""),
        ("n/d/vqa", "skipped", "profile quick not supported"),
    ]
    assert sorted(os.listdir(tmp_path)) == ["status.json"]


def test_ledger_new_directory_is_empty(tmp_path):
    ledger = Ledger(tmp_path / "runs")
    assert ledger.cells == {} and ledger.summary() == []
    assert not (tmp_path / "runs" / "status.json").exists()


def test_ledger_rejects_unknown_state(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set("c", "pending")
    before = (tmp_path / "status.json").read_text()
    with pytest.raises((AssertionError, ValueError)):
        ledger.set("c", "finished")
    assert ledger.cells["c"]["state"] == "pending"
    assert (tmp_path / "status.json").read_text() == before


def test_ledger_unknown_state_error_names_known_states(tmp_path):
    with pytest.raises(ValueError, match=r"finished.*pending, running, done, skipped, failed"):
        Ledger(tmp_path).set("c", "finished")


def test_record_fields_document_every_field():
    assert {
        "schema",
        "model",
        "dataset",
        "kind",
        "profile",
        "seed",
        "final",
        "baseline",
        "history",
        "config_hash",
        "trained",
        "stages",
        "resumed_from",
        "vocab",
    } <= set(RECORD_FIELDS)
    assert all(isinstance(v, str) and v for v in RECORD_FIELDS.values())
    # Fields only a trained model's record has say so.
    for name in ("history", "step_losses", "stages", "best_epoch", "resumed_from"):
        assert RECORD_FIELDS[name].startswith("trained only")


def test_schema_version_is_2():
    assert SCHEMA_VERSION == 2


def test_ledger_has_a_running_state(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set("c", "pending")
    ledger.set("c", "running")
    assert Ledger(tmp_path).cells["c"]["state"] == "running"
    assert Ledger(tmp_path).summary() == [("c", "running", "")]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_atomic_write_json_is_strict_and_keeps_old_content(tmp_path, value):
    path = tmp_path / "r.json"
    path.write_text('{"old": true}')
    with pytest.raises(ValueError, match=r"cannot write strict JSON: .*NaN or infinite"):
        atomic_write_json(path, {"final": {"test": {"vqa_accuracy": value}}})
    assert path.read_text() == '{"old": true}'
    assert os.listdir(tmp_path) == ["r.json"]


def test_write_jsonl_is_strict(tmp_path):
    with pytest.raises(ValueError, match="strict JSON"):
        write_jsonl(tmp_path / "p.jsonl", [{"confidence": float("nan")}])
    assert not (tmp_path / "p.jsonl").exists()


def test_read_record_rejects_bare_nan(tmp_path):
    path = tmp_path / "record.json"
    path.write_text(f'{{"schema": {SCHEMA_VERSION}, "x": NaN}}')
    with pytest.raises(ValueError, match="bare NaN is not strict JSON"):
        read_record(path)
