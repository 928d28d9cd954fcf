"""``vqabench pretrain clip --data mini-clevr``: a small open_clip CLIP trained contrastively, offline.

Why: no pretrained CLIP can be downloaded here, and a CLIP family trained from scratch on a VQA
loss shows nothing of what makes CLIP work: an aligned image-text space. This recipe makes one
on the dataset itself, once: ``vqabench.pretrain`` stores it content-addressed in the cache
(recipe config, dataset config and revision) and every later run loads it through a
``pretrain:clip/mini-clevr`` checkpoint reference (the quick profiles of the CLIP families).

Corpus. Image-caption pairs from the captioning kind's source-domain train images, one of an
image's captions drawn at random at every step, plus the zero-shot kind's train images
captioned "a <class name>." (``class_captions``). Mini-CLEVR's scene captions alone teach colour
but hardly shape: the shape of a few-pixel object is rarely what tells two captions apart,
whereas single-object captions differ in shape alone. By default the corpus is a separate
Mini-CLEVR draw (``data``: seed 1), so that no image a run evaluates on was seen in pretraining.

Model and loss. open_clip's ``CLIP`` built from ``model_cfg`` (a ViT image tower: the CLIP-LoRA
recipe adapts transformer blocks), open_clip's ``ClipLoss`` with the model's learnable logit
scale, AdamW with a one-cycle schedule.

Files: ``open_clip_model.safetensors`` (the state dict) and ``open_clip_config.json`` (open_clip's
hub format, ``model_cfg`` and ``preprocess_cfg``), so ``load_open_clip`` rebuilds the architecture
from the checkpoint alone. The record holds the loss curve, zero-shot top-1 per template (and per
class attribute: colour, shape) on the zero-shot test split, and retrieval R@1 / R@5 on val.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from vqabench.device import autocast
from vqabench.hookspecs import hookimpl
from vqabench.images import ImageStore
from vqabench.layers import Normalize
from vqabench.registry import PretrainSpec
from vqabench.tasks import TaskKind, get_task
from vqabench.weights import OPEN_CLIP_CONFIG, clip_image_size, load_open_clip

ARTIFACT = "open_clip_model.safetensors"

# ViT with 8-px patches on 64-px images (64 tokens), 4 blocks of width 128; text: 2 blocks of
# width 128 over 32 tokens. The smallest ViT that learnt shape within the time budget.
MINI_CLEVR_CLIP: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}

# The pretraining corpus per dataset: Mini-CLEVR's own generator with another seed than the
# evaluated data, at the quick profile's 64 px: 3,200 train scenes and 80 single-object train
# images per class (5,120 pairs), 10 test images per class. Halving the scenes for more single
# objects left shape at chance in the same time: the scene captions matter too.
CORPUS: dict[str, dict[str, Any]] = {
    "mini-clevr": {
        "seed": 1,
        "images": 4000,
        "image_size": 64,
        "zeroshot_per_class": 100,
        "zeroshot_split_fractions": (0.8, 0.1, 0.1),
    }
}


@dataclass(frozen=True)
class CLIPPretrainConfig:
    """The recipe; the defaults meet its targets on 2 CPU cores (see ``vqabench pretrain``'s record)."""

    arch: str = "ViT-B-32"  # open_clip name for the tokenizer and the base config ``model_cfg`` resizes
    model_cfg: Mapping[str, Any] = field(default_factory=lambda: MINI_CLEVR_CLIP)
    epochs: int = 6
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1  # one-cycle: share of the steps spent warming up
    class_captions: bool = True  # add the zero-shot train images, captioned "a <class name>."
    seed: int = 0
    precision: str = "auto"  # bf16 autocast on CUDA, fp32 on CPU
    data: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: CORPUS)  # dataset overrides by name

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("pretrain clip: epochs must be >= 1 and batch_size >= 2 (a contrastive batch)")


