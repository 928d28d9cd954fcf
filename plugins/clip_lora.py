"""CLIP-LoRA (report 000, section 3): frozen CLIP ViT-B/32 towers with LoRA, fused as ResNet-SBERT.

CLIP's 512-d image and text embeddings go through the same ``vqabench.layers.FusionHead`` as
ResNet-SBERT. LoRA (r=8, alpha=32, via peft) adapts the attention output projection, ``mlp.c_fc``
and ``mlp.c_proj`` of visual blocks 10-11.

How LoRA reaches the attention output projection: open_clip's default block runs
``nn.MultiheadAttention``, whose functional forward reads ``out_proj.weight`` directly, so a LoRA
layer wrapped around ``attn.out_proj`` would never be called. The adapted towers are therefore
built with open_clip's own ``block_type="custom"`` block, whose ``Attention`` computes the same
function with the same parameter names (the OpenAI checkpoint loads strictly) but calls
``self.out_proj(x)`` as a module, so peft's ``lora.Linear`` is in the compute path. A test proves
every LoRA A/B matrix receives gradient.

Text tower: LoRA on the visual tower only (``lora_text=False``). The report says "blocks 10-11"
and "about 1M trainable weights with the head"; with an 18-answer vocabulary the visual LoRA
(147,456) plus the head (1,320,978) is 1.47M, and LoRA on text blocks 10-11 as well would add
98,304 more, moving further from the report's figure.

The ``quick`` profile runs the same recipe on the small CLIP ``vqabench pretrain clip`` trains
on Mini-CLEVR (``pretrain:clip/mini-clevr``). Without pretrained weights (``pretrained=False``,
``clip-lora@random``) both towers are random-initialised and trained whole (group "backbone"),
without LoRA.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from vqabench_plugins.clip_pretrain import MINI_CLEVR_CLIP

from vqabench.config import TrainConfig
from vqabench.hookspecs import hookimpl
from vqabench.layers import (
    FusionHead,
    Normalize,
    QuestionEncoder,
    answer_loss,
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
from vqabench.weights import QUICK_FIX, clip_image_size, load_open_clip


def _recipe() -> TrainConfig:
    # Report 000: LoRA lr 2e-4, MLP lr 1e-3, batch 128, 15 epochs. Random erasing (p=0.3) is the
    # "erase" augmentation; it is off by default because it can erase an object on Mini-CLEVR.
    # "backbone" is only used without pretrained weights.
    return TrainConfig(
        epochs=15,
        batch_size=128,
        warmup_epochs=2.0,
        label_smoothing=0.05,
        lrs={"lora": 2e-4, "head": 1e-3, "backbone": 5e-4},
        augment=(),
    )


@dataclass(frozen=True)
class CLIPLoRAConfig:
    """CLIP ViT-B/32 (OpenAI weights) with LoRA on visual blocks 10-11 (report 000 defaults)."""

    arch: str = "ViT-B-32"  # open_clip architecture
    checkpoint: str = "openai"  # open_clip pretrained tag of ``arch``, or a local checkpoint file
    model_cfg: Mapping[str, Any] = field(default_factory=dict)  # overrides of the arch's open_clip config
    pretrained: bool = True  # False: random-initialised towers, trained whole, no LoRA
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_blocks: tuple[int, ...] = (10, 11)
    lora_targets: tuple[str, ...] = ("attn.out_proj", "mlp.c_fc", "mlp.c_proj")
    lora_text: bool = False  # also adapt the same blocks of the text tower
    hidden: int = 512
    dropout: float = 0.1
    train: TrainConfig = field(default_factory=_recipe)


class CLIPLoRA(TaskModel):
    """Classification VQA from CLIP's image and text embeddings through ``FusionHead``."""

    compiled_methods = ("_front", "_back")  # the image path; see TrainConfig.compile

    def __init__(
        self,
        cfg: CLIPLoRAConfig,
        answer_vocab: Sequence[str],
        clip: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        mean: Sequence[float],
        std: Sequence[float],
        weights: str,
    ):
        super().__init__()
        if not getattr(clip.visual.transformer, "batch_first", True):
            raise ValueError("clip-lora needs an open_clip vision tower with batch_first blocks")
        self.answer_vocab = list(answer_vocab)
        self.image_size = clip_image_size(clip)
        self.label_smoothing = cfg.train.label_smoothing
        self.weights = weights
        self.normalize = Normalize(mean, std)
        # Only the two towers are kept: CLIP's logit_scale has no use without a contrastive loss.
        self.visual = clip.visual
        dim = clip.visual.output_dim
        self.question_encoder = QuestionEncoder(clip.text, functools.partial(_embed_text, tokenizer), dim)
        self.head = FusionHead(dim, dim, len(self.answer_vocab), cfg.hidden, cfg.dropout)
        self.encoder_group = "lora" if cfg.pretrained else "backbone"
        # Visual blocks before the first adapted one are frozen: the cacheable front of the image path.
        self.first_adapted = min(cfg.lora_blocks) if cfg.pretrained else 0
        keep_frozen_in_eval(self)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        encoders = trainable(self.visual.parameters()) + trainable(self.question_encoder.parameters())
        return {"head": list(self.head.parameters()), self.encoder_group: encoders}

    def train(self, mode: bool = True) -> CLIPLoRA:
        super().train(mode)
        keep_frozen_in_eval(self)
        return self

    # open_clip's VisionTransformer.forward is _embeds -> blocks -> _pool -> proj; it is split at
    # the first adapted block so that the frozen blocks before it can be cached.
    def _front(self, images: torch.Tensor) -> torch.Tensor:
        x = self.visual._embeds(self.normalize(images))
        for block in self.visual.transformer.resblocks[: self.first_adapted]:
            x = block(x)
        return x

    def _back(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.visual.transformer.resblocks[self.first_adapted :]:
            x = block(x)
        pooled, _ = self.visual._pool(x)
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled

    def image_stem(self) -> Stem | None:
        if self.encoder_group != "lora":
            return None
        blocks = self.visual.transformer.resblocks[: self.first_adapted]
        frozen = [self.normalize, self.visual.conv1, self.visual.ln_pre, blocks]
        key = f"clip-lora/{state_digest(*frozen, self.visual.class_embedding, self.visual.positional_embedding)}"
        return Stem(name=f"ViT blocks 0-{self.first_adapted - 1} tokens", key=key, encode=self._front)

    def text_cache_info(self) -> str | None:
        if trainable(self.question_encoder.parameters()):
            return None
        return "CLIP text embeddings, once per distinct question"

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


def _embed_text(tokenizer: Callable, text: nn.Module, questions: list[str], device: torch.device) -> torch.Tensor:
    return text(to_device(tokenizer(questions), device))


def lora_target_pattern(cfg: CLIPLoRAConfig) -> str:
    """The peft ``target_modules`` regex (matched against full module names) for ``cfg``."""
    towers = ["visual\\.transformer"] + (["text\\.transformer"] if cfg.lora_text else [])
    blocks = "|".join(str(b) for b in cfg.lora_blocks)
    targets = "|".join(re.escape(t) for t in cfg.lora_targets)
    return f"({'|'.join(towers)})\\.resblocks\\.({blocks})\\.({targets})"


def add_lora(clip: nn.Module, cfg: CLIPLoRAConfig) -> list[str]:
    """Inject peft LoRA layers into ``clip`` in place, freezing everything else; returns their names.

    Raises when a configured block does not exist or an adapted module is not called in forward.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    towers = {"visual": clip.visual.transformer, **({"text": clip.text.transformer} if cfg.lora_text else {})}
    for tower, transformer in towers.items():
        layers = len(transformer.resblocks)
        if not all(0 <= b < layers for b in cfg.lora_blocks):
            raise ValueError(
                f"clip-lora: lora_blocks={cfg.lora_blocks}, but the {tower} tower has blocks 0-{layers - 1}"
            )
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_pattern(cfg),
    )
    inject_adapter_in_model(lora, clip)  # marks only the adapters trainable
    adapted = [name for name, module in clip.named_modules() if isinstance(module, LoraLayer)]
    expected = len(cfg.lora_blocks) * len(cfg.lora_targets) * (2 if cfg.lora_text else 1)
    if len(adapted) != expected:
        raise ValueError(
            f"clip-lora: LoRA found {len(adapted)} of {expected} target modules; check lora_targets={cfg.lora_targets}"
        )
    for name in adapted:
        parent = clip.get_submodule(name.rpartition(".")[0])
        if isinstance(parent, nn.MultiheadAttention):
            raise ValueError(f"clip-lora: {name} sits in nn.MultiheadAttention, which bypasses its forward")
    return adapted


def build_clip_lora(cfg: CLIPLoRAConfig, answer_vocab: Sequence[str], *, load_weights: bool = True) -> CLIPLoRA:
    """The model for ``cfg``; raises ``WeightsUnavailable`` before training when weights are missing.

    ``load_weights=False`` builds the configured architecture random-initialised but frozen and
    adapted as if pretrained (tests of the paper architecture without a download).
    """
    if not answer_vocab:
        raise ValueError("CLIP-LoRA needs the dataset's answer vocabulary (TaskData.answer_vocab)")
    # custom_text puts the text tower in one module (clip.text); the OpenAI state dict is converted.
    structure: dict[str, Any] = {"custom_text": True}
    if cfg.pretrained:
        structure["vision_cfg"] = {"block_type": "custom"}
        if cfg.lora_text:
            structure["text_cfg"] = {"block_type": "custom"}
    overrides = _merge_overrides(cfg.model_cfg, structure)
    clip, tokenizer, mean, std, weights = load_open_clip(
        cfg.arch,
        pretrained=cfg.pretrained and load_weights,
        checkpoint=cfg.checkpoint,
        model_cfg=overrides,
        fix=f"{QUICK_FIX}, or `clip-lora@random` (towers trained from scratch), or `--set checkpoint=FILE`",
    )
    if cfg.pretrained:
        add_lora(clip, cfg)
        weights += ", frozen as pretrained (weights not loaded), LoRA" if not load_weights else ", LoRA"
    else:
        clip.requires_grad_(True)
        weights += ", both towers trained whole, no LoRA"
    return CLIPLoRA(cfg, answer_vocab, clip, tokenizer, mean, std, weights)


def _merge_overrides(user: Mapping[str, Any], structure: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in user.items()}
    for key, value in structure.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, Mapping) else value
    return out


def build(config: CLIPLoRAConfig, data: TaskData, device: Any) -> CLIPLoRA:
    """``ModelSpec.build``: the model for ``data``'s answer vocabulary, on ``device``."""
    return build_clip_lora(config, data.answer_vocab or []).to(device)


# The quick profile follows the paper recipe (towers frozen, LoRA on the last two visual blocks)
# on the CLIP that ``vqabench pretrain clip`` trains on Mini-CLEVR (trained on first use, then
# loaded from the cache): a ViT of 4 blocks, so LoRA sits on blocks 2-3. ``clip-lora@random``
# on quick builds the same architecture random-initialised and trains it whole.
QUICK = {
    "checkpoint": "pretrain:clip/mini-clevr",
    "model_cfg": MINI_CLEVR_CLIP,
    "lora_blocks": (2, 3),
    "train.epochs": 8,
    "train.batch_size": 64,
    "train.warmup_epochs": 1.0,
    "train.lrs": {"lora": 1e-3, "head": 2e-3, "backbone": 1e-3},
}
PROFILES = {"quick": QUICK, "paper": {}}


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="clip-lora",
            family="clip-lora",
            display_name="CLIP + LoRA",
            task_kinds=(TaskKind.VQA,),
            config_cls=CLIPLoRAConfig,
            build=build,
            profiles=PROFILES,
            # No checkpoint: random towers need none, and the quick profile's pretrain: reference
            # would otherwise be pretrained first, only to be ignored.
            tags={"random": {"pretrained": False, "checkpoint": ""}},
            description=(
                "CLIP ViT-B/32 (OpenAI), frozen, LoRA r=8 on visual blocks 10-11; fusion head as ResNet-SBERT "
                "(report 000 s3)"
            ),
        )
    )
