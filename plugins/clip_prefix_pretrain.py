"""Stage 1 of the CLIP-prefix captioner (report 004): mapper and decoder on (CLIP embedding, caption) pairs.

``vqabench pretrain clip-prefix --data DATASET`` (registered by ``vqabench_plugins.clip_prefix``). With
``pairs=FILE`` it reads precomputed pairs, as report 004 pretrained on LAION's embeddings: a LAION-style
parquet (a caption column and an embedding column) or an npz file (``embeddings`` [N, D], ``captions``
[N]); 2 % of the pairs (at most 500) are held out and scored. Without pairs it embeds the source-domain
training images of the dataset (for Mini-CLEVR: the separate draw the Mini-CLEVR CLIP was trained on,
so no evaluated image is seen) with the CLIP the model uses, trains on their captions, and scores greedy
captions of the draw's source ``val`` and restyled ``target_val`` images.

The artefact: ``clip_prefix.safetensors`` (mapper and decoder) and ``clip_prefix.json`` (the captioner
configuration, the tokenizer and restricted vocabulary, and which CLIP made the embeddings, which stage 2
checks against its own).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from vqabench_plugins.caption_text import CaptionTokenizer, restricted
from vqabench_plugins.clip_prefix import (
    ARTIFACT,
    ARTIFACT_CONFIG,
    MINI_CLEVR_CAPTIONER,
    CaptionerConfig,
    PrefixCaptioner,
    corpus_ids,
    load_tokenizer,
    masked_mean,
)
from vqabench_plugins.clip_pretrain import CORPUS, MINI_CLEVR_CLIP

from vqabench.config import to_jsonable
from vqabench.layers import Normalize, state_digest
from vqabench.tasks import TaskKind
from vqabench.weights import clip_image_size, load_open_clip

EVAL_IMAGES = 200  # images of each held-out split the record scores (greedy captions)


@dataclass(frozen=True)
class PrefixPretrainConfig:
    """Stage 1: mapper and decoder on (CLIP embedding, caption) pairs. One recipe for every profile;
    the defaults are the Mini-CLEVR one (the quick profile's ``init``)."""

    arch: str = "ViT-B-32"
    checkpoint: str = "pretrain:clip/mini-clevr"  # the CLIP that embeds the dataset's images (not with pairs)
    model_cfg: Mapping[str, Any] = field(default_factory=lambda: MINI_CLEVR_CLIP)
    captioner: CaptionerConfig = field(default_factory=lambda: CaptionerConfig(**MINI_CLEVR_CAPTIONER))
    # Precomputed pairs instead of the dataset's images: a LAION-style parquet or an npz file.
    pairs: str = ""
    caption_column: str = "caption"
    embedding_column: str = "embedding"
    # Report 004 pretrained one epoch on LAION, then one more. Mini-CLEVR: 6 epochs over the corpus's 3,200
    # source images (one of each image's five captions per epoch, batches of similar caption length),
    # ~10 CPU-seconds each. Measured (seed 0), the fine-tuned models' target_test CIDEr after 2 / 4 / 6
    # epochs: plain 0.37 / 0.63 / 0.65, DANN 0.38 / 0.75 / 0.88.
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1  # one-cycle: share of the steps spent warming up
    seed: int = 0
    data: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: CORPUS)  # dataset overrides by name

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("pretrain clip-prefix: epochs and batch_size must be >= 1")


