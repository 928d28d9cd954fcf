"""Shared fixtures: the example third-party plugin put on the entry-point path without pip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import add_distribution

EXAMPLE_DIR = Path(__file__).parent / "example_plugin"


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
