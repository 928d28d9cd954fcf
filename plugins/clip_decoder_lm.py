"""``vqabench pretrain caption-lm --data mini-clevr``: a small GPT-2 language model of a dataset's captions, text only.

Why: report 003 starts its decoder from GPT-2 and trains only cross-attention, the projection and
a PEFT module (adapters, a prefix or LoRA) on top of the frozen language model. Offline there is
no GPT-2, and a frozen *random* decoder would make every PEFT variant meaningless. This recipe
gives the quick profile what GPT-2 gives the paper profile: a language model that already writes
the dataset's kind of sentence, trained once and stored content-addressed in the cache
(``vqabench.pretrain``); the quick profile references it as ``pretrain:caption-lm/mini-clevr``.

Corpus: the captioning kind's source-domain training captions (all of each image's references) of
a separate Mini-CLEVR draw, the same one ``pretrain:clip/mini-clevr`` trains on, so that no caption
a run evaluates on was seen here and no further images are generated.

Vocabulary: open_clip's bundled BPE (49,408 ids) restricted to the ids that occur in the corpus
plus begin, end and unknown (``caption_text.restricted``): a 49k-way softmax would dominate the
cost of a 128-wide decoder on CPU. The ids are saved as ``vocabulary.json`` and map back to text
through the same BPE.

Files: ``model.safetensors`` and ``config.json`` (``GPT2LMHeadModel.save_pretrained``, without
cross-attention: the captioner adds it when it loads the model) and ``vocabulary.json``. The
record holds the loss curve and the validation loss and perplexity before and after training.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from vqabench_plugins.caption_text import VOCABULARY, CaptionTokenizer, load_caption_tokenizer, restricted
from vqabench_plugins.clip_pretrain import CORPUS

from vqabench.registry import PretrainSpec
from vqabench.tasks import TaskKind

ARTIFACT = "model.safetensors"


@dataclass(frozen=True)
class CaptionLMConfig:
    """The recipe: a 2-block, 128-wide GPT-2 trained in about half a minute on 2 CPU cores."""

    tokenizer: str = "open_clip"  # caption_text.load_caption_tokenizer source
    layers: int = 2
    width: int = 128
    heads: int = 4
    positions: int = 64  # longest caption in tokens (with begin and end); Mini-CLEVR's have up to 44
    # A seeded sample of the corpus's captions (0: all), read once: on 2 CPU cores a 128-wide GPT-2
    # trains on about 10k tokens a second, and one pass over 8,000 distinct captions taught more
    # than two passes over fewer in the same time.
    max_captions: int = 8000
    epochs: int = 1
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    seed: int = 0
    data: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: CORPUS)  # dataset overrides by name

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.positions < 4:
            raise ValueError("pretrain caption-lm: epochs and batch_size must be >= 1 and positions >= 4")


def _captions(ctx: Any, split: str) -> list[str]:
    return [c for s in ctx.load(TaskKind.CAPTIONING).split(split) if s.domain == "source" for c in s.captions]


def _loss(model: Any, tokenizer: Any, texts: list[str], positions: int, device: Any) -> torch.Tensor:
    ids, mask = tokenizer.encode(texts, positions)
    ids, mask = ids.to(device), mask.to(device)
    return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(~mask, -100)).loss


def _val_loss(model: Any, tokenizer: Any, texts: list[str], cfg: CaptionLMConfig, device: Any) -> float:
    model.eval()
    with torch.no_grad():
        losses = [
            _loss(model, tokenizer, texts[i : i + 256], cfg.positions, device).item() for i in range(0, len(texts), 256)
        ]
    model.train()
    return sum(losses) / max(len(losses), 1)


def new_model(cfg: CaptionLMConfig, texts: Sequence[str]) -> tuple[Any, CaptionTokenizer]:
    """A random GPT-2 of ``cfg``'s shape over the vocabulary of ``texts``, and its tokenizer.

    Raises when a caption is longer than ``cfg.positions``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    base = load_caption_tokenizer(cfg.tokenizer)
    ids = sorted({i for t in texts for i in base._encode(t)})
    tokenizer = restricted(base, ids)
    longest = max(len(base._encode(t)) + 2 for t in texts)
    if longest > cfg.positions:
        raise ValueError(
            f"pretrain caption-lm: the longest caption has {longest} tokens, more than positions={cfg.positions}; "
            f"set --set positions={longest}"
        )
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        n_positions=cfg.positions,
        n_embd=cfg.width,
        n_layer=cfg.layers,
        n_head=cfg.heads,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
        # No dropout (one pass over distinct captions does not overfit) and PyTorch's fused tanh-GELU:
        # together a fifth of a CPU step of GPT-2's defaults.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        activation_function="gelu_pytorch_tanh",
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(config), tokenizer


