"""CLIP zero-shot classification (report 003 Q1): prompt templates against images, nothing trained.

Class embeddings come from open_clip's own ``build_zero_shot_classifier`` (per class: the
normalised mean of the normalised embeddings of its prompts). Every template is also scored
alone, so the leaderboard reproduces report 003's Prompt | Score table with the ensemble and
the spread over templates (``vqabench.tasks.zeroshot``).

Templates (``templates``): "dataset" (the dataset's own: report 003's six on Mini-CLEVR, a
templates file on image-folder), open_clip's "openai" (``OPENAI_IMAGENET_TEMPLATES``) or
"simple" (``SIMPLE_IMAGENET_TEMPLATES``), or explicit ones in ``custom_templates``. A template
holds ``{}`` / ``{0}`` or CLIP_benchmark's ``{c}`` where the class name goes.

Weights: any open_clip architecture and pretrained tag (report 003: ViT-L-14 / openai, the
``paper`` profile; ``@ViT-B-32-openai``-style tags), a local checkpoint file (``--set
checkpoint=FILE``), or the CLIP ``vqabench pretrain clip`` trains on Mini-CLEVR
(``pretrain:clip/mini-clevr``: the ``quick`` profile, trained on first use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqabench.config import EvalConfig
from vqabench.hookspecs import hookimpl
from vqabench.layers import Normalize, state_digest
from vqabench.model import Stem, TaskModel
from vqabench.registry import ModelSpec
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.zeroshot import ImageBatch
from vqabench.weights import QUICK_FIX, clip_image_size, load_open_clip

LOGIT_SCALE = 100.0  # CLIP's trained temperature, as open_clip's zero-shot evaluation uses it
NAMED_TEMPLATES = ("dataset", "openai", "simple")


@dataclass(frozen=True)
class CLIPZeroShotConfig:
    """Report 003's setting: ViT-L-14 with OpenAI weights, the dataset's prompts."""

    arch: str = "ViT-L-14"
    checkpoint: str = "openai"  # a pretrained tag of ``arch``, a local file, or pretrain:NAME/DATASET
    model_cfg: Mapping[str, Any] = field(default_factory=dict)  # overrides of the arch's open_clip config
    templates: str = "dataset"  # "dataset", "openai" or "simple" (open_clip's lists)
    custom_templates: tuple[str, ...] = ()  # used instead of ``templates`` when given
    per_template: bool = True  # also score every template alone (report 003's table)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(batch_size=128, splits=("test",)))

    def __post_init__(self) -> None:
        if self.templates not in NAMED_TEMPLATES:
            raise ValueError(f"clip-zeroshot: templates={self.templates!r}; choose {', '.join(NAMED_TEMPLATES)}")
        for t in self.custom_templates:
            _check_template(t, "custom_templates")


def _check_template(template: str, where: str) -> None:
    if not any(slot in template for slot in ("{}", "{0}", "{c}")):
        raise ValueError(f"clip-zeroshot: {where} template {template!r} has no {{}}, {{0}} or {{c}} for the class name")


def template_texts(cfg: CLIPZeroShotConfig, data: TaskData) -> list[str]:
    """The templates as text (open_clip's lambdas are written back with ``{c}``)."""
    import open_clip

    if cfg.custom_templates:
        return list(cfg.custom_templates)
    if cfg.templates == "dataset":
        if not data.templates:
            raise ValueError(f"clip-zeroshot: dataset {data.dataset!r} gives no templates; use --set templates=openai")
        for t in data.templates:
            _check_template(t, f"dataset {data.dataset!r}")
        return list(data.templates)
    lists = {"openai": open_clip.OPENAI_IMAGENET_TEMPLATES, "simple": open_clip.SIMPLE_IMAGENET_TEMPLATES}
    return [t("{c}") for t in lists[cfg.templates]]


def _filler(template: str) -> Any:
    # str.format fills "{}" and "{0}" positionally and "{c}" by name.
    return lambda c: template.format(c, c=c)


class CLIPZeroShot(TaskModel):
    """Cosine similarity of each image with every class embedding, times CLIP's logit scale."""

    resize = "center_crop"  # what CLIP's preprocessing does to photos

    def __init__(self, clip: nn.Module, mean: Sequence[float], std: Sequence[float], weights: str):
        super().__init__()
        self.image_size = clip_image_size(clip)
        self.weights = weights
        self.normalize = Normalize(mean, std)
        self.visual = clip.visual
        self.requires_grad_(False)
        self.eval()
        self.templates: list[str] = []

    def set_classifiers(self, ensemble: torch.Tensor, per_template: dict[str, torch.Tensor]) -> None:
        """[D, C] class embeddings of the template ensemble, and of each template alone."""
        self.register_buffer("classifier", ensemble, persistent=False)
        self.templates = list(per_template)
        stacked = torch.stack(list(per_template.values())) if per_template else ensemble[None, :, :0]
        self.register_buffer("template_classifiers", stacked, persistent=False)

    def train(self, mode: bool = True) -> CLIPZeroShot:
        return super().train(False)  # nothing trains: dropout and normalisation stay in eval mode

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(self.normalize(images)).float(), dim=-1)

    def image_stem(self) -> Stem:
        key = f"clip-zeroshot/{state_digest(self.normalize, self.visual)}"
        return Stem(name="CLIP image embeddings", key=key, encode=self._encode)

    def forward(self, batch: ImageBatch) -> torch.Tensor:
        features = batch.image_features if batch.image_features is not None else self._encode(batch.images)
        return LOGIT_SCALE * features.float() @ self.classifier

    def predict(self, batch: ImageBatch) -> list[dict[str, Any]]:
        with torch.no_grad():
            features = batch.image_features if batch.image_features is not None else self._encode(batch.images)
            features = features.float()
            logits = (LOGIT_SCALE * features @ self.classifier).cpu()
            per = (LOGIT_SCALE * torch.einsum("bd,tdc->tbc", features, self.template_classifiers)).cpu()
        out = []
        for i in range(len(batch.ids)):
            line: dict[str, Any] = {"logits": logits[i].tolist()}
            if self.templates:
                line["prompt_logits"] = {t: per[k, i].tolist() for k, t in enumerate(self.templates)}
                line["prompts"] = self.templates  # the order: stored JSON sorts the keys above
            out.append(line)
        return out


