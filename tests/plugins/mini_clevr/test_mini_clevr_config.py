"""The configuration: report defaults, validation, overrides and the benchmark entry point."""

from __future__ import annotations

import json

import pytest
from vqabench_plugins.mini_clevr.bench import benchmark_generation, main
from vqabench_plugins.mini_clevr.config import MiniClevrConfig, generation_options

from vqabench.config import apply_overrides


def test_defaults_are_report_000():
    c = MiniClevrConfig()
    assert (c.images, c.image_size, c.min_objects, c.max_objects) == (8000, 224, 3, 6)
    assert (c.small_radius, c.large_radius, c.clearance) == ((14, 18), (24, 30), 2.0)
    assert c.split_fractions == (0.8, 0.1, 0.1) and c.workers is None and c.root is None
    assert "workers" not in generation_options(c) and "root" not in generation_options(c)


@pytest.mark.parametrize(
    "field, value",
    [
        ("image_size", 16),
        ("max_objects", 7),
        ("small_radius", (20, 26)),
        ("split_fractions", (0.5, 0.5, 0.5)),
        ("images", 3),
        ("workers", 0),
        ("seed", -1),
        ("zeroshot_per_class", 2),
        ("unanswerable_fraction", 0.5),
    ],
)
def test_invalid_values_are_rejected_by_name(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        MiniClevrConfig(**{field: value})


def test_cli_style_overrides():
    c = apply_overrides(MiniClevrConfig(), {"images": "100", "image_size": "64", "seed": "5", "workers": "none"})
    assert (c.images, c.image_size, c.seed, c.workers) == (100, 64, 5, None)


def test_benchmark_reports_speed(tmp_path, capsys):
    result = benchmark_generation(images=40, image_size=64, workers=1, root=tmp_path / "kept")
    assert result["images"] == 40 and result["image_size"] == 64 and result["workers"] == 1
    assert result["seconds"] > 0 and result["images_per_second"] > 0
    assert (tmp_path / "kept" / "manifest.json").is_file()
    main(["--images", "20", "--image-size", "48", "--workers", "1"])
    assert json.loads(capsys.readouterr().out)["images"] == 20
