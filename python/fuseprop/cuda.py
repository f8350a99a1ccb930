"""The CUDA backend's state: whether it was compiled in, and whether a GPU can be used now.

Importing fuseprop never touches the driver; these functions ask it (once per call) and never raise
because a GPU, a driver or the backend is missing: they report it.
"""
from __future__ import annotations

import numpy as np

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


# ---------------------------------------------------------------- settings
#: Matrix products of a model on the GPU run on tensor cores in TF32 (10-bit mantissa inputs, float32
#: accumulation), as ``torch.backends.cuda.matmul.allow_tf32 = True``; False runs them in plain FP32.
#: Read when a training plan is built (a change applies from the next train_step).
allow_tf32 = True
#: Cross-entropy steps of a narrow network (1 to 8 layers, each at most 128 wide, logits last) run as ONE
#: fused kernel (forward, loss, backward and every weight gradient; cuda/plan/fused_mlp.h); False runs them layer
#: by layer. Read when a training plan is built.
fused_mlp = True

# ---------------------------------------------------------------- device arrays
#: fuseprop's array in GPU memory (float32 or int64, C-contiguous); None in a build without CUDA.
DeviceArray = getattr(_C, "DeviceArray", None)

_DLPACK_CUDA = 2


def is_device_array(x) -> bool:
    return DeviceArray is not None and isinstance(x, DeviceArray)


def _require_device():
    if not is_available():
        raise RuntimeError(status())


def asarray(x, dtype=None):
    """x as a DeviceArray on the GPU.

    A DeviceArray is returned as it is, and a CUDA array of another library (anything with
    ``__dlpack__``: torch, cupy, jax) is viewed without a copy; both must already have the dtype asked
    for. Anything else (NumPy arrays, lists, CPU tensors) is converted on the host, explicitly, to
    ``dtype`` (default: float32 for floats, int64 for integers) and copied over through pinned memory.
    """
    want = None if dtype is None else np.dtype(dtype)
    if want is not None and want not in (np.dtype(np.float32), np.dtype(np.int64)):
        raise TypeError(f"dtype must be float32 or int64 (the CUDA backend's types), got {want}")
    if not is_device_array(x) and hasattr(x, "__dlpack_device__") and x.__dlpack_device__()[0] == _DLPACK_CUDA:
        x = from_dlpack(x)
    if is_device_array(x):
        if want is not None and x.dtype != want:
            raise TypeError(f"x has dtype {x.dtype}, expected {want}: convert it before it goes to the GPU")
        return x
    _require_device()
    arr = np.asarray(x)
    if want is None:
        if arr.dtype.kind == "f" or arr.dtype.kind == "b":
            want = np.dtype(np.float32)
        elif arr.dtype.kind in "iu":
            want = np.dtype(np.int64)
        else:
            raise TypeError(f"x must hold real numbers, got dtype {arr.dtype}")
    return _C.cuda_to_device(np.ascontiguousarray(arr, dtype=want))


def from_dlpack(x):
    """A DeviceArray viewing the memory of a CUDA DLPack array (torch, cupy, jax), without a copy.
    float32 or int64, C-contiguous; the other library's memory stays alive while the view does."""
    if not is_compiled():
        raise RuntimeError(status())
    return _C.cuda_from_dlpack(x)


def synchronize() -> None:
    """Wait until everything queued on the GPU has run (timing; most calls need no explicit wait)."""
    _require_device()
    _C.cuda_synchronize()


def to_host(x):
    """x as a NumPy array: a DeviceArray copied back, anything else as np.asarray gives it."""
    return x.numpy() if is_device_array(x) else np.asarray(x)


def parse_device(device) -> str:
    """"cpu" or "cuda" from "cpu", "cuda", "cuda:0" (fuseprop runs on one GPU: device 0)."""
    name = str(device)
    if name == "cpu":
        return "cpu"
    if name in ("cuda", "cuda:0"):
        return "cuda"
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:0', got {device!r}")
