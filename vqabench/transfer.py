"""Host-to-device copies that never make the host wait for the GPU.

A plain ``tensor.to("cuda")`` from pageable memory synchronises the stream: the host stops
until every queued kernel has run, so the next step cannot be queued behind the current one.
Copies staged in pinned (page-locked) memory with ``non_blocking=True`` do not; PyTorch's
caching host allocator keeps a pinned block alive until its copy has finished.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``; a host tensor bound for a GPU goes through pinned memory."""
    device = torch.device(device)
    if tensor.device == device or (device.type == "cuda" and tensor.device.type == "cuda" and device.index is None):
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)


def index_tensor(values: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """A long tensor of ``values`` on ``device``, copied without a sync."""
    return to_device(torch.tensor(values, dtype=torch.long), device)


def rows_to(source: torch.Tensor, rows: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """``source[rows]`` on ``device``.

    A host ``source`` (a memory-mapped store) is gathered straight into a pinned buffer, so the
    rows are copied once on the host and cross the bus without blocking.
    """
    device = torch.device(device)
    if source.device.type == "cpu" and device.type == "cuda":
        out = torch.empty((len(rows), *source.shape[1:]), dtype=source.dtype, pin_memory=True)
        torch.index_select(source, 0, torch.tensor(rows, dtype=torch.long), out=out)
        return out.to(device, non_blocking=True)
    return to_device(source[index_tensor(rows, source.device)], device)
