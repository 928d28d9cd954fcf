"""Where Mini-CLEVR directories live: an explicit ``--root`` or the cache, and when to (re)generate.

A directory is used only when its manifest matches every file. In the cache
(``<cache>/mini-clevr-<hash of options>``) anything else is regenerated; an explicit root is never
touched, only rejected with an error naming the bad file and the fix.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from vqabench_plugins.mini_clevr import manifest
from vqabench_plugins.mini_clevr.config import GENERATOR_VERSION, MiniClevrConfig, config_key, generation_options
from vqabench_plugins.mini_clevr.generate import generate
from vqabench_plugins.mini_clevr.manifest import DatasetError

from vqabench.files import clean_partial

log = logging.getLogger(__name__)

_STALE_PARTIAL_S = 24 * 3600  # a partial directory this old belongs to a generation that was killed


def read_meta(root: Path) -> dict[str, Any]:
    """``root/meta.json``, or DatasetError naming the file."""
    path = Path(root) / "meta.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path} is unreadable ({exc}); {manifest.fix_hint(Path(root))}") from None


def prepare(config: MiniClevrConfig, root: Path) -> Path:
    """Generate the dataset into the explicit directory ``root`` (``vqabench data prepare``).

    An empty or missing ``root`` is filled; one that already holds this very dataset is kept;
    anything else is an error, since this never deletes a user's directory.
    """
    root = Path(root)
    _remove_stale_partials(root)  # a killed `data prepare` into this root left one behind
    if root.exists():
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        elif (root / manifest.MANIFEST).is_file():
            manifest.verify(root)
            meta = read_meta(root)
            if meta.get("generator_version") == GENERATOR_VERSION and meta.get("options") == generation_options(config):
                return root
            raise DatasetError(
                f"{root} already holds a Mini-CLEVR dataset made with other options or generator version; "
                f"choose another --root or delete {root}"
            )
        else:
            raise DatasetError(f"{root} exists and is not an empty directory; choose another --root or delete it")
    generate(config, root)
    return root


def cache_path(config: MiniClevrConfig, cache_dir: Path) -> Path:
    """The cache directory of a configuration: ``cache_dir/mini-clevr-<hash of options>``."""
    return Path(cache_dir) / f"mini-clevr-{config_key(config)}"


def _remove_stale_partials(root: Path) -> None:
    """Delete temporary siblings of ``root`` left by killed generations: at once when the name says
    its writer is dead, else once a day old (``vqabench.files.is_stale``); a live generation's stays."""
    clean_partial(root.parent, pattern=f".{root.name}.partial-*", max_age_s=_STALE_PARTIAL_S)


def ensure(config: MiniClevrConfig, cache_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The dataset directory and manifest for ``config``: ``config.root`` checked as it is, or the
    cache directory, generated on first use and regenerated when incomplete or altered."""
    if config.root is not None:
        root = Path(config.root).expanduser().resolve()
        return root, manifest.verify(root)
    root = cache_path(config, cache_dir)
    _remove_stale_partials(root)
    if root.exists():
        try:
            return root, manifest.verify(root)
        except DatasetError as exc:
            log.warning("mini-clevr: regenerating %s: %s", root, exc)
            shutil.rmtree(root)
    log.info("mini-clevr: generating %d images at %d px into %s", config.images, config.image_size, root)
    return root, generate(config, root)
