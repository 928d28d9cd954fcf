"""CLIP zero-shot (report 003 Q1): class embeddings from open_clip's own classifier, per template and
ensembled, nothing trained; weights from a file, a tag (failing fast offline) or a pretraining."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_CLIP, isolate_caches, run_in, save_tiny_clip_checkpoint
from PIL import Image
from vqabench_plugins import clip_zeroshot
from vqabench_plugins.clip_zeroshot import CLIPZeroShotConfig, template_texts

from vqabench.config import apply_overrides
from vqabench.pretrain import parse_reference
from vqabench.registry import ModelSpec
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.zeroshot import ImageBatch, ImageSample
from vqabench.weights import QUICK_FIX, WeightsUnavailable, load_open_clip

CLASSES = ["red circle", "blue square", "green triangle", "yellow pentagon"]
TEMPLATES = ["{}", "a photo of a {c}.", "{0} {0}"]
# The same templates as open_clip's callables, written here without str.format.
FILLERS = [lambda c: c, lambda c: f"a photo of a {c}.", lambda c: f"{c} {c}"]


def toy_data(templates=TEMPLATES, classes=CLASSES) -> TaskData:
    samples = [ImageSample(f"z{i}", f"/nowhere/{i}.png", i % len(classes)) for i in range(4)]
    return TaskData(
        "toy",
        TaskKind.ZEROSHOT,
        Path("/nowhere"),
        {"test": samples},
        "r0",
        class_names=list(classes),
        templates=list(templates) if templates is not None else None,
    )


def tiny(checkpoint: Path, **changes) -> CLIPZeroShotConfig:
    return CLIPZeroShotConfig(arch="ViT-B-32", checkpoint=str(checkpoint), **changes)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_tiny_clip_checkpoint(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def model(checkpoint):
    return clip_zeroshot.build(tiny(checkpoint), toy_data(), "cpu")


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def batch(pixels: torch.Tensor, features: torch.Tensor | None = None) -> ImageBatch:
    n = pixels.shape[0]
    return ImageBatch([f"i{k}" for k in range(n)], pixels, torch.arange(n) % len(CLASSES), features)


def reference(checkpoint: Path, pixels: torch.Tensor, fillers, classes=CLASSES) -> torch.Tensor:
    """100 * normalised image features @ open_clip's zero-shot classifier, computed here."""
    clip, tokenizer, mean, std, _ = load_open_clip("ViT-B-32", pretrained=True, checkpoint=str(checkpoint))
    clip.eval()
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    with torch.no_grad():
        classifier = open_clip.build_zero_shot_classifier(clip, tokenizer, classes, fillers, device="cpu")
        features = F.normalize(clip.encode_image((pixels - m) / s).float(), dim=-1)
    return 100.0 * features @ classifier.float()


# --- registration ---------------------------------------------------------------------------------


def test_registers_clip_zeroshot_for_zeroshot_only():
    found: list[ModelSpec] = []
    clip_zeroshot.register_models(register=found.append)
    (spec,) = found
    assert (spec.name, spec.family, spec.display_name, spec.task_kinds) == (
        "clip-zeroshot",
        "clip-zeroshot",
        "CLIP zero-shot",
        (TaskKind.ZEROSHOT,),
    )
    assert set(spec.profiles) == {"quick", "paper"}
    assert spec.tags["ViT-B-32-openai"] == {"arch": "ViT-B-32", "checkpoint": "openai"}
    paper = apply_overrides(spec.config_cls(), spec.profiles["paper"])
    assert (paper.arch, paper.checkpoint, paper.templates, paper.per_template) == (
        "ViT-L-14",
        "openai",
        "dataset",
        True,
    )
    assert paper.eval.splits == ("test",) and not hasattr(paper, "train")  # evaluation only


def test_quick_profile_uses_the_mini_clevr_pretraining():
    from vqabench.plugins import load_plugins

    registry, _ = load_plugins()
    spec = registry.model("clip-zeroshot")
    quick = apply_overrides(spec.config_cls(), spec.profiles["quick"])
    assert (quick.arch, quick.checkpoint) == ("ViT-B-32", "pretrain:clip/mini-clevr")
    name, dataset = parse_reference(quick.checkpoint)
    recipe, data = registry.pretrainer(name), registry.dataset(dataset)
    assert set(recipe.task_kinds) <= set(data.task_kinds)