def read_pairs(path: str, caption_column: str = "caption", embedding_column: str = "embedding"):
    """(embeddings float32 [N, D], captions [N]) from an npz (``embeddings``, ``captions``) or a
    parquet file (a caption column and an embedding column of float lists)."""
    import numpy as np

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"pretrain clip-prefix pairs={path!r}: no such file")
    if file.suffix == ".npz":
        with np.load(file, allow_pickle=False) as z:
            missing = [k for k in ("embeddings", "captions") if k not in z.files]
            if missing:
                raise ValueError(f"{file}: lacks array(s) {', '.join(missing)} (has {', '.join(z.files)})")
            embeddings, captions = z["embeddings"], [str(c) for c in z["captions"]]
    elif file.suffix == ".parquet":
        try:
            import pandas as pd

            frame = pd.read_parquet(file, columns=[caption_column, embedding_column])
        except ImportError:
            raise ImportError(
                f"{file}: reading parquet needs pyarrow, which is not installed; `pip install pyarrow`, or write the "
                f"pairs as an npz file (numpy.savez(FILE, embeddings=float array [N, D], captions=str array [N]))"
            ) from None
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"{file}: needs columns {caption_column!r} and {embedding_column!r} ({exc}); name them with "
                f"--set caption_column=... --set embedding_column=..."
            ) from None
        embeddings = np.stack([np.asarray(v, dtype=np.float32) for v in frame[embedding_column]])
        captions = [str(c) for c in frame[caption_column]]
    else:
        raise ValueError(f"pretrain clip-prefix pairs={path!r}: expected a .npz or .parquet file")
    if embeddings.ndim != 2 or len(embeddings) != len(captions) or not len(captions):
        raise ValueError(
            f"{file}: expected embeddings [N, D] and N captions, got {embeddings.shape} and {len(captions)}"
        )
    return torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)), captions


def _embed_images(clip: nn.Module, normalize: nn.Module, store: Any, paths: Sequence[str], l2: bool) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(paths), 256):
            out.append(clip.visual(normalize(store.gather(paths[i : i + 256]))).float())
    e = torch.cat(out)
    return F.normalize(e, dim=-1) if l2 else e


