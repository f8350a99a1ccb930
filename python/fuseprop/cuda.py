"""The CUDA backend's state: whether it was compiled in, and whether a GPU can be used now.

Importing fuseprop never touches the driver; these functions ask it (once per call) and never raise
because a GPU, a driver or the backend is missing: they report it.
"""
from __future__ import annotations

from . import _C


def is_compiled() -> bool:
    """Whether this build contains the CUDA backend (nvcc was found at build time)."""
    return bool(_C.cuda_compiled)


def _query() -> dict:
    if not is_compiled():
        return {"count": 0, "status": "this build has no CUDA backend (built without nvcc or with FUSEPROP_CUDA=OFF)",
                "runtime_version": 0, "driver_version": 0}
    return _C.cuda_query()


def device_count() -> int:
    """Usable CUDA devices; 0 without a driver or a GPU."""
    return _query()["count"]


def is_available() -> bool:
    """Whether a CUDA device can be used now."""
    return device_count() > 0


def status() -> str:
    """"ok", or why no CUDA device can be used (e.g. the runtime's "no CUDA-capable device is detected")."""
    q = _query()
    return "ok" if q["count"] > 0 else f"no CUDA device: {q['status']}"


def get_device_properties(device: int = 0) -> dict:
    """name, capability (major, minor), total_memory (bytes), multiprocessors of one device."""
    if not is_available():
        raise RuntimeError(status())
    return _C.cuda_device_properties(device)
