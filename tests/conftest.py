"""Shared fixtures: the example third-party plugin put on the entry-point path without pip."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

EXAMPLE_DIR = Path(__file__).parent / "example_plugin"


def add_distribution(site: Path, name: str, entry_points: dict[str, str], modules: dict[str, str] | None = None) -> None:
    """Make ``site`` hold an installed-looking distribution with ``vqabench`` entry points."""
    dist = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[vqabench]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for mod, source in (modules or {}).items():
        (site / f"{mod}.py").write_text(source)


@pytest.fixture
def plugin_site(tmp_path, monkeypatch) -> Path:
    """A site directory on sys.path (and PYTHONPATH for subprocesses) holding the example plugin."""
    site = tmp_path / "site"
    site.mkdir()
    add_distribution(site, "vqabench-example", {"example": "vqabench_example"})
    for path in (str(EXAMPLE_DIR), str(site)):
        monkeypatch.syspath_prepend(path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(EXAMPLE_DIR), os.environ.get("PYTHONPATH", "")]))
    return site


@pytest.fixture
def only_example(monkeypatch, plugin_site) -> Path:
    """Load only the example plugin: fast runs that do not import the first-party families."""
    monkeypatch.setenv("VQABENCH_PLUGINS", "example")
    return plugin_site


def run_cli(*args: str, cwd: Path | None = None) -> "subprocess.CompletedProcess[str]":
    import subprocess

    return subprocess.run([sys.executable, "-m", "vqabench.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)
