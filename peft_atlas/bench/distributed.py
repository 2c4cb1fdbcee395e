"""Processes, devices and seeds: what makes a run the same in one process or under torchrun.

Under torchrun the processes join one process group (nccl on CUDA, gloo on CPU); outside it
every function here behaves as for a single process of rank 0.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "all_reduce",
    "deterministic",
    "init_distributed",
    "max_rss_bytes",
    "rank_and_world",
    "seed_everything",
    "select_device",
]


def rank_and_world() -> tuple[int, int]:
    """Return `(rank, world_size)`: `(0, 1)` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def select_device(name: str) -> torch.device:
    """Return the device for `train.device`; under torchrun on CUDA, the GPU `LOCAL_RANK`.

    Args:
        name: `auto`, `cpu` or `cuda`.

    Raises:
        RuntimeError: If `cuda` is asked for and none is available.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    index = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_distributed(device: torch.device) -> bool:
    """Join the process group when started by torchrun with more than one process.

    Uses nccl on CUDA and gloo on CPU; reads the rendezvous from torchrun's environment.

    Args:
        device: The device this process trains on.

    Returns:
        True if a process group was started here (the caller destroys it at the end).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def all_reduce(values: list[float | int], device: torch.device, op: str = "sum") -> list[float]:
    """Sum (or, with `op="max"`, take the maximum of) numbers over processes, in float64.

    In one process the numbers come back unchanged (as floats).
    """
    if rank_and_world()[1] == 1:
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.tolist()


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Ask torch for deterministic kernels (warning where none exists), restoring the old mode."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    was_enabled = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_enabled, warn_only=was_warn_only)
        torch.backends.cudnn.benchmark = benchmark


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and `random`."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def max_rss_bytes() -> int | None:
    """Peak resident set size of this process in bytes, or None where unknown."""
    try:
        import resource
    except ImportError:  # Windows has no resource module
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
