"""The model part's fixed setup (clip, latents, seed, capacities) and its memory and timing measures."""

from __future__ import annotations

import contextlib
import gc
import re
from pathlib import Path

import torch

GIB = 1024**3
SAMPLE_RATE = 16_000
SECONDS = 10.24
LATENT_SHAPE = (8, 256, 16)  # 10.24 s = 1,024 mel frames, VAE downsamples 4x; 64 mels -> 16
K_TOKENS = 4  # aligner output: K x d_lm GPT-2 input embeddings
GUIDANCE = 3.5
EFFECTIVE_BATCH = 16
CAPACITIES_GIB = (24, 40, 80)
CUDA_RESERVE_GIB = 1.5  # CUDA context + allocator slack, left out of a derived budget
SEED = 0


# ---- memory and timing ---------------------------------------------------------------------------
def proc_status_kib(field: str) -> int | None:
    """A VmHWM/VmRSS-style field of /proc/self/status in KiB (None off Linux)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def reset_peak(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or the process's VmHWM (via /proc/self/clear_refs)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_bytes(device: torch.device) -> dict[str, int | None]:
    """The peak since `reset_peak` and what is held now (CUDA: allocated; CPU: resident set)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return {"peak_bytes": int(torch.cuda.max_memory_allocated(device)),
                "now_bytes": int(torch.cuda.memory_allocated(device))}
    hwm, rss = proc_status_kib("VmHWM"), proc_status_kib("VmRSS")
    return {"peak_bytes": hwm * 1024 if hwm is not None else None, "now_bytes": rss * 1024 if rss is not None else None}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gib(value: float | int | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def weight_bytes(*modules: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for module in modules for p in module.parameters())
