"""What a model implements to take part in a task, and what the training engine calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Stem:
    """The frozen, deterministic front of a model's image path, whose output can be cached.

    ``encode`` maps float images [U, 3, H, W] in [0, 1] to features [U, ...]; the model's
    ``loss`` and ``predict`` use ``batch.image_features`` instead of running it when present.
    ``key`` identifies the weights and preprocessing (it keys the on-disk cache).
    """

    name: str  # what is cached, e.g. "resnet18 pooled features" or "ViT blocks 0-9"
    key: str
    encode: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TextStem:
    """A frozen text encoder whose outputs can be cached once per distinct string.

    ``encode`` maps a list of strings to ``(features, mask)``: features ``[N, ...]`` (pooled
    ``[N, D]`` or token sequences ``[N, L, D]``) and, for sequences, a bool mask ``[N, L]`` (True
    for real tokens), else None. Batches then carry ``text_features`` / ``text_mask`` per sample.
    """

    name: str  # e.g. "MiniLM token states"
    key: str  # identifies the weights and tokenizer
    encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor | None]]


class TaskModel(nn.Module):
    """Base class of every model built for one task kind.

    The engine only calls ``param_groups``, ``loss`` (when ``trains``) and ``predict``. Batches
    come from ``vqabench.tasks`` (``QABatch``, ``ImageBatch``, ``CaptionBatch``) with images as
    float tensors in [0, 1] at ``image_size``; the model applies its own normalisation.
    """

    image_size: int = 224
    # How images are fitted to ``image_size``: "squash" (resize both sides) or "center_crop"
    # (shorter side to ``image_size``, then a centre crop: what CLIP and DINOv2 do on photos).
    resize: str = "squash"
    # Training progress in [0, 1] over the whole recipe, set by the engine before every step (for
    # schedules such as the gradient-reversal weight 2 / (1 + exp(-10 p)) - 1).
    progress: float = 0.0
    # Named scalar parts of the training loss (e.g. a domain discriminator's loss), which ``loss``
    # may set on every training step; the engine records their epoch means in the history entry's
    # "train_loss_parts".
    loss_parts: dict[str, torch.Tensor] | None = None
    weights: str = "random init"  # which weights were loaded, shown on the leaderboard
    # Methods run on tensors alone, with shapes that vary only in the batch dimension: what
    # ``train.compile`` hands to torch.compile (never ``loss``: batches carry strings).
    compiled_methods: tuple[str, ...] = ()
    # False when the parameters and the loss are the same whatever the task kind the model was
    # built for (one model serving vqa and answerability): a cell of another kind with the same
    # training key then loads the weights another cell trained instead of training again.
    training_depends_on_kind: bool = True

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group name; the recipe's ``lrs`` gives each group's rate."""
        return {"head": [p for p in self.parameters() if p.requires_grad]}

    def loss(self, batch: Any) -> torch.Tensor:
        """The training loss of one batch (a scalar)."""
        raise NotImplementedError(f"{type(self).__name__} does not train")

    def predict(self, batch: Any) -> list[dict[str, Any]]:
        """One prediction dict per sample (fields per task kind, see ``vqabench.tasks``)."""
        raise NotImplementedError

    def begin_stage(self, stage: Any) -> None:
        """Called before each training stage (a ``vqabench.config.Stage``), also when a run resumes.

        A model may change itself here (add adapters, freeze a part); the engine then builds the
        optimizer from ``param_groups`` and re-asks for the cacheable stems.
        """

    # What ``predict`` does when no variant is chosen (e.g. "greedy-50"), the first row of the
    # record's "variants"; "" when the model has no variants.
    default_variant: str = ""

    def eval_variants(self) -> tuple[str, ...]:
        """Other ways this model predicts (decoding settings), each evaluated on the test split
        besides the default and recorded under "variants" with its own speed (default: none)."""
        return ()

    def use_variant(self, name: str | None) -> None:
        """Predict with variant ``name`` of ``eval_variants`` from now on (None: the default)."""
        if name is not None:
            raise ValueError(f"{type(self).__name__} has no prediction variant {name!r}")

    def figures(
        self, samples: list[Any], lines: list[dict[str, Any]], batch_of: Callable[[list[Any]], Any], out: Path
    ) -> list[dict[str, str]]:
        """Figures of the test predictions (attention maps), as PNGs written under ``out``.

        ``lines`` are the stored test predictions of ``samples``; ``batch_of(samples)`` gives a batch
        of any of them on the model's device. Returns [{"title", "file"}], ``file`` relative to
        ``out`` (default: none).
        """
        return []

    def image_stem(self) -> Stem | None:
        """The cacheable frozen front of the image path, or None when every part trains."""
        return None

    def text_stem(self) -> TextStem | None:
        """The frozen text encoder whose outputs the feature cache may hold, or None."""
        return None

    def text_cache_info(self) -> str | None:
        """What text encoder's outputs are memoised per distinct string, or None."""
        return None


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def compile_methods(model: TaskModel) -> list[str]:
    """Replace each of ``model.compiled_methods`` by its torch.compile'd version; their names.

    Compiled per method rather than per module, so parameter names and checkpoints are those
    of the eager model.
    """
    for name in model.compiled_methods:
        setattr(model, name, torch.compile(getattr(model, name)))
    return list(model.compiled_methods)
