"""CLIP-linear (report 002, after Deuser et al. 2022): linear layers on frozen CLIP features.

Frozen CLIP towers embed the image (``encode_image``) and the question (``encode_text``); the
raw embeddings are used, not L2-normalised, as report 002's code does. The head (report 002's
layer names)::

    x      = fc1(dp1(ln1([text, image])))          linear trunk, 2 * D -> hidden
    vqa    = fc2(dp2(ln2(x)))                      answer logits over the vocabulary
    aux    = fc_aux(x)                             answer-type logits
    output = vqa * sigmoid(fc_gate(aux))           the answer logits gated by the answer type
    answerable = fc3(x)                            answerability logit

Loss: ``answer_weight * CE(output, label) + type_weight * CE(aux, answer type) +
answerable_weight * BCE(answerable, batch.answerable)``, every weight 1 by default. The report
applies a sigmoid in the model and a BCE on the probability; here the sigmoid sits in
``binary_cross_entropy_with_logits`` (the same function, stable in low precision).

Answer types: VizWiz's four ("other", "yes/no", "number", "unanswerable") in that fixed order,
then any other type name found in the dataset's splits (all of them, so that the head is the
same whichever kind's data it was built from), sorted; a question without an answer type (or
with one the head was not built for) gives no type loss. Mini-CLEVR and VQA v2 use
VizWiz's names, so the type head has four outputs there.

One model serves both task kinds: every prediction carries ``answer``, ``confidence`` (the
softmax probability of the gated logits' argmax) and ``answerable_score`` (the sigmoid), and
neither the parameters nor the loss depend on the kind (``training_depends_on_kind = False``);
the recipe selects its checkpoint by ``val_loss`` so that the selection does not either.

Both towers are frozen, so both are cacheable stems: a training epoch from the feature cache is
a pass over cached vectors through the head (group "head", the only one).

Weights: report 002's ViT-L-14-336 and RN50x64 with OpenAI weights (``@ViT-L-14-336-openai``,
the default, and ``@RN50x64-openai``), a local checkpoint file (``--set checkpoint=FILE``), the
CLIP ``vqabench pretrain clip`` trains on Mini-CLEVR (the ``quick`` profile), or random frozen
towers (``@random``: for speed benchmarks and as the floor a pretraining must beat).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from vqabench_plugins.clip_pretrain import MINI_CLEVR_CLIP

from vqabench.config import TrainConfig
from vqabench.hookspecs import hookimpl
from vqabench.layers import (
    Normalize,
    QuestionEncoder,
    answer_loss,
    keep_frozen_in_eval,
    predict_answers,
    state_digest,
)
from vqabench.model import Stem, TaskModel, TextStem
from vqabench.registry import ModelSpec
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.qa import QABatch
from vqabench.transfer import index_tensor, to_device
from vqabench.weights import QUICK_FIX, clip_image_size, load_open_clip

# VizWiz's answer types, first and in a fixed order, so that a type index means the same thing
# whatever the dataset and whichever task kind's splits the model was built from.
VIZWIZ_ANSWER_TYPES = ("other", "yes/no", "number", "unanswerable")


def _recipe() -> TrainConfig:
    # Report 002: Adam at lr 1e-3, plain cross-entropy, 10 epochs. AdamW without weight decay is
    # Adam; "step" with gamma 1 and no warm-up keeps the rate constant as the report's optimizer
    # does; no gradient clipping, no label smoothing. The report gives no batch size: 128. No
    # augmentation: the towers are frozen, and augmenting would switch the feature cache off.
    return TrainConfig(
        epochs=10,
        batch_size=128,
        warmup_epochs=0.0,
        schedule="step",
        step_gamma=1.0,
        label_smoothing=0.0,
        weight_decay=0.0,
        grad_clip=0.0,
        lrs={"head": 1e-3},
        best_metric="val_loss",  # the same for vqa and answerability, so one training serves both
        augment=(),
    )


@dataclass(frozen=True)
class CLIPLinearConfig:
    """Report 002: CLIP ViT-L/14@336px (OpenAI weights), frozen, and its linear head."""

    arch: str = "ViT-L-14-336"  # open_clip architecture
    checkpoint: str = "openai"  # open_clip pretrained tag of ``arch``, a local file, or pretrain:NAME/DATASET
    model_cfg: Mapping[str, Any] = field(default_factory=dict)  # overrides of the arch's open_clip config
    pretrained: bool = True  # False: random-initialised towers, still frozen
    hidden: int = 512  # trunk width; report 002 does not state it
    dropout: float = 0.5
    answer_weight: float = 1.0
    type_weight: float = 1.0
    answerable_weight: float = 1.0
    train: TrainConfig = field(default_factory=_recipe)

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ValueError(f"clip-linear: hidden={self.hidden} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"clip-linear: dropout={self.dropout} must be in [0, 1)")
        for name in ("answer_weight", "type_weight", "answerable_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"clip-linear: {name}={getattr(self, name)} must be >= 0")
        if self.train.targets != "hard":
            raise ValueError("clip-linear: report 002 trains with cross-entropy on one label; set train.targets=hard")


class CLIPLinearHead(nn.Module):
    """Report 002's head on [text, image] embeddings: (gated answer logits, type logits, answerability logit)."""

    def __init__(self, dim: int, hidden: int, answers: int, types: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(2 * dim)
        self.dp1 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(2 * dim, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.dp2 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, answers)
        self.fc_aux = nn.Linear(hidden, types)
        self.fc_gate = nn.Linear(types, answers)
        self.fc3 = nn.Linear(hidden, 1)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.fc1(self.dp1(self.ln1(torch.cat([text, image], dim=-1))))  # the report's order: text first
        vqa = self.fc2(self.dp2(self.ln2(x)))
        aux = self.fc_aux(x)
        # The gate masks the answers the predicted type rules out (numbers for a yes/no question).
        output = vqa * torch.sigmoid(self.fc_gate(aux))
        return output, aux, self.fc3(x).squeeze(-1)


class CLIPLinear(TaskModel):
    """Frozen CLIP towers, report 002's head; one model for vqa and answerability."""

    resize = "center_crop"  # what CLIP's preprocessing does to photos
    training_depends_on_kind = False

    def __init__(
        self,
        cfg: CLIPLinearConfig,
        answer_vocab: Sequence[str],
        answer_types: Sequence[str],
        clip: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        mean: Sequence[float],
        std: Sequence[float],
        weights: str,
    ):
        super().__init__()
        self.answer_vocab = list(answer_vocab)
        self.answer_types = list(answer_types)
        self.type_index = {t: i for i, t in enumerate(self.answer_types)}
        self.image_size = clip_image_size(clip)
        self.weights = weights
        self.arch = cfg.arch
        self.label_smoothing = cfg.train.label_smoothing
        self.loss_weights = (cfg.answer_weight, cfg.type_weight, cfg.answerable_weight)
        self.normalize = Normalize(mean, std)
        # Only the two towers are kept: CLIP's logit_scale has no use here. With custom_text the text
        # tower is one module, so ``visual(x)`` and ``text(tokens)`` are exactly open_clip's
        # ``encode_image(x, normalize=False)`` and ``encode_text(tokens, normalize=False)``.
        clip.requires_grad_(False)
        self.visual = clip.visual
        self._embed = functools.partial(_embed_text, tokenizer)
        dim = clip.visual.output_dim
        self.question_encoder = QuestionEncoder(clip.text, self._embed, dim)
        self.head = CLIPLinearHead(dim, cfg.hidden, len(self.answer_vocab), len(self.answer_types), cfg.dropout)
        keep_frozen_in_eval(self)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"head": list(self.head.parameters())}

    def train(self, mode: bool = True) -> CLIPLinear:
        super().train(mode)
        keep_frozen_in_eval(self)
        return self

    def _encode_image(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # frozen: no activations kept for a backward pass that never reaches it
            return self.visual(self.normalize(images))

    def _encode_text(self, questions: list[str]) -> tuple[torch.Tensor, None]:
        with torch.no_grad():
            return self._embed(self.question_encoder.encoder, questions, self.normalize.mean.device), None

    def image_stem(self) -> Stem:
        key = f"clip-linear/{state_digest(self.normalize, self.visual)}"
        return Stem(name="CLIP image embeddings (raw encode_image)", key=key, encode=self._encode_image)

    def text_stem(self) -> TextStem:
        # The arch names the tokenizer; the digest covers the weights (and the context length).
        key = f"clip-linear/{self.arch}/{state_digest(self.question_encoder.encoder)}"
        return TextStem(name="CLIP text embeddings (raw encode_text)", key=key, encode=self._encode_text)

    def text_cache_info(self) -> str | None:
        return "CLIP text embeddings, memoised per distinct question"

    def forward(self, batch: QABatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Each distinct image is encoded once; image_index maps every question to its image.
        image = batch.image_features if batch.image_features is not None else self._encode_image(batch.images)
        text = batch.text_features if batch.text_features is not None else self.question_encoder(batch.questions)
        return self.head(text.float(), image.float()[batch.image_index])

    def type_labels(self, answer_types: Sequence[str], device: torch.device) -> torch.Tensor:
        """The answer-type index of each question; -1 (no type loss) for an empty or unknown type."""
        return index_tensor([self.type_index.get(t, -1) for t in answer_types], device)

    def loss(self, batch: QABatch) -> torch.Tensor:
        output, aux, answerable = self(batch)
        w_answer, w_type, w_answerable = self.loss_weights
        # answer_loss is a cross-entropy that ignores label -1, for answers and types alike.
        answer = answer_loss(output, batch.labels, self.label_smoothing)
        types = answer_loss(aux, self.type_labels(batch.answer_types, aux.device))
        able = F.binary_cross_entropy_with_logits(answerable.float(), batch.answerable.float())
        return w_answer * answer + w_type * types + w_answerable * able

    def predict(self, batch: QABatch) -> list[dict[str, Any]]:
        with torch.no_grad():
            output, _, answerable = self(batch)
            lines = predict_answers(output, self.answer_vocab)
            scores = torch.sigmoid(answerable.float()).tolist()
        return [{**line, "answerable_score": score} for line, score in zip(lines, scores)]


def _embed_text(tokenizer: Callable, text: nn.Module, questions: list[str], device: torch.device) -> torch.Tensor:
    return text(to_device(tokenizer(questions), device))


def answer_types(data: TaskData) -> list[str]:
    """VizWiz's four answer types, then the other type names of ``data``'s splits, sorted."""
    seen = {getattr(s, "answer_type", "") for samples in data.splits.values() for s in samples}
    return [*VIZWIZ_ANSWER_TYPES, *sorted(seen - set(VIZWIZ_ANSWER_TYPES) - {""})]


def build_clip_linear(cfg: CLIPLinearConfig, answer_vocab: Sequence[str], types: Sequence[str]) -> CLIPLinear:
    """The model for ``cfg``; raises ``WeightsUnavailable`` before training when weights are missing."""
    if not answer_vocab:
        raise ValueError("clip-linear needs the dataset's answer vocabulary (TaskData.answer_vocab)")
    clip, tokenizer, mean, std, weights = load_open_clip(
        cfg.arch,
        pretrained=cfg.pretrained,
        checkpoint=cfg.checkpoint,
        model_cfg={**cfg.model_cfg, "custom_text": True},  # the text tower as one module (clip.text)
        fix=f"{QUICK_FIX}: the CLIP pretrained on Mini-CLEVR, or `clip-linear@random` (random frozen towers), "
        "or `--set checkpoint=FILE`",
    )
    return CLIPLinear(cfg, answer_vocab, types, clip, tokenizer, mean, std, f"{weights}, frozen; head trained")


def build(config: CLIPLinearConfig, data: TaskData, device: Any) -> CLIPLinear:
    """``ModelSpec.build``: the same model whatever ``data.kind`` (vocabulary and answer types from ``data``)."""
    return build_clip_linear(config, data.answer_vocab or [], answer_types(data)).to(device)


# The quick profile trains the head on the CLIP that ``vqabench pretrain clip`` trains on
# Mini-CLEVR (trained on first use; its 128-d embeddings make a 256-d concatenation, hence a
# 256-wide trunk). The report's 10 epochs are too few for Mini-CLEVR's ~3k training questions;
# from cached features an epoch takes well under a second. Measured (seed 0): test VQA accuracy
# 0.497 (majority answer 0.206), AP (unanswerable) 0.198 (prior 0.073).
QUICK = {
    "arch": "ViT-B-32",
    "checkpoint": "pretrain:clip/mini-clevr",
    "model_cfg": MINI_CLEVR_CLIP,
    "hidden": 256,
    "train.epochs": 30,
    "train.batch_size": 64,
}
TAGS = {
    "ViT-L-14-336-openai": {"arch": "ViT-L-14-336", "checkpoint": "openai"},
    "RN50x64-openai": {"arch": "RN50x64", "checkpoint": "openai"},
    # No checkpoint: random towers need none, and a quick profile's pretrain: reference would
    # otherwise be pretrained first, only to be ignored.
    "random": {"pretrained": False, "checkpoint": ""},
}


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="clip-linear",
            family="clip-linear",
            display_name="CLIP-linear (Deuser et al.)",
            task_kinds=(TaskKind.VQA, TaskKind.ANSWERABILITY),
            config_cls=CLIPLinearConfig,
            build=build,
            profiles={"quick": QUICK, "paper": {}},
            tags=TAGS,
            description="frozen CLIP ViT-L/14@336px (OpenAI) embeddings, linear trunk, answer head gated by "
            "the answer type, answerability head (report 002)",
        )
    )
