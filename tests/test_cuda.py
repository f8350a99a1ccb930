"""The CUDA backend's presence and absence: importing never fails, and without a usable GPU every
query says so instead of raising. The GPU tests of the backend run only where a device exists."""
from __future__ import annotations

import pytest

import fuseprop
from fuseprop import _C, cuda


def test_build_info_reports_what_the_extension_holds():
    """cuda_compiled says whether the CUDA entry points are in the module; the status names the reason
    when no device can be used."""
    info = fuseprop.build_info()
    assert info["cuda_compiled"] == hasattr(_C, "CudaTrainPlan") == hasattr(_C, "cuda_matmul")
    assert info["cuda_available"] == (cuda.device_count() > 0)
    assert info["cuda_status"].startswith("no CUDA device: ") != info["cuda_available"]
    if not info["cuda_compiled"]:
        assert not info["cuda_available"] and "no CUDA backend" in info["cuda_status"]


@pytest.mark.skipif(cuda.is_available(), reason="a CUDA device is present")
def test_without_a_device_everything_reports_no_cuda_device():
    assert cuda.device_count() == 0 and not cuda.is_available()
    assert cuda.status().startswith("no CUDA device: ")
    with pytest.raises(RuntimeError, match="^no CUDA device: "):
        cuda.get_device_properties(0)


@pytest.mark.skipif(not cuda.is_compiled(), reason="built without the CUDA backend")
def test_the_runtime_query_never_raises():
    q = _C.cuda_query()
    assert set(q) == {"count", "status", "runtime_version", "driver_version"}
    assert q["runtime_version"] >= 12000  # built with CUDA 12 or newer
    assert isinstance(q["status"], str) and q["status"]
    with pytest.raises(ValueError, match=r"device must be in \[0, "):
        _C.cuda_device_properties(-1)


@pytest.mark.cuda
@pytest.mark.skipif(not cuda.is_available(), reason="no CUDA device")
def test_device_properties_describe_a_real_gpu():
    props = cuda.get_device_properties(0)
    assert props["name"] and props["capability"] >= (7, 0) and props["total_memory"] > 0
