"""Mini-CLEVR through the command line, as a user runs it."""

import json

from helpers import run_cli


def test_data_prepare_then_run_list_from_the_prepared_root(tmp_path):
    root = tmp_path / "mc"
    proc = run_cli(
        "data", "prepare", "mini-clevr", "--root", str(root), "--seed", "3", "--images", "30", "--image-size", "48"
    )
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((root / "meta.json").read_text())
    assert meta["seed"] == 3 and meta["image_size"] == 48
    assert (root / "answer2idx.json").exists() and (root / "manifest.json").exists()
    listed = run_cli("run", "--models", "clip-lora", "--tasks", "mini-clevr", "--list", "--data", f"root={root}")
    assert listed.returncode == 0, listed.stderr
    for kind in ("vqa", "answerability", "zeroshot", "captioning"):
        assert f"mini-clevr/{kind}" in listed.stdout


def test_data_prepare_refuses_an_unknown_option(tmp_path):
    proc = run_cli("data", "prepare", "mini-clevr", "--root", str(tmp_path / "mc"), "--data", "imagez=3")
    assert proc.returncode == 2
    assert "unknown field 'imagez'" in proc.stderr and "did you mean 'images'" in proc.stderr