# --- the model --------------------------------------------------------------------------------------


def test_nothing_is_trainable_and_no_gradient_reaches_the_weights(model):
    params = list(model.parameters())
    assert params and not any(p.requires_grad for p in params)
    model.train()
    assert not any(m.training for m in model.modules())  # train() keeps dropout and norms in eval mode
    pixels = images().requires_grad_(True)
    model(batch(pixels)).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0  # the graph is there ...
    assert all(p.grad is None for p in params)  # ... but no weight is part of it


def test_logits_are_open_clips_zero_shot_classifier(model, checkpoint):
    assert (model.image_size, model.weights) == (32, "ViT-B-32 (open_clip_model.safetensors), not trained")
    pixels = images()
    lines = model.predict(batch(pixels))
    assert len(lines) == 3
    for line in lines:
        assert len(line["logits"]) == len(CLASSES)
        assert line["prompts"] == TEMPLATES and set(line["prompt_logits"]) == set(TEMPLATES)
        assert all(len(v) == len(CLASSES) for v in line["prompt_logits"].values())
    got = torch.tensor([line["logits"] for line in lines])
    torch.testing.assert_close(got, reference(checkpoint, pixels, FILLERS))
    torch.testing.assert_close(model(batch(pixels)), got)
    one = torch.tensor([line["prompt_logits"]["a photo of a {c}."] for line in lines])
    torch.testing.assert_close(one, reference(checkpoint, pixels, FILLERS[1:2]))
    twice = torch.tensor([line["prompt_logits"]["{0} {0}"] for line in lines])
    torch.testing.assert_close(twice, reference(checkpoint, pixels, FILLERS[2:]))


def test_cached_stem_features_give_the_same_predictions(model):
    pixels = images(seed=1)
    stem = model.image_stem()
    assert stem.key.startswith("clip-zeroshot/") and stem.key == model.image_stem().key
    features = stem.encode(pixels)
    from_pixels = model.predict(batch(pixels))
    from_features = model.predict(batch(torch.empty(3, 0), features))
    assert from_features == from_pixels


@pytest.mark.parametrize("spelling", ["a photo of a {}.", "a photo of a {0}."])
def test_placeholders_are_interchangeable(checkpoint, spelling):
    data = toy_data()
    braces = clip_zeroshot.build(tiny(checkpoint, custom_templates=("a photo of a {c}.",)), data, "cpu")
    other = clip_zeroshot.build(tiny(checkpoint, custom_templates=(spelling,)), data, "cpu")
    assert torch.equal(braces.classifier, other.classifier)
    assert braces.templates == other.templates == []  # one template: the ensemble is the template


def test_one_template_or_per_template_off_gives_only_ensemble_logits(checkpoint):
    for cfg in (tiny(checkpoint, custom_templates=("a {c}",)), tiny(checkpoint, per_template=False)):
        (line, *_) = clip_zeroshot.build(cfg, toy_data(), "cpu").predict(batch(images()))
        assert set(line) == {"logits"}


# --- templates --------------------------------------------------------------------------------------


