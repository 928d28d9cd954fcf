"""Generation speed: ``python -m vqabench_plugins.mini_clevr.bench [--images N] [--image-size S] [--workers W]``."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from vqabench_plugins.mini_clevr.config import MiniClevrConfig
from vqabench_plugins.mini_clevr.generate import available_cpus, generate


def benchmark_generation(
    images: int = 8000, image_size: int = 224, workers: int | None = None, root: str | Path | None = None
) -> dict[str, Any]:
    """Time a full generation (main images, target domain, zero-shot set, tables, manifest).

    ``images_per_second`` counts the main images only, as the report does; ``files`` counts every
    file written. With ``root`` (which must not exist) the data is kept there, else deleted.
    """
    config = MiniClevrConfig(images=images, image_size=image_size, workers=workers)
    with tempfile.TemporaryDirectory(prefix="mini-clevr-bench-") as tmp:
        target = Path(root) if root is not None else Path(tmp) / "mini-clevr"
        start = time.perf_counter()
        manifest = generate(config, target)
        seconds = time.perf_counter() - start
    files = manifest["files"]
    return {
        "images": images,
        "image_size": image_size,
        "workers": workers or available_cpus(),
        "seconds": round(seconds, 3),
        "images_per_second": round(images / seconds, 1),
        "png_files": sum(rel.endswith(".png") for rel in files),
        "files": len(files),
        "megabytes": round(sum(d["size"] for d in files.values()) / 1e6, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--root", default=None, help="keep the data here (must not exist)")
    args = parser.parse_args(argv)
    result = benchmark_generation(args.images, args.image_size, args.workers, args.root)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
