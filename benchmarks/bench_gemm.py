"""GEMMs: fuseprop.functional.matmul (with its transpose flags) vs numpy.matmul, torch.matmul and a
jit'ted jnp.matmul (on .T views of the same operands): square 1024^3 and 2048^3, and the forward and backward GEMMs of each
benchmark network's first layer. See conftest.py for how to run."""
import pytest

from fuseprop.bench.cases import SPECS


@pytest.mark.parametrize("spec", [pytest.param(s, id=s.name, marks=pytest.mark.slow if s.slow else ())
                                  for s in SPECS["gemm"]])
def test_gemm(run_case, spec):
    run_case(spec)