def test_named_and_custom_templates():
    data = toy_data()
    assert template_texts(CLIPZeroShotConfig(), data) == TEMPLATES
    openai = template_texts(CLIPZeroShotConfig(templates="openai"), data)
    assert len(openai) == 80 and openai == [t("{c}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    assert openai[0] == "a bad photo of a {c}." and all("{c}" in t for t in openai)
    simple = template_texts(CLIPZeroShotConfig(templates="simple"), data)
    assert simple == [t("{c}") for t in open_clip.SIMPLE_IMAGENET_TEMPLATES]
    custom = CLIPZeroShotConfig(templates="openai", custom_templates=("{c}", "an image of {}"))
    assert template_texts(custom, data) == ["{c}", "an image of {}"]


def test_openai_templates_build_eighty_classifiers(checkpoint):
    model = clip_zeroshot.build(tiny(checkpoint, templates="openai"), toy_data(), "cpu")
    assert len(model.templates) == 80 and model.templates[0] == "a bad photo of a {c}."
    assert model.classifier.shape == (TINY_CLIP["embed_dim"], len(CLASSES))
    assert model.template_classifiers.shape == (80, TINY_CLIP["embed_dim"], len(CLASSES))


def test_a_template_without_a_placeholder_is_refused():
    with pytest.raises(ValueError, match=r"custom_templates template 'a photo' has no \{\}, \{0\} or \{c\}"):
        CLIPZeroShotConfig(custom_templates=("{c}", "a photo"))
    with pytest.raises(ValueError, match="templates='imagenet'; choose dataset, openai, simple"):
        CLIPZeroShotConfig(templates="imagenet")
    with pytest.raises(ValueError, match=r"dataset 'toy' template 'no slot' has no"):
        template_texts(CLIPZeroShotConfig(), toy_data(templates=["{}", "no slot"]))
    with pytest.raises(ValueError, match="dataset 'toy' gives no templates; use --set templates=openai"):
        template_texts(CLIPZeroShotConfig(), toy_data(templates=None))


# --- weights ----------------------------------------------------------------------------------------------


def test_paper_weights_fail_fast_offline(monkeypatch, tmp_path):
    isolate_caches(monkeypatch, tmp_path)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as err:
        clip_zeroshot.build(CLIPZeroShotConfig(), toy_data(), "cpu")
    assert time.perf_counter() - start < 20
    message = str(err.value)
    assert "ViT-L-14" in message and "'openai'" in message
    assert f"Fix: {QUICK_FIX}: the CLIP pretrained on Mini-CLEVR, or `--set checkpoint=FILE`" in message
    assert "does not fall back to random weights" in message


def test_a_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(WeightsUnavailable, match="neither a pretrained tag nor a file"):
        clip_zeroshot.build(tiny(tmp_path / "missing.safetensors"), toy_data(), "cpu")


# --- end to end ---------------------------------------------------------------------------------------------


def test_cli_run_on_an_image_folder(tmp_path, checkpoint):
    tree = tmp_path / "tree"
    # Sorted by folder name, as torchvision's ImageFolder: blue, green, red.
    colours = {"blue_square": (30, 60, 220), "green_square": (30, 200, 40), "red_square": (220, 30, 30)}
    pixels = []
    for folder, rgb in colours.items():
        (tree / folder).mkdir(parents=True)
        for i in range(3):
            shade = np.broadcast_to(np.clip(np.array(rgb) + 10 * i, 0, 255).astype(np.uint8), (32, 32, 3)).copy()
            Image.fromarray(shade).save(tree / folder / f"{i}.png")
            pixels.append(torch.from_numpy(shade).permute(2, 0, 1).float() / 255)
    templates = ["a photo of a {c}.", "{c}"]
    (tmp_path / "templates.txt").write_text("\n".join(templates) + "\n")

    res = run_in(
        tmp_path,
        "clip-zeroshot",
        "image-folder/zeroshot",
        "--profile",
        "paper",
        "--data",
        f"root={tree}",
        "--data",
        f"templates_file={tmp_path / 'templates.txt'}",
        "--set",
        f"checkpoint={checkpoint}",
        "--set",
        "arch=ViT-B-32",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (path,) = (tmp_path / "runs").rglob("record.json")
    record = json.loads(path.read_text())
    assert (record["model"], record["dataset"], record["kind"], record["profile"]) == (
        "clip-zeroshot",
        "image-folder",
        "zeroshot",
        "paper",
    )
    assert record["trained"] is False and record["params"]["trainable"] == 0 and record["pretrained"] == {}
    assert record["weights"] == "ViT-B-32 (open_clip_model.safetensors), not trained"
    assert record["config"]["model"]["checkpoint"] == str(checkpoint)
    test = record["final"]["test"]
    assert test["prompts"] == templates and set(test["by_prompt"]) == set(templates)

    # The scores, recomputed here from the checkpoint: ensemble and each template alone.
    classes, labels = [f.replace("_", " ") for f in colours], torch.arange(9) // 3
    fillers = [lambda c: f"a photo of a {c}.", lambda c: c]

    def top1(chosen) -> float:
        logits = reference(checkpoint, torch.stack(pixels), chosen, classes)
        return (logits.argmax(1) == labels).float().mean().item()

    assert 0 <= test["top1"] <= 1 and test["top1"] == pytest.approx(top1(fillers), abs=1e-6)
    for template, filler in zip(templates, fillers):
        assert test["by_prompt"][template]["top1"] == pytest.approx(top1([filler]), abs=1e-6)
    board = (tmp_path / "runs" / "leaderboards" / "image-folder.md").read_text()
    assert "### Prompts" in board and "a photo of a {object}." in board
