"""Helpers shared by tests (a module, not conftest.py, so sub-folder conftests cannot shadow it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def add_distribution(site: Path, name: str, entry_points: dict[str, str], modules: dict[str, str] | None = None) -> None:
    """Make ``site`` hold an installed-looking distribution with ``vqabench`` entry points."""
    dist = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[vqabench]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for mod, source in (modules or {}).items():
        (site / f"{mod}.py").write_text(source)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vqabench.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)
