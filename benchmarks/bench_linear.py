"""Fused linear layer + ReLU, forward (y, z) and backward (dx, dW, db): fuseprop.functional's
linear_forward / linear_backward vs the same formulas in NumPy, in torch and jit'ted in JAX. See conftest.py for how to run."""
import pytest

from fuseprop.bench.cases import SPECS


@pytest.mark.parametrize("spec", [pytest.param(s, id=s.name) for s in SPECS["linear"]])
def test_linear(run_case, spec):
    run_case(spec)
