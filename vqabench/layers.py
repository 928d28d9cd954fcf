"""Building blocks shared by the classification-VQA families (report 000, sections 2 and 3).

Both baselines encode the image and the question separately, fuse the two feature vectors with
``FusionHead`` and classify over the answer vocabulary; they differ only in their encoders.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqabench.transfer import index_tensor


class FusionHead(nn.Module):
    """Early fusion and a 2-layer MLP classifier over the answer vocabulary.

    ``g_txt = Linear(f_txt)`` projects the question into the image feature space, then
    ``z = [f_img, f_txt, f_img * g_txt, |f_img - g_txt|]`` (``3 * image_dim + text_dim`` wide) goes
    through ``Linear -> ReLU -> Dropout -> Linear``. The product is a soft AND of the two modalities,
    the absolute difference a mismatch signal.
    """

    def __init__(self, image_dim: int, text_dim: int, num_answers: int, hidden: int = 512, dropout: float = 0.1):
        super().__init__()
        self.project_text = nn.Linear(text_dim, image_dim)
        self.mlp = nn.Sequential(
            nn.Linear(3 * image_dim + text_dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_answers),
        )

    def forward(self, f_img: torch.Tensor, f_txt: torch.Tensor) -> torch.Tensor:
        g_txt = self.project_text(f_txt)
        z = torch.cat([f_img, f_txt, f_img * g_txt, (f_img - g_txt).abs()], dim=-1)
        return self.mlp(z)


def fusion_head_parameters(image_dim: int, text_dim: int, num_answers: int, hidden: int = 512) -> int:
    """The number of weights of a ``FusionHead``, for documentation and tests."""
    projection = text_dim * image_dim + image_dim
    first = (3 * image_dim + text_dim) * hidden + hidden
    classifier = hidden * num_answers + num_answers
    return projection + first + classifier


class QuestionEncoder(nn.Module):
    """Encodes every distinct question of a batch once and maps the embeddings back to the batch.

    ``embed(encoder, texts, device)`` returns one row per text. Questions repeat heavily (a few
    templates over a few words), so while ``encoder`` has no trainable parameter its outputs are
    also memoised across batches, up to ``memo_size`` strings; a trainable encoder is always run.
    """

    def __init__(
        self,
        encoder: nn.Module,
        embed: Callable[[nn.Module, list[str], torch.device], torch.Tensor],
        dim: int,
        memo_size: int = 65536,
    ):
        super().__init__()
        self.encoder = encoder
        self.embed = embed
        self.dim = dim
        self.memo_size = memo_size
        self._memo: dict[str, torch.Tensor] = {}

    def forward(self, questions: Sequence[str]) -> torch.Tensor:
        distinct = list(dict.fromkeys(questions))
        row = {q: i for i, q in enumerate(distinct)}
        device = _device_of(self)
        index = index_tensor([row[q] for q in questions], device)
        if any(p.requires_grad for p in self.encoder.parameters()):
            self._memo.clear()
            return self.embed(self.encoder, distinct, device)[index]
        found = {q: self._memo[q] for q in distinct if q in self._memo}
        missing = [q for q in distinct if q not in found]
        if missing:
            with torch.no_grad():
                new = dict(zip(missing, self.embed(self.encoder, missing, device).float()))
            found.update(new)
            if len(self._memo) + len(new) > self.memo_size:
                self._memo.clear()
            self._memo.update(new)
        table = torch.stack([found[q].to(device) for q in distinct])
        return table[index]

    def _apply(self, fn: Any, recurse: bool = True) -> QuestionEncoder:
        # Moving or casting the module invalidates memoised rows held on the old device or dtype.
        self._memo.clear()
        return super()._apply(fn, recurse)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on images in [0, 1], with the backbone's own statistics."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy with label smoothing; label -1 (answer out of the vocabulary) is ignored.

    A batch whose labels are all -1 gives a zero loss that still backpropagates (no NaN). The
    mean over valid labels is taken by masking, not by asking whether any is valid: that
    question would make the host wait for the GPU every step.
    """
    valid = labels >= 0
    per_sample = F.cross_entropy(logits.float(), labels.clamp(min=0), reduction="none", label_smoothing=label_smoothing)
    return (per_sample * valid).sum() / valid.sum().clamp(min=1)


def predict_answers(logits: torch.Tensor, vocab: Sequence[str]) -> list[dict[str, Any]]:
    """``[{"answer": vocab[argmax], "confidence": max softmax}]``, one per row of ``logits``."""
    confidence, index = logits.detach().float().softmax(dim=-1).max(dim=-1)
    return [{"answer": vocab[i], "confidence": c} for i, c in zip(index.tolist(), confidence.tolist())]


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients to every parameter of ``module``; returns it."""
    module.requires_grad_(False)
    return module


def keep_frozen_in_eval(module: nn.Module) -> None:
    """Put every sub-tree whose parameters are all frozen in eval mode.

    A frozen pretrained encoder must keep its BatchNorm running statistics and run without
    dropout while the rest of the model trains. Parameter-free modules (the head's Dropout) are
    left as they are.
    """
    for child in module.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()
        else:
            keep_frozen_in_eval(child)


def trainable(params: Sequence[nn.Parameter] | Any) -> list[nn.Parameter]:
    """The parameters among ``params`` that require gradients."""
    return [p for p in params if p.requires_grad]


def state_digest(*parts: nn.Module | torch.Tensor) -> str:
    """A short hash of the parameters and buffers of ``parts``: what a frozen stem computes with."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, nn.Module):  # buffers include non-persistent ones (Normalize's statistics)
            tensors = [*part.named_parameters(), *part.named_buffers()]
        else:
            tensors = [("", part)]
        for name, tensor in tensors:
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


class GradReverse(torch.autograd.Function):
    """Identity forward; the gradient times -weight backward (Ganin and Lempitsky's reversal layer).

    A domain classifier behind it learns to tell domains apart while the features before it learn
    to make them indistinguishable (domain-adversarial training).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


def reversal_weight(progress: float) -> float:
    """lambda(p) = 2 / (1 + exp(-10 p)) - 1 over the training progress p: 0 at the start, near 1 at the end."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0
