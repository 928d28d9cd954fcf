"""What a model implements to take part in a task, and what the training engine calls."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TaskModel(nn.Module):
    """Base class of every model built for one task kind.

    The engine only calls ``param_groups``, ``loss`` (when ``trains``) and ``predict``. Batches
    come from ``vqabench.tasks`` (``QABatch``, ``ImageBatch``, ``CaptionBatch``) with images as
    float tensors in [0, 1] at ``image_size``; the model applies its own normalisation.
    """

    image_size: int = 224
    trains: bool = True  # False for zero-shot models: evaluated without training
    weights: str = "random init"  # which weights were loaded, shown on the leaderboard

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group name; the recipe's ``lrs`` gives each group's rate."""
        return {"head": [p for p in self.parameters() if p.requires_grad]}

    def loss(self, batch: Any) -> torch.Tensor:
        """The training loss of one batch (a scalar)."""
        raise NotImplementedError(f"{type(self).__name__} does not train")

    def predict(self, batch: Any) -> list[dict[str, Any]]:
        """One prediction dict per sample (fields per task kind, see ``vqabench.tasks``)."""
        raise NotImplementedError

    def describe_cached(self) -> list[str]:
        """Names of the parts whose outputs come from the feature cache (none by default)."""
        return []


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
