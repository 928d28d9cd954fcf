"""Device helpers in one place: choosing the device, autocast, its name and peak memory."""

from __future__ import annotations

import platform
import resource
from contextlib import nullcontext

import torch


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU architecture and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA unless fp32 is asked for; nothing on CPU unless bf16 is asked for."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def reset_peak_memory(device: torch.device) -> None:
    """Start counting peak memory from here (CUDA allocator; process RSS cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, object]:
    """Peak bytes and what was measured: the CUDA allocator's peak, or the process's peak RSS."""
    if device.type == "cuda":
        return {"peak_bytes": torch.cuda.max_memory_allocated(device), "measured": "cuda max_memory_allocated"}
    return {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "measured": "process peak RSS"}
