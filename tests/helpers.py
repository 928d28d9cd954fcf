"""Helpers shared by tests (a module, not conftest.py, so sub-folder conftests cannot shadow it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqabench.tasks.qa import QABatch


def add_distribution(
    site: Path, name: str, entry_points: dict[str, str], modules: dict[str, str] | None = None
) -> None:
    """Make ``site`` hold an installed-looking distribution with ``vqabench`` entry points."""
    dist = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[vqabench]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for mod, source in (modules or {}).items():
        (site / f"{mod}.py").write_text(source)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vqabench.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def run_in(tmp_path: Path, models: str, tasks: str, *extra: str, out: str = "runs") -> subprocess.CompletedProcess[str]:
    """``vqabench run`` of ``models`` on ``tasks`` with its runs and cache under ``tmp_path``."""
    where = ["--out", str(tmp_path / out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    return run_cli("run", "--models", models, "--tasks", tasks, *where, *extra)


NARROW_RESNET = {"channels": (8, 16, 32, 64), "stem_width": 8}
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def save_tiny_clip_checkpoint(root: Path, model_cfg: dict | None = None) -> Path:
    """A random open_clip CLIP saved as ``vqabench pretrain clip`` saves one: the safetensors state
    dict beside an ``open_clip_config.json`` (open_clip's hub format); returns the checkpoint file."""
    import json

    from safetensors.torch import save_file

    from vqabench.weights import OPEN_CLIP_CONFIG, load_open_clip

    cfg = model_cfg or TINY_CLIP
    clip, _, mean, std, _ = load_open_clip("ViT-B-32", pretrained=False, checkpoint="", model_cfg=cfg)
    root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(root / "open_clip_model.safetensors"))
    config = {"model_cfg": cfg, "preprocess_cfg": {"mean": list(mean), "std": list(std)}}
    (root / OPEN_CLIP_CONFIG).write_text(json.dumps(config))
    return root / "open_clip_model.safetensors"


QUESTION_WORDS = (
    "what color is the how many are there objects object of left right red blue green yellow purple cyan "
    "circle square triangle pentagon small large ? a an"
).split()


def save_tiny_sentence_transformer(root: Path, dim: int = 32) -> Path:
    """A random one-layer BERT SentenceTransformer with ``dim``-d output, saved with ``.save``."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    bert = root / "bert"
    bert.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *QUESTION_WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(str(bert))
    config = BertConfig(
        vocab_size=5 + len(QUESTION_WORDS),
        hidden_size=dim,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(bert))
    model = SentenceTransformer(modules=[models.Transformer(str(bert)), models.Pooling(dim)], device="cpu")
    model.save(str(root / "sbert"))
    return root / "sbert"


def isolate_caches(monkeypatch: pytest.MonkeyPatch, root: Path, *, offline: bool = True) -> None:
    """Empty HF / torch / sentence-transformers caches under ``root``; no network at all."""
    from huggingface_hub import constants

    for var in ("HF_HOME", "HF_HUB_CACHE", "TORCH_HOME", "SENTENCE_TRANSFORMERS_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(var, str(root / var.lower()))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root / "hf_hub_cache"))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        # Online mode, but the endpoint refuses connections: the reachability probe must say so.
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")


MINI_CLEVR_ANSWERS = 15  # 6 colours, yes/no, counts 0-6


def vocab(n: int) -> list[str]:
    return [f"answer{i}" for i in range(n)]


def make_batch(size: int, answers: int, seed: int = 0) -> QABatch:
    """Four questions about two images."""
    g = torch.Generator().manual_seed(seed)
    questions = [
        "what color is the circle?",
        "how many red objects are there?",
        "what color is the circle?",
        "is the red square left of the blue circle?",
    ]
    return QABatch(
        ids=["q0", "q1", "q2", "q3"],
        images=torch.rand(2, 3, size, size, generator=g),
        image_index=torch.tensor([0, 0, 1, 1]),
        questions=questions,
        labels=torch.tensor([0, 1, 2, answers - 1]),
        answerable=torch.ones(4),
        question_types=["query_color", "count", "query_color", "left_of"],
        answer_types=["other", "number", "other", "yes/no"],
    )


def check_gradients(model, batch) -> None:
    """Every trainable parameter gets a non-zero gradient, every frozen one none.

    One optimiser step first: zero-initialised weights (LoRA's B, timm's last BatchNorm of each
    block) cut the gradient of what comes before them at step 0.
    """
    params = [p for ps in model.param_groups().values() for p in ps]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in params} == trainable and len(params) == len(trainable)
    opt = torch.optim.AdamW(params, lr=1e-3)
    model.train()
    model.loss(batch).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    model.loss(batch).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
        else:
            assert p.grad is None, f"frozen {name} got a gradient"


def train_steps(model, batch, lr: float, steps: int) -> list[float]:
    """AdamW over the model's parameter groups on one fixed batch; the loss of every step."""
    opt = torch.optim.AdamW([p for ps in model.param_groups().values() for p in ps], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