def build(cfg: CLIPZeroShotConfig, data: TaskData, device: Any) -> CLIPZeroShot:
    """``ModelSpec.build``: load the CLIP and embed the class names with every template."""
    from open_clip import build_zero_shot_classifier

    if not data.class_names:
        raise ValueError(f"clip-zeroshot: dataset {data.dataset!r} gives no class names")
    clip, tokenizer, mean, std, weights = load_open_clip(
        cfg.arch,
        pretrained=True,
        checkpoint=cfg.checkpoint,
        model_cfg=cfg.model_cfg,
        fix=f"{QUICK_FIX}: the CLIP pretrained on Mini-CLEVR, or `--set checkpoint=FILE`",
    )
    clip = clip.to(device).eval()
    templates = template_texts(cfg, data)

    def classifier(chosen: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            return build_zero_shot_classifier(
                clip,
                tokenizer=tokenizer,
                classnames=data.class_names,
                templates=[_filler(t) for t in chosen],
                device=device,
            ).float()

    model = CLIPZeroShot(clip, mean, std, f"{weights}, not trained")
    per_template = {t: classifier([t]) for t in templates} if cfg.per_template and len(templates) > 1 else {}
    model.set_classifiers(classifier(templates), per_template)
    return model.to(device)


# The quick profile evaluates the CLIP that ``vqabench pretrain clip`` trains on Mini-CLEVR
# (trained on first use; its own architecture comes with the checkpoint).
QUICK = {"arch": "ViT-B-32", "checkpoint": "pretrain:clip/mini-clevr"}
TAGS = {
    "ViT-B-32-openai": {"arch": "ViT-B-32", "checkpoint": "openai"},
    "ViT-B-16-openai": {"arch": "ViT-B-16", "checkpoint": "openai"},
    "ViT-L-14-openai": {"arch": "ViT-L-14", "checkpoint": "openai"},
    "ViT-B-32-laion2b": {"arch": "ViT-B-32", "checkpoint": "laion2b_s34b_b79k"},
}


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="clip-zeroshot",
            family="clip-zeroshot",
            display_name="CLIP zero-shot",
            task_kinds=(TaskKind.ZEROSHOT,),
            config_cls=CLIPZeroShotConfig,
            build=build,
            profiles={"quick": QUICK, "paper": {}},
            tags=TAGS,
            description="open_clip zero-shot classifier from prompt templates, per template and ensembled "
            "(report 003 Q1: ViT-L-14 / openai)",
        )
    )
