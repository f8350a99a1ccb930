"""Arrays at the boundary: ``Parameter`` (a trainable array the kernels update in place) and the
explicit conversion of inputs (``as_input``).

The bottom of the package: it imports nothing of fuseprop but ``cuda`` (to hold parameters on the GPU),
so layers, losses, optimizers, the plans and the training loop all build on it without a cycle.

It also keeps the model generation: a count of the assignments that can change what a model computes
with (a Parameter's arrays here, a module's layers and settings in ``nn.Module.__setattr__``). A
native training plan records it when built and looks at the model again only when it has moved.
"""
from __future__ import annotations

import numpy as np

from . import cuda

__all__ = ["Parameter", "as_input", "float_input", "float_dtype", "FLOAT_DTYPES", "generation", "touch"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_generation = 0


def generation() -> int:
    """The model generation now: equal to an earlier reading only if nothing that can change what a
    model computes with was assigned in between."""
    return _generation


def touch() -> None:
    """Move the model generation on (an assignment that can change what a model computes with)."""
    global _generation
    _generation += 1


def float_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def as_input(x, dtype, name="x", ndim=None, features=None) -> np.ndarray:
    """x as a C-contiguous array of ``dtype``: explicit conversion into a new array when needed.

    Only real numbers convert (bool, integers, floats); anything else raises TypeError.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if features is not None and arr.shape[-1] != features:
        raise ValueError(f"{name} must have {features} features in its last dimension, got shape {arr.shape}")
    return np.require(arr, dtype, ["C_CONTIGUOUS", "ALIGNED"])  # a new array only when needed


def float_input(x, name, ndim=None) -> np.ndarray:
    """For modules without parameters: float32 and float64 inputs keep their dtype, others become float32."""
    dt = np.asarray(x).dtype
    return as_input(x, dt if dt in FLOAT_DTYPES else np.float32, name, ndim=ndim)


class Parameter:
    """A trainable array: ``.data`` and ``.grad`` are C-contiguous float arrays of one shape; ``.name``."""

    __slots__ = ("_data", "_grad", "name")

    def __init__(self, data, name: str = "", dtype=None):
        arr = np.asarray(data)
        dt = float_dtype(arr.dtype if dtype is None and arr.dtype in FLOAT_DTYPES else (dtype or np.float32))
        self._data = np.array(arr, dtype=dt, order="C", copy=True)
        self._grad = np.zeros_like(self._data)
        self.name = name

    def _check(self, value, what: str) -> np.ndarray:
        # The kernels update these arrays in place: a converted copy would make updates vanish.
        if cuda.is_device_array(self._data):
            if not cuda.is_device_array(value):
                raise TypeError(f"{self.name or 'parameter'}.{what} is on the GPU: it must be a fuseprop DeviceArray, "
                                f"got {type(value).__name__}")
            if value.dtype != self._data.dtype or value.shape != self._data.shape:
                raise ValueError(f"{self.name or 'parameter'}.{what} must be a {self._data.dtype} DeviceArray of shape "
                                 f"{self._data.shape}, got {value.dtype} {value.shape}")
            if value.readonly:
                raise ValueError(f"{self.name or 'parameter'}.{what} must be writeable, got a read-only array")
            return value
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{self.name or 'parameter'}.{what} must be a numpy.ndarray, got {type(value).__name__}")
        if value.dtype != self._data.dtype:
            raise TypeError(f"{self.name or 'parameter'}.{what} must have dtype {self._data.dtype}, got {value.dtype}")
        if value.shape != self._data.shape:
            raise ValueError(f"{self.name or 'parameter'}.{what} must have shape {self._data.shape}, got {value.shape}")
        for flag, problem in (("C_CONTIGUOUS", "a strided or transposed view"), ("ALIGNED", "an unaligned buffer"),
                              ("WRITEABLE", "a read-only array")):
            if not value.flags[flag]:
                raise ValueError(f"{self.name or 'parameter'}.{what} must be a C-contiguous, aligned, writeable "
                                 f"array, got {problem}")
        return value

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value):
        self._data = self._check(value, "data")
        touch()

    @property
    def grad(self) -> np.ndarray:
        return self._grad

    @grad.setter
    def grad(self, value):
        self._grad = self._check(value, "grad")
        touch()

    @property
    def shape(self):
        return self._data.shape

    @property
    def device(self) -> str:
        """"cpu" (NumPy arrays) or "cuda" (DeviceArrays), as Module.to put it."""
        return "cuda" if cuda.is_device_array(self._data) else "cpu"

    def _move(self, device: str):
        """data and grad to device ("cpu" or "cuda"), as new arrays there."""
        if device == self.device:
            return
        if device == "cuda":
            self._data, self._grad = cuda.asarray(self._data), cuda.asarray(self._grad)
        else:
            self._data, self._grad = self._data.numpy(), self._grad.numpy()
        touch()

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def size(self) -> int:
        return self._data.size

    def __repr__(self):
        return f"Parameter(name={self.name!r}, shape={self.shape}, dtype={self.dtype})"
