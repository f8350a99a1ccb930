"""DeviceArray and DLPack: export to NumPy/PyTorch and import from them, without copies.

The capsule code is the same whatever the device, so it is tested here on host-memory DeviceArrays
(``_C._host_array``, ``_C._dlpack_import_any``), which run without a GPU. The same round trips on CUDA
memory, with torch's CUDA tensors, are in tests/test_cuda_training.py and need a GPU.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from fuseprop import _C, cuda

pytestmark = pytest.mark.skipif(not cuda.is_compiled(), reason="built without the CUDA backend")


def host(a):
    return _C._host_array(np.require(a, requirements="C"))


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
@pytest.mark.parametrize("shape", [(0,), (3,), (2, 5), (4, 1, 3), ()])
def test_numpy_reads_an_exported_array_without_a_copy(dtype, shape):
    src = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    a = host(src)
    assert a.shape == shape and a.dtype == dtype and a.device == "cpu" and a.__dlpack_device__() == (1, 0)
    view = np.from_dlpack(a)
    np.testing.assert_array_equal(view, src)
    if src.size:
        assert view.ctypes.data == a.data_ptr  # the same memory
    del a  # the view keeps the storage alive
    np.testing.assert_array_equal(view, src)


@pytest.mark.parametrize("max_version", [None, (1, 0), (0, 8)])
def test_capsule_names_follow_the_requested_version(max_version):
    a = host(np.ones((2, 2), np.float32))
    cap = a.__dlpack__(max_version=max_version)
    name = "dltensor_versioned" if max_version and max_version[0] >= 1 else "dltensor"
    assert f'"{name}"' in repr(cap)
    del cap  # an unused capsule frees its tensor (the deleter runs; nothing leaks or crashes)


def test_torch_shares_memory_with_an_exported_array():
    torch = pytest.importorskip("torch")
    a = host(np.zeros(4, np.float32))
    t = torch.from_dlpack(a)
    t += 3
    np.testing.assert_array_equal(a.numpy(), [3, 3, 3, 3])


def test_import_views_the_producers_memory_and_releases_it():
    src = np.arange(6, dtype=np.float32).reshape(2, 3)
    before = sys.getrefcount(src)
    a = _C._dlpack_import_any(src)
    assert sys.getrefcount(src) > before  # the producer's capsule holds it
    src[0, 0] = 42
    assert a.numpy()[0, 0] == 42  # no copy was made
    assert a.data_ptr == src.ctypes.data
    del a
    assert sys.getrefcount(src) == before  # the producer's deleter ran


def test_import_from_torch_and_row_slices():
    torch = pytest.importorskip("torch")
    t = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    a = _C._dlpack_import_any(t)
    np.testing.assert_array_equal(a.numpy(), t.numpy())
    np.testing.assert_array_equal(a[1:3].numpy(), t[1:3].numpy())
    assert a[1:3].data_ptr == a.data_ptr + 3 * 4
    np.testing.assert_array_equal(a[5:].numpy(), np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="step 1"):
        a[::2]


def test_import_refuses_what_the_kernels_cannot_read():
    with pytest.raises(ValueError, match="C-contiguous"):
        _C._dlpack_import_any(np.zeros((4, 6), np.float32)[:, ::2])
    with pytest.raises(TypeError, match="float32 or int64"):
        _C._dlpack_import_any(np.zeros(3, np.float64))
    with pytest.raises(TypeError, match="DLPack array"):
        _C._dlpack_import_any([1.0, 2.0])
    with pytest.raises(ValueError, match="expected a CUDA array"):
        _C.cuda_from_dlpack(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="expected a CUDA array"):
        cuda.from_dlpack(np.zeros(3, np.float32))


def test_export_options():
    a = host(np.arange(3, dtype=np.float32))
    with pytest.raises(BufferError, match="cannot be exported"):
        a.__dlpack__(dl_device=(2, 0))
    with pytest.raises(ValueError, match="stream must be None"):
        a.__dlpack__(stream=1)
    copy = np.from_dlpack(_Wrap(a, copy=True))
    copy[0] = 7
    assert a.numpy()[0] == 0  # copy=True hands over memory of its own


class _Wrap:
    """Calls __dlpack__ with extra keywords, as a consumer would."""

    def __init__(self, a, **kw):
        self.a, self.kw = a, kw

    def __dlpack__(self, **kw):
        return self.a.__dlpack__(**{**kw, **self.kw})

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


def test_copy_and_zero_in_place():
    a = host(np.zeros((2, 2), np.float32))
    a.copy_(np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(a.numpy(), np.ones((2, 2)))
    a.zero_()
    np.testing.assert_array_equal(a.numpy(), np.zeros((2, 2)))
    with pytest.raises(TypeError, match="float32"):
        a.copy_(np.ones((2, 2), np.float64))
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        a.copy_(np.ones(4, np.float32))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        a.copy_([[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.skipif(cuda.is_available(), reason="a CUDA device is present")
def test_without_a_device_gpu_arrays_and_models_report_it():
    from fuseprop import nn
    with pytest.raises(RuntimeError, match="no CUDA device"):
        cuda.asarray(np.zeros(3, np.float32))
    with pytest.raises(RuntimeError, match="no CUDA device"):
        _C.cuda_empty([2, 2])
    with pytest.raises(RuntimeError, match="no CUDA device"):
        nn.Sequential(nn.Linear(2, 2)).to("cuda")
    with pytest.raises(ValueError, match="device must be"):
        nn.Linear(2, 2).to("gpu:1")
    m = nn.Linear(2, 2)
    assert m.to("cpu") is m and m.device == "cpu"
