"""fuseprop: fast backpropagation for dense networks on NumPy arrays.

Native C++ kernels (fused linear layers, losses, optimizer updates) under a PyTorch-shaped API,
tested against a pure-NumPy reference (fuseprop.reference).
"""
from __future__ import annotations

import platform

import numpy as np

from . import _C
from . import augment, checkpoint, cuda, datasets, diagnostics, distributed, functional, init, losses, nn, optim, reference, testing
from . import training
from ._random import manual_seed, default_generator

__version__ = _C.__version__

__all__ = ["__version__", "build_info", "manual_seed", "default_generator", "get_num_threads", "set_num_threads",
           "cpu_level", "set_cpu_level", "augment", "checkpoint", "cuda", "datasets", "diagnostics", "distributed", "functional", "init", "losses", "nn", "optim", "reference", "testing", "training"]


def get_num_threads() -> int:
    """Threads the kernels use (from OMP_NUM_THREADS, else the CPUs this process may run on)."""
    return _C.get_num_threads()


def set_num_threads(n: int) -> None:
    """Use n >= 1 threads. Results are identical whatever n: no sum is ever split across threads."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"num_threads must be an integer, got {type(n).__name__}")
    _C.set_num_threads(int(n))


def cpu_level() -> str:
    """The instruction set the float kernels use: "generic", "avx2" or "avx512"."""
    return _C.cpu_level()


def set_cpu_level(level: str) -> None:
    """Use the kernels of another instruction set this CPU supports (FUSEPROP_CPU sets it at import)."""
    _C.set_cpu_level(level)


def build_info() -> dict:
    """How this build was made and what it can use on this machine."""
    return {
        "version": __version__,
        "compiler": _C.compiler,
        "arch": _C.arch,
        "machine": platform.machine(),
        "kernel_level": _C.cpu_level(),
        "kernel_levels_available": list(_C.cpu_levels_available()),
        "num_threads": _C.get_num_threads(),
        "cpu_caches": _C.cpu_caches(),
        "gemm_blocking": _C.gemm_blocking(),
        "cuda_compiled": cuda.is_compiled(),
        "cuda_available": cuda.is_available(),
        "cuda_status": cuda.status(),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