def _corpus(cfg: PrefixPretrainConfig, ctx: Any) -> dict[str, Any]:
    """Training pairs and evaluation sets: {"train": (embeddings, captions per row), "eval": {...},
    "clip": what made the embeddings}."""
    if cfg.pairs:
        embeddings, captions = read_pairs(cfg.pairs, cfg.caption_column, cfg.embedding_column)
        digest = hashlib.sha256(Path(cfg.pairs).expanduser().read_bytes()).hexdigest()[:16]
        if cfg.captioner.normalize:
            embeddings = F.normalize(embeddings, dim=-1)
        held = min(500, max(1, len(captions) // 50))  # the last 2 % (at most 500) are held out
        rows = [(c,) for c in captions]
        return {
            "train": (embeddings[:-held], rows[:-held]),
            "eval": {"held_out": (embeddings[-held:], rows[-held:])},
            "clip": {
                "source": f"embeddings of {cfg.pairs} (sha256 {digest})",
                "digest": None,
                "dim": embeddings.shape[1],
            },
        }
    from vqabench.images import ImageStore
    from vqabench.plugins import load_plugins
    from vqabench.pretrain import resolve_references

    registry, _ = load_plugins()
    cfg, _ = resolve_references(registry, cfg, cache_dir=ctx.cache_dir, device=ctx.device, progress=ctx.progress)
    clip, _, mean, std, weights = load_open_clip(
        cfg.arch, pretrained=True, checkpoint=cfg.checkpoint, model_cfg=cfg.model_cfg
    )
    clip = clip.to(ctx.device).eval()
    normalize = Normalize(mean, std).to(ctx.device)
    data = ctx.load(TaskKind.CAPTIONING)
    sets = {
        "train": [s for s in data.split("train") if s.domain == "source"],
        **{name: data.splits[name][:EVAL_IMAGES] for name in ("val", "target_val") if data.splits.get(name)},
    }
    paths = list(dict.fromkeys(s.image for v in sets.values() for s in v))
    store = ImageStore.build(
        paths,
        clip_image_size(clip),
        ctx.cache_dir,
        data.revision,
        ctx.progress,
        resize="center_crop",
        dataset=ctx.dataset,
    ).place(ctx.device)
    embedded = {
        name: (
            _embed_images(clip, normalize, store, [s.image for s in v], cfg.captioner.normalize),
            [s.captions for s in v],
        )
        for name, v in sets.items()
    }
    return {
        "train": embedded.pop("train"),
        "eval": embedded,
        "clip": {
            "source": weights,
            "digest": state_digest(normalize.cpu(), clip.visual.cpu()),
            "dim": clip.visual.output_dim,
        },
    }


def _length_batches(
    captions: Sequence[str], tokenizer: CaptionTokenizer, size: int, order: torch.Generator
) -> list[list[int]]:
    """Shuffled batches of row indices whose captions have similar token counts: sorted by length
    within shuffled pools of 32 batches, the batches shuffled again. A batch is padded to its longest
    caption, and padding costs a small decoder as much as the words do."""
    lengths = tokenizer.encode(list(captions), 10_000)[1].sum(1).tolist()
    perm = torch.randperm(len(captions), generator=order).tolist()
    pool = 32 * size
    batches = []
    for i in range(0, len(perm), pool):
        rows = sorted(perm[i : i + pool], key=lambda r: lengths[r])
        batches += [rows[j : j + size] for j in range(0, len(rows), size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=order).tolist()]


def pretrain(cfg: PrefixPretrainConfig, ctx: Any) -> dict[str, Any]:
    """Train mapper and decoder, evaluate, write the artefact into ``ctx.out``; the record's body."""
    from safetensors.torch import save_model
    from tqdm.auto import tqdm

    from vqabench import metrics

    torch.manual_seed(cfg.seed)
    corpus = _corpus(cfg, ctx)
    embeddings, captions = corpus["train"]
    base, source = load_tokenizer(cfg.captioner.tokenizer)
    token_ids = corpus_ids(base, [c for row in captions for c in row]) if cfg.captioner.vocabulary == "corpus" else None
    tokenizer = restricted(base, token_ids) if token_ids is not None else base
    model = PrefixCaptioner(cfg.captioner, embeddings.shape[1], tokenizer).to(ctx.device)
    embeddings = embeddings.to(ctx.device)

    steps_per_epoch = math.ceil(len(captions) / cfg.batch_size)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=cfg.warmup_fraction
    )
    order = torch.Generator().manual_seed(cfg.seed)
    pick = random.Random(cfg.seed)  # which caption of an image a step sees
    step_losses: list[float] = []
    epochs: list[dict[str, Any]] = []
    start = time.perf_counter()
    model.train()
    for epoch in tqdm(range(1, cfg.epochs + 1), desc="pretrain clip-prefix", disable=not ctx.progress):
        t0 = time.perf_counter()
        chosen = [pick.choice(row) for row in captions]
        for rows in _length_batches(chosen, tokenizer, cfg.batch_size, order):
            per_token, valid = model.caption_losses(model.prefix(embeddings[rows]), [chosen[r] for r in rows])
            loss = masked_mean(per_token, valid)
            if not torch.isfinite(loss):
                raise RuntimeError(f"pretrain clip-prefix: non-finite loss at epoch {epoch}; lower --set lr=...")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step_losses.append(round(loss.item(), 5))
        done = step_losses[-steps_per_epoch:]
        epochs.append(
            {"epoch": epoch, "loss": round(sum(done) / len(done), 5), "seconds": round(time.perf_counter() - t0, 1)}
        )
    train_seconds = time.perf_counter() - start

    # Greedy captions of the held-out sets, scored as the captioning task scores (METEOR left out:
    # its JVM takes ~13 s to start): for Mini-CLEVR, source val and the restyled target val.
    model.eval()
    evaluation = {}
    for name, (e, refs) in corpus["eval"].items():
        e = e.to(ctx.device)
        with torch.no_grad():
            predicted = [c for i in range(0, len(e), 256) for c in model.generate(model.prefix(e[i : i + 256]))]
        scored = metrics.caption_metrics(dict(enumerate(predicted)), dict(enumerate(refs)), meteor=False)
        evaluation[name] = {"images": len(refs), **{k: round(v, 4) for k, v in scored.items()}, "example": predicted[0]}
    save_model(model.cpu(), str(ctx.out / ARTIFACT))
    description = f"clip-prefix on {ctx.dataset}: {len(captions)} images' captions, {corpus['clip']['source']}"
    saved = {
        "captioner": to_jsonable(cfg.captioner),
        "tokenizer": source,
        "token_ids": token_ids,
        "clip": corpus["clip"],
        "description": description,
    }
    (ctx.out / ARTIFACT_CONFIG).write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
    return {
        "description": description,
        "corpus": {"images": len(captions), "captions": sum(len(c) for c in captions), "embeddings": corpus["clip"]},
        "tokenizer": tokenizer.name,
        "train_seconds": round(train_seconds, 1),
        "epochs": epochs,
        "step_losses": step_losses,
        "evaluation": evaluation,
    }
