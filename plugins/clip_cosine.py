"""CLIP-cosine (report 004's VQA model) and the zero-shot CLIP baseline it is compared with.

``clip-cosine``: frozen CLIP towers embed the image (``encode_image``) and the question
(``encode_text``); an MLP on the two L2-normalised embeddings regresses a vector in CLIP's text
space::

    v = fc2(dropout(relu(fc1([image, question]))))          2 * D -> hidden -> D

Loss: ``1 - cos(v, t_a)`` with ``t_a`` the CLIP text embedding of the question's answer (report
004: "the cosine similarity loss is used to align predicted and target embedding"); a question
whose answer is not in the vocabulary gives no loss. Prediction: the vocabulary answer whose
embedding is nearest to ``v`` (largest cosine). ``confidence`` is the softmax over the vocabulary
of the cosines times CLIP's logit scale 100 (as zero-shot CLIP turns cosines into probabilities),
so it lies in [0, 1] and ranks like the cosine of the chosen answer against the others.

Report 004's recipe: AdamW, lr 5e-5, weight decay 1e-4, batch 32 with gradient accumulation 2,
3 epochs, a step schedule, mixed precision (``precision="auto"``: bf16 autocast on CUDA). The
report gives neither the step nor the factor of its schedule: torch's ``StepLR`` default factor
0.1, every epoch. It gives neither the MLP's width nor its dropout: 512 and 0.1. Checkpoint
selection: the task's primary metric on val (the report only quotes losses).

``clip-cosine-zeroshot`` (evaluation only): report 004 says the model "outperforms zero-shot
CLIP". Each candidate answer is put into the question's sentence and scored by CLIP's
image-text cosine; the best candidate is predicted (``confidence``: the same softmax of 100 x
cosine over the candidates). Sentences (``statement``):

- "What is the relationship between X and Y?" -> "X is A Y" ("the red circle is left of the blue
  square"); "is" is left out when the answer starts with a finite verb ("has", "are", ...:
  "the man has the hat");
- any other question (generic fallback): the question followed by the answer ("What color is the
  circle? red").

The candidates are the vocabulary's answers, or its ``max_candidates`` most frequent ones.

Both towers are frozen and cacheable (image and question embeddings); the zero-shot model also
memoises each candidate sentence's embedding. Weights: report 004 names no CLIP variant, only "a
CLIP-compatible processor" (Hugging Face's CLIP examples use openai/clip-vit-base-patch32, the same
weights as open_clip's ViT-B-32 "openai"): ViT-B-32 with OpenAI weights (the ``paper`` profile and
``@ViT-B-32-openai``; ``@ViT-L-14-openai`` for a larger one), a local file (``--set
checkpoint=FILE``), the Mini-CLEVR CLIP (``quick``), or random frozen towers (``clip-cosine@random``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from vqabench_plugins.clip_pretrain import MINI_CLEVR_CLIP

from vqabench.config import EvalConfig, TrainConfig
from vqabench.hookspecs import hookimpl
from vqabench.layers import Normalize, QuestionEncoder, answer_loss, keep_frozen_in_eval, predict_answers, state_digest
from vqabench.model import Stem, TaskModel, TextStem
from vqabench.registry import ModelSpec
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.qa import QABatch
from vqabench.transfer import to_device
from vqabench.weights import QUICK_FIX, clip_image_size, load_open_clip

MEMO_SIZE = 262_144  # zero-shot candidate sentences kept embedded (~0.5 GB at 512-d)
LOGIT_SCALE = 100.0  # CLIP's trained temperature: cosines to probabilities, as zero-shot CLIP does
RELATION_QUESTION = re.compile(
    r"^\s*what is the relationship between (?P<subject>.+?) and (?P<object>.+?)\s*\?+\s*$", re.I
)
# An answer starting with one of these already holds its verb ("has", "are on"): no "is" before it.
FINITE_VERBS = frozenset({"is", "are", "was", "were", "has", "have", "had", "does", "do"})


def statement(question: str, answer: str) -> str:
    """The sentence the zero-shot baseline scores for ``answer`` to ``question`` (module docstring)."""
    match = RELATION_QUESTION.match(question)
    if match is None:
        return f"{question.strip()} {answer}"
    verb = "" if answer.split(" ", 1)[0].lower() in FINITE_VERBS else "is "
    return f"{match['subject']} {verb}{answer} {match['object']}"


def _recipe() -> TrainConfig:
    return TrainConfig(
        epochs=3,
        batch_size=32,
        grad_accum=2,
        warmup_epochs=0.0,
        schedule="step",
        step_every=1,
        step_gamma=0.1,
        label_smoothing=0.0,  # no cross-entropy: the loss is 1 - cosine
        weight_decay=1e-4,
        grad_clip=0.0,  # the report clips nothing
        lrs={"head": 5e-5},
        augment=(),  # frozen towers: augmenting would switch the feature cache off
    )


@dataclass(frozen=True)
class CLIPCosineConfig:
    """Report 004: frozen CLIP, an MLP regressing the answer's text embedding, cosine loss."""

    arch: str = "ViT-B-32"  # open_clip architecture
    checkpoint: str = "openai"  # open_clip pretrained tag of ``arch``, a local file, or pretrain:NAME/DATASET
    model_cfg: Mapping[str, Any] = field(default_factory=dict)  # overrides of the arch's open_clip config
    pretrained: bool = True  # False: random-initialised towers, still frozen
    hidden: int = 512  # not given by report 004
    dropout: float = 0.1  # not given by report 004
    train: TrainConfig = field(default_factory=_recipe)

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ValueError(f"clip-cosine: hidden={self.hidden} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"clip-cosine: dropout={self.dropout} must be in [0, 1)")
        if self.train.targets != "hard":
            raise ValueError("clip-cosine: the cosine loss aims at one answer's embedding; set train.targets=hard")


@dataclass(frozen=True)
class CLIPCosineZeroShotConfig:
    """The zero-shot CLIP of report 004's comparison: same CLIP, nothing trained."""

    arch: str = "ViT-B-32"
    checkpoint: str = "openai"
    model_cfg: Mapping[str, Any] = field(default_factory=dict)
    # Candidates per question: the first N answers of the vocabulary (ordered by training count);
    # 0: all. Every candidate is a sentence to embed per distinct question, which on Visual Genome's
    # thousands of predicates is what the evaluation costs.
    max_candidates: int = 0
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.max_candidates < 0:
            raise ValueError(f"clip-cosine-zeroshot: max_candidates={self.max_candidates} must be >= 0 (0: all)")


def _embed_text(tokenizer: Callable, text: nn.Module, texts: list[str], device: torch.device) -> torch.Tensor:
    return text(to_device(tokenizer(texts), device))


def _load_clip(arch: str, checkpoint: str, model_cfg: Mapping[str, Any], pretrained: bool, fix: str) -> Any:
    return load_open_clip(
        arch,
        pretrained=pretrained,
        checkpoint=checkpoint,
        model_cfg={**model_cfg, "custom_text": True},  # the text tower as one module (clip.text)
        fix=fix,
    )


class _FrozenCLIP(TaskModel):
    """What both models share: the frozen towers, the image stem, answer texts embedded by CLIP."""

    resize = "center_crop"  # what CLIP's preprocessing does to photos

    def __init__(self, clip: nn.Module, tokenizer: Callable, mean: Sequence[float], std: Sequence[float], arch: str):
        super().__init__()
        clip.requires_grad_(False)
        self.image_size = clip_image_size(clip)
        self.arch = arch
        self.normalize = Normalize(mean, std)
        # With custom_text, ``visual(x)`` and ``text(tokens)`` are open_clip's ``encode_image`` and
        # ``encode_text`` without normalisation; logit_scale and the rest of CLIP have no use here.
        self.visual = clip.visual
        self.text = clip.text
        self.tokenizer = tokenizer
        self.dim = clip.visual.output_dim

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm CLIP text embeddings [N, D] (float32)."""
        with torch.no_grad():
            return F.normalize(
                _embed_text(self.tokenizer, self.text, texts, self.normalize.mean.device).float(), dim=-1
            )

    def _encode_image(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.visual(self.normalize(images))

    def image_stem(self) -> Stem:
        # Raw encode_image output, normalised by the models: both share one cache per CLIP.
        key = f"clip-cosine/{state_digest(self.normalize, self.visual)}"
        return Stem(name="CLIP image embeddings (raw encode_image)", key=key, encode=self._encode_image)

    def image_features(self, batch: QABatch) -> torch.Tensor:
        """Unit-norm image embeddings, one row per question."""
        image = batch.image_features if batch.image_features is not None else self._encode_image(batch.images)
        return F.normalize(image.float(), dim=-1)[batch.image_index]


class CLIPCosine(_FrozenCLIP):
    """Frozen CLIP towers and report 004's MLP into CLIP's text space."""

    def __init__(
        self,
        cfg: CLIPCosineConfig,
        answer_vocab: Sequence[str],
        clip: nn.Module,
        tokenizer: Callable,
        mean: Sequence[float],
        std: Sequence[float],
        weights: str,
    ):
        super().__init__(clip, tokenizer, mean, std, cfg.arch)
        self.answer_vocab = list(answer_vocab)
        self.weights = weights
        self.question_encoder = QuestionEncoder(self.text, functools.partial(_embed_text, tokenizer), self.dim)
        self.head = nn.Sequential(
            nn.Linear(2 * self.dim, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, self.dim)
        )
        # The targets: every vocabulary answer's text embedding, fixed since the text tower is frozen.
        self.register_buffer("answer_embeddings", self.embed_texts(self.answer_vocab), persistent=False)
        keep_frozen_in_eval(self)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"head": list(self.head.parameters())}

    def train(self, mode: bool = True) -> CLIPCosine:
        super().train(mode)
        keep_frozen_in_eval(self)
        return self

    def _encode_text(self, questions: list[str]) -> tuple[torch.Tensor, None]:
        with torch.no_grad():
            return _embed_text(self.tokenizer, self.text, questions, self.normalize.mean.device), None

    def text_stem(self) -> TextStem:
        # The arch names the tokenizer; the digest covers the weights (and the context length).
        key = f"clip-cosine/{self.arch}/{state_digest(self.text)}"
        return TextStem(name="CLIP text embeddings (raw encode_text)", key=key, encode=self._encode_text)

    def text_cache_info(self) -> str | None:
        return "CLIP text embeddings, memoised per distinct question"

    def embedding(self, batch: QABatch) -> torch.Tensor:
        """The predicted unit vector in CLIP's text space, one row per question."""
        text = batch.text_features if batch.text_features is not None else self.question_encoder(batch.questions)
        x = torch.cat([self.image_features(batch), F.normalize(text.float(), dim=-1)], dim=-1)
        return F.normalize(self.head(x).float(), dim=-1)

    def forward(self, batch: QABatch) -> torch.Tensor:
        """Logits [B, V]: 100 x the cosine of the predicted vector with each answer's embedding."""
        return LOGIT_SCALE * self.embedding(batch) @ self.answer_embeddings.T

    def loss(self, batch: QABatch) -> torch.Tensor:
        predicted = self.embedding(batch)
        target = self.answer_embeddings[batch.labels.clamp(min=0)]
        per_question = 1.0 - (predicted * target).sum(-1)
        # A masked mean (answers outside the vocabulary have label -1), without a host-device sync.
        valid = batch.labels >= 0
        return (per_question * valid).sum() / valid.sum().clamp(min=1)

    def predict(self, batch: QABatch) -> list[dict[str, Any]]:
        with torch.no_grad():
            return predict_answers(self(batch), self.answer_vocab)


class CLIPCosineZeroShot(_FrozenCLIP):
    """Every candidate answer in the question's sentence, scored by CLIP's image-text cosine."""

    def __init__(
        self,
        arch: str,
        answer_vocab: Sequence[str],
        clip: nn.Module,
        tokenizer: Callable,
        mean: Sequence[float],
        std: Sequence[float],
        weights: str,
    ):
        super().__init__(clip, tokenizer, mean, std, arch)
        self.answer_vocab = list(answer_vocab)
        self.weights = weights
        # sentence -> its unit-norm embedding (CPU); cleared when full, as QuestionEncoder's memo
        self._memo: dict[str, torch.Tensor] = {}
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> CLIPCosineZeroShot:
        return super().train(False)  # nothing trains: dropout and normalisation stay in eval mode

    def candidates(self, questions: Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings [B, V, D] of each question's sentence with every vocabulary answer."""
        sentences = [statement(q, a) for q in questions for a in self.answer_vocab]
        missing = list(dict.fromkeys(s for s in sentences if s not in self._memo))
        if len(self._memo) + len(missing) > MEMO_SIZE:
            self._memo.clear()
            missing = list(dict.fromkeys(sentences))
        for start in range(0, len(missing), 512):
            chunk = missing[start : start + 512]
            self._memo.update(zip(chunk, self.embed_texts(chunk).cpu()))
        table = torch.stack([self._memo[s] for s in sentences]).to(self.normalize.mean.device)
        return table.view(len(questions), len(self.answer_vocab), -1)

    def forward(self, batch: QABatch) -> torch.Tensor:
        """Logits [B, V]: 100 x the cosine of the image with each candidate sentence."""
        with torch.no_grad():
            image = self.image_features(batch)
            return LOGIT_SCALE * torch.einsum("bd,bvd->bv", image, self.candidates(batch.questions))

    def loss(self, batch: QABatch) -> torch.Tensor:
        """Cross-entropy of the candidate logits (a validation loss; this model never trains)."""
        return answer_loss(self(batch), batch.labels)

    def predict(self, batch: QABatch) -> list[dict[str, Any]]:
        return predict_answers(self(batch), self.answer_vocab)


_FIX = f"{QUICK_FIX}: the CLIP pretrained on Mini-CLEVR, or `--set checkpoint=FILE`"


def _vocab(data: TaskData, model: str) -> list[str]:
    if not data.answer_vocab:
        raise ValueError(f"{model} needs the dataset's answer vocabulary (TaskData.answer_vocab)")
    return list(data.answer_vocab)


def build_clip_cosine(cfg: CLIPCosineConfig, answer_vocab: Sequence[str]) -> CLIPCosine:
    """The model for ``cfg``; raises ``WeightsUnavailable`` before training when weights are missing."""
    fix = f"{_FIX}, or `clip-cosine@random` (random frozen towers)"
    clip, tokenizer, mean, std, weights = _load_clip(cfg.arch, cfg.checkpoint, cfg.model_cfg, cfg.pretrained, fix)
    return CLIPCosine(cfg, answer_vocab, clip.eval(), tokenizer, mean, std, f"{weights}, frozen; cosine MLP trained")


def build(config: CLIPCosineConfig, data: TaskData, device: Any) -> CLIPCosine:
    """``ModelSpec.build`` of clip-cosine."""
    return build_clip_cosine(config, _vocab(data, "clip-cosine")).to(device)


def build_clip_cosine_zeroshot(
    cfg: CLIPCosineZeroShotConfig, answer_vocab: Sequence[str], pretrained: bool = True
) -> CLIPCosineZeroShot:
    """The zero-shot model for ``cfg`` (``pretrained=False``: random towers, for tests and benchmarks only)."""
    clip, tokenizer, mean, std, weights = _load_clip(cfg.arch, cfg.checkpoint, cfg.model_cfg, pretrained, _FIX)
    candidates = list(answer_vocab)[: cfg.max_candidates or None]
    return CLIPCosineZeroShot(cfg.arch, candidates, clip.eval(), tokenizer, mean, std, f"{weights}, not trained")


def build_zeroshot(config: CLIPCosineZeroShotConfig, data: TaskData, device: Any) -> CLIPCosineZeroShot:
    """``ModelSpec.build`` of clip-cosine-zeroshot."""
    return build_clip_cosine_zeroshot(config, _vocab(data, "clip-cosine-zeroshot")).to(device)


# The quick profile uses the CLIP ``vqabench pretrain clip`` trains on Mini-CLEVR (trained on first
# use). Report 004's 3 epochs at 5e-5 barely move the MLP on Mini-CLEVR's ~12k questions; from cached
# features an epoch takes under half a second on one core, so the quick recipe trains 20 epochs at
# 2e-3, halved every 8. Measured (seed 0, 1 CPU thread): mini-clevr/vqa test accuracy 0.487 (majority
# 0.206, clip-cosine-zeroshot 0.142), 17 s per cell; mini-clevr-relations/vqa 0.286 (majority 0.255,
# zero-shot 0.210), 12 s: the pooled 128-d embeddings of this small CLIP hardly encode where objects
# are (the left-of questions of mini-clevr/vqa stay near chance too, as with clip-linear).
QUICK = {
    "arch": "ViT-B-32",
    "checkpoint": "pretrain:clip/mini-clevr",
    "model_cfg": MINI_CLEVR_CLIP,
    "hidden": 256,
    "train.epochs": 20,
    "train.lrs": {"head": 2e-3},
    "train.step_every": 8,
    "train.step_gamma": 0.5,
}
QUICK_ZEROSHOT = {"arch": "ViT-B-32", "checkpoint": "pretrain:clip/mini-clevr", "model_cfg": MINI_CLEVR_CLIP}
TAGS = {
    "ViT-B-32-openai": {"arch": "ViT-B-32", "checkpoint": "openai"},
    "ViT-L-14-openai": {"arch": "ViT-L-14", "checkpoint": "openai"},
}


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="clip-cosine",
            family="clip-cosine",
            display_name="CLIP-cosine (report 004)",
            task_kinds=(TaskKind.VQA,),
            config_cls=CLIPCosineConfig,
            build=build,
            profiles={"quick": QUICK, "paper": {}},
            # No checkpoint for random towers: a quick profile's pretrain: reference would otherwise be
            # pretrained first, only to be ignored.
            tags={**TAGS, "random": {"pretrained": False, "checkpoint": ""}},
            description="frozen CLIP ViT-B/32 (OpenAI) image and question embeddings, an MLP regressing the "
            "answer's CLIP text embedding with a cosine loss, nearest answer predicted (report 004)",
        )
    )
    register(
        ModelSpec(
            name="clip-cosine-zeroshot",
            family="clip-cosine-zeroshot",
            display_name="CLIP zero-shot VQA (report 004 baseline)",
            task_kinds=(TaskKind.VQA,),
            config_cls=CLIPCosineZeroShotConfig,
            build=build_zeroshot,
            profiles={"quick": QUICK_ZEROSHOT, "paper": {}},
            tags=TAGS,
            description="zero-shot CLIP for VQA: each candidate answer put into the question's sentence, "
            "the best image-text cosine predicted (report 004's baseline)",
        )
    )
