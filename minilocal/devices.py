"""One device helper: CUDA when present (and says so), otherwise CPU."""
from __future__ import annotations

import torch


def device(prefer: str = "cuda", verbose: bool = True) -> torch.device:
    """torch.device('cuda') if available and preferred, else 'cpu'; prints which one it picked."""
    if prefer not in ("cuda", "cpu"):
        raise ValueError(f"device: prefer must be 'cuda' or 'cpu', got {prefer!r}")
    if prefer == "cuda" and torch.cuda.is_available():
        d = torch.device("cuda")
        if verbose:
            print(f"using CUDA: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} GPU(s))")
    else:
        d = torch.device("cpu")
        if verbose:
            print("using CPU" + ("" if prefer == "cpu" else " (no CUDA device found)"))
    return d


def devices_for_stages(n_stages: int) -> list[torch.device]:
    """One device per stage: round-robin over the GPUs when there are any, else all CPU."""
    if torch.cuda.is_available():
        return [torch.device(f"cuda:{s % torch.cuda.device_count()}") for s in range(n_stages)]
    return [torch.device("cpu")] * n_stages
