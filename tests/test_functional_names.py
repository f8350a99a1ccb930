"""torch.nn.functional's names in fuseprop.functional: the same arguments, defaults and results as PyTorch
(float64 and float32), the explicit reference where PyTorch is not installed, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from fuseprop import functional as F
from fuseprop import reference

DTYPES = [np.float64, np.float32]


def tol(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)


def x_of(dtype, *shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


# (name, fuseprop call, torch call) on x (5, 7) and its companions
def cases():
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(3, 7)), rng.normal(size=3)
    labels = rng.integers(0, 7, 5)
    labels_ignored = labels.copy()
    labels_ignored[2] = -100
    probs = rng.random((5, 7))
    yield "relu", lambda F, x, T: F.relu(x)
    yield "leaky_relu", lambda F, x, T: F.leaky_relu(x, 0.2)
    yield "leaky_relu-default", lambda F, x, T: F.leaky_relu(x)
    yield "sigmoid", lambda F, x, T: F.sigmoid(x)
    yield "tanh", lambda F, x, T: F.tanh(x)
    yield "gelu", lambda F, x, T: F.gelu(x)
    yield "gelu-tanh", lambda F, x, T: F.gelu(x, approximate="tanh")
    yield "softmax", lambda F, x, T: F.softmax(x, dim=-1)
    yield "softmax-dim0", lambda F, x, T: F.softmax(x, dim=0)
    yield "log_softmax", lambda F, x, T: F.log_softmax(x, dim=1)
    yield "linear", lambda F, x, T: F.linear(x, T(w, x), T(b, x))
    yield "linear-no-bias", lambda F, x, T: F.linear(x, T(w, x))
    for red in ("mean", "sum", "none"):
        yield f"cross_entropy-{red}", lambda F, x, T, red=red: F.cross_entropy(x, T(labels), reduction=red)
        yield f"cross_entropy-smooth-{red}", lambda F, x, T, red=red: F.cross_entropy(
            x, T(labels), reduction=red, label_smoothing=0.1)
        yield f"cross_entropy-ignore-{red}", lambda F, x, T, red=red: F.cross_entropy(
            x, T(labels_ignored), reduction=red)
        yield f"mse_loss-{red}", lambda F, x, T, red=red: F.mse_loss(x, T(probs, x), reduction=red)
        yield f"bce_with_logits-{red}", lambda F, x, T, red=red: F.binary_cross_entropy_with_logits(
            x, T(probs, x), reduction=red)


CASES = dict(cases())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_matches_pytorch(name, dtype):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as TF

    x = x_of(dtype, 5, 7)

    def ours(a, like=None):  # float companions in the input's dtype; labels as they are
        return a.astype(dtype) if like is not None else a

    def theirs(a, like=None):
        return torch.from_numpy(ours(a, like))

    got = CASES[name](F, x, ours)
    want = CASES[name](TF, torch.from_numpy(x), theirs).numpy()
    assert np.shape(got) == want.shape
    assert np.asarray(got).dtype == want.dtype
    np.testing.assert_allclose(got, want, **tol(dtype))


def test_every_torch_name_is_checked_here():
    assert {name.split("-")[0].replace("bce_with_logits", "binary_cross_entropy_with_logits") for name in CASES} == set(
        F.TORCH_NAMES)


def test_matches_the_reference_without_pytorch():
    x = x_of(np.float64, 6, 4)
    np.testing.assert_allclose(F.gelu(x, approximate="tanh"), reference.activation_forward(x, "gelu_tanh"), rtol=1e-12)
    np.testing.assert_allclose(F.log_softmax(x, dim=-1), reference.log_softmax_forward(x), rtol=1e-12, atol=1e-14)
    labels = np.array([0, 3, 1, 2, 2, 0])
    np.testing.assert_allclose(F.cross_entropy(x, labels, label_smoothing=0.2),
                               reference.cross_entropy_loss(x, labels, 0.2, "mean")[0], rtol=1e-12)
    w = x_of(np.float64, 3, 4, seed=2)
    np.testing.assert_allclose(F.linear(x[None], w)[0], reference.linear_forward(x, w)[0], rtol=1e-12, atol=1e-14)


def test_any_layout_is_taken_and_the_input_is_left_alone():
    x = x_of(np.float64, 6, 8)
    view = x[:, ::2]  # strided
    before = x.copy()
    np.testing.assert_array_equal(F.relu(view), np.maximum(view, 0))
    np.testing.assert_array_equal(x, before)


def test_inplace_writes_into_the_input():
    x = x_of(np.float32, 4, 3)
    out = F.relu(x, inplace=True)
    assert out is x and (x >= 0).all()
    with pytest.raises(ValueError, match="inplace=True needs input to be a writeable, C-contiguous array"):
        F.leaky_relu(x_of(np.float32, 4, 6)[:, ::2], inplace=True)


BAD = {
    "list input": (lambda: F.relu([1.0, -1.0]), TypeError, r"^input must be a numpy.ndarray, got list$"),
    "int input": (lambda: F.sigmoid(np.arange(3)), TypeError, r"^input must be float32 or float64, got dtype int64$"),
    "weight dtype": (lambda: F.linear(x_of(np.float32, 2, 3), x_of(np.float64, 4, 3)), TypeError,
                     r"^weight must have input's dtype float32, got float64$"),
    "weight shape": (lambda: F.linear(x_of(np.float64, 2, 3), x_of(np.float64, 4, 5)), ValueError,
                     r"^weight must have shape \(out_features, 3\) for input of shape \(2, 3\), got \(4, 5\)$"),
    "dim range": (lambda: F.softmax(x_of(np.float64, 2, 3), dim=2), ValueError, r"^dim must be in \[-2, 1\]"),
    "implicit dim 3-D": (lambda: F.log_softmax(x_of(np.float64, 2, 3, 4)), ValueError, r"needs dim$"),
    "gelu approximate": (lambda: F.gelu(x_of(np.float64, 2), approximate="erf"), ValueError, r"^approximate must be"),
    "reduction": (lambda: F.mse_loss(x_of(np.float64, 2), x_of(np.float64, 2), reduction="avg"), ValueError,
                  r"^reduction must be 'mean', 'sum' or 'none'"),
    "mse shapes": (lambda: F.mse_loss(x_of(np.float64, 4, 1), x_of(np.float64, 4)), ValueError,
                   r"^target must have input's shape \(4, 1\), got \(4,\)$"),
    "ce shapes": (lambda: F.cross_entropy(x_of(np.float64, 4, 3), np.zeros(3, int)), ValueError,
                  r"^cross_entropy takes input \(N, C\) and target \(N,\)"),
    "ce float labels": (lambda: F.cross_entropy(x_of(np.float64, 2, 3), np.array([0.0, 1.0])), TypeError,
                        r"^target must be integer class indices, got dtype float64$"),  # as torch: class indices are ints
    "ce label range": (lambda: F.cross_entropy(x_of(np.float64, 2, 3), np.array([0, 3])), ValueError, r"labels"),
    "ce weight": (lambda: F.cross_entropy(x_of(np.float64, 2, 3), np.array([0, 1]), weight=np.ones(3)),
                  NotImplementedError, r"class weights"),
    "bce pos_weight": (lambda: F.binary_cross_entropy_with_logits(x_of(np.float64, 2), x_of(np.float64, 2),
                                                                  pos_weight=np.ones(2)), NotImplementedError,
                       r"pos_weight"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_by_name(case):
    call, exc, message = BAD[case]
    with pytest.raises(exc, match=message):
        call()