def _corpus(cfg: CLIPPretrainConfig, ctx: Any) -> tuple[list[str], list[tuple[str, ...]]]:
    """Image paths and their captions."""
    captions = ctx.load(TaskKind.CAPTIONING)
    pairs = [(s.image, tuple(s.captions)) for s in captions.split("train") if s.domain == "source"]
    if cfg.class_captions:
        shots = ctx.load(TaskKind.ZEROSHOT)
        pairs += [(s.image, (f"a {shots.class_names[s.label]}.",)) for s in shots.split("train")]
    if len(pairs) < cfg.batch_size:
        raise ValueError(f"pretrain clip: {ctx.dataset} gives {len(pairs)} training pairs, fewer than one batch")
    return [p for p, _ in pairs], [c for _, c in pairs]


def run(cfg: CLIPPretrainConfig, ctx: Any) -> dict[str, Any]:
    """Train, evaluate and write the checkpoint into ``ctx.out``; return the record's body."""
    from open_clip.loss import ClipLoss
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    # checkpoint="": no pretrained tag, so no tag's activation (QuickGELU) that the saved config would not carry.
    model, tokenizer, mean, std, _ = load_open_clip(cfg.arch, pretrained=False, checkpoint="", model_cfg=cfg.model_cfg)
    model = model.to(ctx.device)
    normalize = Normalize(mean, std).to(ctx.device)
    size = clip_image_size(model)

    paths, captions = _corpus(cfg, ctx)
    shots = ctx.load(TaskKind.ZEROSHOT)
    val = [s for s in ctx.load(TaskKind.CAPTIONING).split("val") if s.domain == "source"]
    tests = shots.split("test")
    every = list(dict.fromkeys([*paths, *(s.image for s in val), *(s.image for s in tests)]))
    revision = f"{ctx.load(TaskKind.CAPTIONING).revision}-{shots.revision}"
    store = ImageStore.build(every, size, ctx.cache_dir, revision, ctx.progress, dataset=ctx.dataset)

    steps_per_epoch = len(paths) // cfg.batch_size  # the last partial batch is dropped (see below)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=cfg.warmup_fraction
    )
    loss_fn = ClipLoss()
    order = torch.Generator().manual_seed(cfg.seed)
    pick = random.Random(cfg.seed)  # which caption of an image a step sees
    step_losses: list[float] = []
    epochs: list[dict[str, Any]] = []
    start = time.perf_counter()
    model.train()
    for epoch in tqdm(range(1, cfg.epochs + 1), desc="pretrain clip", disable=not ctx.progress):
        t0 = time.perf_counter()
        perm = torch.randperm(len(paths), generator=order).tolist()
        # The last partial batch is dropped: a contrastive batch of a few pairs is too easy a task.
        for i in range(0, steps_per_epoch * cfg.batch_size - cfg.batch_size + 1, cfg.batch_size):
            rows = perm[i : i + cfg.batch_size]
            if len(rows) < cfg.batch_size:
                break
            images = normalize(store.gather([paths[r] for r in rows], ctx.device))
            texts = tokenizer([pick.choice(captions[r]) for r in rows]).to(ctx.device)
            with autocast(ctx.device, cfg.precision):
                image_features, text_features, scale = model(images, texts)
                loss = loss_fn(image_features.float(), text_features.float(), scale.float())
            if not torch.isfinite(loss):
                raise RuntimeError(f"pretrain clip: non-finite loss at epoch {epoch}, step {len(step_losses) + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step_losses.append(round(loss.item(), 5))
        done = step_losses[-steps_per_epoch:]
        epochs.append(
            {"epoch": epoch, "loss": round(sum(done) / len(done), 5), "seconds": round(time.perf_counter() - t0, 1)}
        )
    train_seconds = time.perf_counter() - start

    model.eval()
    evaluation = {
        **zero_shot(model, tokenizer, normalize, store, shots, ctx.device),
        **retrieval(model, tokenizer, normalize, store, val, ctx.device),
    }
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(ctx.out / ARTIFACT))
    config = {"model_cfg": dict(cfg.model_cfg), "preprocess_cfg": {"mean": list(mean), "std": list(std)}}
    (ctx.out / OPEN_CLIP_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return {
        "corpus": {"pairs": len(paths), "class_captioned": sum(len(c) == 1 for c in captions)},
        "train_seconds": round(train_seconds, 1),
        "train_images_per_second": round(len(step_losses) * cfg.batch_size / train_seconds, 1),
        "epochs": epochs,
        "step_losses": step_losses,
        "evaluation": evaluation,
    }


def _texts(model: Any, tokenizer: Any, strings: Sequence[str], device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(model.encode_text(tokenizer(list(strings)).to(device)).float(), dim=-1)


def _images(model: Any, normalize: Any, store: ImageStore, paths: Sequence[str], device: torch.device) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(paths), 256):
            out.append(model.encode_image(normalize(store.gather(paths[i : i + 256], device))).float())
    return F.normalize(torch.cat(out), dim=-1)


def zero_shot(model: Any, tokenizer: Any, normalize: Any, store: Any, shots: Any, device: torch.device) -> dict:
    """Zero-shot metrics on the test split, scored by the zeroshot task itself: per template and for
    the ensemble, with attribute accuracies when the dataset names them."""
    from open_clip import build_zero_shot_classifier

    tests = shots.split("test")
    features = _images(model, normalize, store, [s.image for s in tests], device)

    def classifier(templates: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            weights = build_zero_shot_classifier(
                model,
                tokenizer=tokenizer,
                classnames=shots.class_names,
                templates=[_filler(t) for t in templates],
                device=device,
            )
        return (100.0 * features @ weights.float()).cpu()

    ensemble = classifier(shots.templates)
    by_prompt = {t: classifier([t]) for t in shots.templates}
    lines = [
        {
            "label": s.label,
            "logits": ensemble[i].tolist(),
            "prompt_logits": {t: v[i].tolist() for t, v in by_prompt.items()},
        }
        for i, s in enumerate(tests)
    ]
    task = get_task(TaskKind.ZEROSHOT)
    scored = task.score(lines, **task.score_options(shots))
    best = max(scored["by_prompt"].items(), key=lambda kv: kv[1]["top1"])
    return {
        "zeroshot_split": "test",
        "zeroshot_images": len(tests),
        "zeroshot_chance": 1 / len(shots.class_names),
        "zeroshot": {k: v for k, v in scored.items() if k not in ("by_prompt", "prompts")},
        "zeroshot_by_prompt": [{"template": t, **scored["by_prompt"][t]} for t in scored["prompts"]],
        "zeroshot_best_prompt": {"template": best[0], **best[1]},
    }


def _filler(template: str) -> Any:
    """A callable for open_clip's classifier: templates come in ``{}`` / ``{0}`` or CLIP_benchmark's ``{c}`` form."""
    return lambda c: template.format(c, c=c)


def retrieval(model: Any, tokenizer: Any, normalize: Any, store: Any, samples: Sequence[Any], device: Any) -> dict:
    """Image-to-text R@1 / R@5 (a hit: any of the image's own captions ranks that high) and
    text-to-image R@1 / R@5 on the val split, as CLIP_benchmark's retrieval task."""
    if not samples:
        return {}
    images = _images(model, normalize, store, [s.image for s in samples], device)
    texts, owner = [], []
    for i, s in enumerate(samples):
        texts += list(s.captions)
        owner += [i] * len(s.captions)
    text = torch.cat([_texts(model, tokenizer, texts[i : i + 512], device) for i in range(0, len(texts), 512)])
    sim = images @ text.T  # [images, captions]
    owner_t = torch.tensor(owner, device=sim.device)
    out: dict[str, Any] = {"retrieval_split": "val", "retrieval_images": len(samples), "retrieval_texts": len(texts)}
    for k in (1, 5):
        top_texts = sim.topk(min(k, sim.shape[1]), dim=1).indices  # [images, k]
        out[f"image_to_text_r@{k}"] = float(
            (owner_t[top_texts] == torch.arange(len(samples))[:, None]).any(1).float().mean()
        )
        top_images = sim.T.topk(min(k, sim.shape[0]), dim=1).indices  # [captions, k]
        out[f"text_to_image_r@{k}"] = float((top_images == owner_t[:, None]).any(1).float().mean())
    return out


@hookimpl
def register_pretrainers(register):
    register(
        PretrainSpec(
            name="clip",
            task_kinds=(TaskKind.CAPTIONING, TaskKind.ZEROSHOT),
            config_cls=CLIPPretrainConfig,
            run=run,
            artifact=ARTIFACT,
            description="a small open_clip CLIP (ViT) trained with ClipLoss on a dataset's captions, once",
        )
    )
