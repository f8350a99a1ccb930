"""Every op of the registry (tests/ops/op_registry.py) against the float64 reference, on every device.

Each case draws float64 inputs, rounds them to the dtype under test, runs the op on the device in that
dtype and the reference in float64 on the same values, and compares every output (shape first, then
values) with fuseprop.testing's tolerances. In-place ops are compared through the arrays they update.
The devices are the CPU at every instruction set this machine has (float32; float64 on the portable
kernels) and the CUDA twins with FP32 and TF32 GEMMs, which skip without a GPU.
"""
from __future__ import annotations

import numpy as np
import pytest

from fuseprop import _C, functional, reference

from op_registry import ACTS, DEVICES, LEVELS, REGISTRY, check_case, cuda_marks, set_device

CASES = [pytest.param(op, shape, device, marks=cuda_marks(device),
                      id=f"{op.name}-{'x'.join(map(str, shape))}-{device.name}")
         for device in DEVICES for op in REGISTRY if op.runs_on(device) for shape in op.shapes_on(device)]


@pytest.fixture
def on_device(request):
    restore = set_device(request.param)
    yield request.param
    restore()


@pytest.mark.parametrize("op,shape,on_device", CASES, indirect=["on_device"])
def test_op_matches_reference(op, shape, on_device):
    check_case(op, shape, on_device)


@pytest.fixture
def gemm_path(request):
    """Forces one GEMM path (auto, packed, direct or dot), then restores auto."""
    _C._set_gemm_path(request.param)
    yield request.param
    _C._set_gemm_path("auto")


# Every matmul case, and the fused linear layer with two epilogues (the epilogue does not depend on the path).
GEMM_OPS = [op for op in REGISTRY if op.covers == "matmul" or (
    op.covers in ("linear_forward", "linear_backward") and op.name.endswith(("gelu_tanh_0.01_bias", "relu_0.01_nobias")))]
GEMM_CASES = [pytest.param(op, shape, id=f"{op.name}-{'x'.join(map(str, shape))}")
              for op in GEMM_OPS for shape in op.shapes]
CPU_FLOAT32 = [d for d in DEVICES if d.kind == "cpu" and d.dtype == np.float32]


@pytest.mark.parametrize("gemm_path", ["packed", "direct", "dot"], indirect=True)
@pytest.mark.parametrize("on_device", CPU_FLOAT32, indirect=True, ids=lambda d: d.name)
@pytest.mark.parametrize("op,shape", GEMM_CASES)
def test_every_gemm_path_matches_reference(op, shape, on_device, gemm_path):
    check_case(op, shape, on_device)


def test_registry_covers_every_functional_op():
    ops = {n for n in dir(functional) if not n.startswith("_") and callable(getattr(functional, n))}
    ops -= {"as_labels"}  # a conversion helper, not an op
    ops -= set(functional.TORCH_NAMES)  # PyTorch-named wrappers of these ops: tests/test_functional_names.py
    assert ops == {op.covers for op in REGISTRY if not op.covers.startswith("_C.")}  # _C.*: the scalar references
    assert set(functional.ACTIVATIONS) == set(reference.ACTIVATIONS) == {a for a, _ in ACTS}


def test_every_cpu_level_is_a_device():
    assert [d.level for d in DEVICES if d.kind == "cpu" and d.dtype == np.float32] == LEVELS


def test_every_cuda_op_entry_has_a_registry_runner():
    """A _C.cuda_* op entry without a runner in the registry would go untested."""
    if not hasattr(_C, "cuda_matmul"):
        pytest.skip("built without the CUDA backend")
    entries = {n for n in dir(_C) if n.startswith("cuda_") and callable(getattr(_C, n))}  # not the cuda_compiled flag
    not_ops = {"cuda_query", "cuda_device_properties", "cuda_synchronize", "cuda_matmul_time_ms",  # queries
               "cuda_empty", "cuda_to_device", "cuda_from_dlpack", "cuda_gather_rows",  # tests/test_cuda_dlpack.py
               "cuda_fused_mlp_forward", "cuda_fused_mlp_forward_backward"}  # tests/test_cuda_fused_mlp.py
    names = set()
    for op in REGISTRY:
        if op.cuda is not None:
            names |= {n for n in op.cuda.__code__.co_names if n.startswith("cuda_")}
    assert entries - not_ops <= names, sorted(entries - not_ops - names)
