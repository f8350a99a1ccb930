"""Training steps (forward, softmax cross-entropy, backward, SGD update) of ReLU MLPs: fuseprop's
Sequential.train_step vs a plain NumPy step vs torch eager, torch.compile and JAX jit (whole steps). See
conftest.py for how to run."""
import pytest

from fuseprop.bench.cases import SPECS


@pytest.mark.parametrize("spec", [pytest.param(s, id=s.name) for s in SPECS["train"]])
def test_train_step(run_case, spec):
    run_case(spec)