def save(model: Any, cfg: CaptionLMConfig, tokenizer: CaptionTokenizer, out: Path) -> Path:
    """Write ``model`` (``save_pretrained``) and its vocabulary into ``out``; the artefact file."""
    model.cpu().save_pretrained(str(out))
    vocabulary = {"tokenizer": cfg.tokenizer, "ids": list(tokenizer.ids)}
    (Path(out) / VOCABULARY).write_text(json.dumps(vocabulary) + "\n", encoding="utf-8")
    return Path(out) / ARTIFACT


def run(cfg: CaptionLMConfig, ctx: Any) -> dict[str, Any]:
    """Train, evaluate and write the model into ``ctx.out``; return the record's body."""
    torch.manual_seed(cfg.seed)
    texts, val = _captions(ctx, "train"), _captions(ctx, "val")
    if not texts:
        raise ValueError(f"pretrain caption-lm: {ctx.dataset} has no source-domain training captions")
    if 0 < cfg.max_captions < len(texts):
        pick = torch.randperm(len(texts), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.max_captions]
        texts = [texts[i] for i in sorted(pick.tolist())]
    val = val[:1000]  # the validation loss is a headline number, not a selection: a sample suffices
    model, tokenizer = new_model(cfg, texts)
    model = model.to(ctx.device)
    before = _val_loss(model, tokenizer, val, cfg, ctx.device) if val else None
    steps = cfg.epochs * math.ceil(len(texts) / cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=steps, pct_start=cfg.warmup_fraction
    )
    order = torch.Generator().manual_seed(cfg.seed)
    step_losses: list[float] = []
    epochs = []
    start = time.perf_counter()
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(len(texts), generator=order).tolist()
        for i in range(0, len(perm), cfg.batch_size):
            loss = _loss(model, tokenizer, [texts[r] for r in perm[i : i + cfg.batch_size]], cfg.positions, ctx.device)
            if not torch.isfinite(loss):
                raise RuntimeError(f"pretrain caption-lm: non-finite loss at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step_losses.append(round(loss.item(), 5))
        done = step_losses[-math.ceil(len(texts) / cfg.batch_size) :]
        epochs.append(
            {"epoch": epoch, "loss": round(sum(done) / len(done), 5), "seconds": round(time.perf_counter() - t0, 1)}
        )
    train_seconds = time.perf_counter() - start
    after = _val_loss(model, tokenizer, val, cfg, ctx.device) if val else None
    save(model, cfg, tokenizer, ctx.out)
    longest = max(len(tokenizer.encode([t], cfg.positions)[0][0]) for t in texts)
    evaluation = {"vocabulary": tokenizer.vocab_size, "longest_caption_tokens": longest}
    if before is not None and after is not None:
        evaluation.update(
            val_loss_before=round(before, 4),
            val_loss=round(after, 4),
            val_perplexity=round(math.exp(after), 3),
        )
    return {
        "corpus": {
            "captions": len(texts),
            "val_captions": len(val),
            "tokens": int(tokenizer.encode(texts, cfg.positions)[1].sum()),
        },
        "train_seconds": round(train_seconds, 1),
        "epochs": epochs,
        "step_losses": step_losses,
        "evaluation": evaluation,
    }


SPEC = PretrainSpec(
    name="caption-lm",
    task_kinds=(TaskKind.CAPTIONING,),
    config_cls=CaptionLMConfig,
    run=run,
    artifact=ARTIFACT,
    description="a small GPT-2 language model of a dataset's source-domain captions (text only), once",
)
