"""Batch and layer normalisation against PyTorch (skipped when it is not installed): forward, the saved
statistics, the running-statistics updates over several steps, and every gradient against torch
autograd. Torch always runs in float64, on the same values: our float64 to float64's tolerances, our
float32 to float32's (torch's own float32 rounds differently: over one value its x - mean is not 0)."""
from __future__ import annotations

import numpy as np
import pytest

from fuseprop import functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])


def _t(a, grad=False):
    return None if a is None else torch.from_numpy(a.astype(np.float64)).requires_grad_(grad)


def _close(ours, theirs, dtype, name, scale=1.0):
    """scale: the size of the terms behind a result that cancels (float32's atol grows with it)."""
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    tol = dict(TOL[dtype], atol=TOL[dtype]["atol"] * (scale if dtype == np.float32 else 1.0))
    np.testing.assert_allclose(ours, theirs, err_msg=name, **tol)


def _dx_scale(dy, w, invstd):
    """grad_x = invstd * w * (dy - mean(dy) - xhat * mean(dy * xhat)) cancels when few values share the
    statistics (n = 2: its terms are O(|dy|), it is ~1e-5): the float32 saved statistics then set its error."""
    return float(np.max(np.abs(dy))) * float(np.max(np.abs(invstd * (1 if w is None else w))))


BATCH_NORM_SHAPES = [(8, 5), (4, 3, 7), (2, 4, 5, 6), (1, 3, 2), (16, 2, 1, 1)]


@DTYPES
@pytest.mark.parametrize("shape", BATCH_NORM_SHAPES, ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("running", [True, False], ids=["running", "batchonly"])
def test_batch_norm_training_matches_torch(shape, affine, running, dtype):
    rng = np.random.default_rng(0)
    c = shape[1]
    w, b = (rng.normal(size=c).astype(dtype), rng.normal(size=c).astype(dtype)) if affine else (None, None)
    rm, rv = (rng.normal(size=c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)) if running else (None, None)
    t_rm, t_rv = _t(rm), _t(rv)
    gw, gb = np.zeros(c, dtype), np.zeros(c, dtype)
    t_w, t_b = _t(w, True), _t(b, True)
    for step in range(3):  # the running statistics over several steps; the parameter gradients accumulate
        x = (rng.normal(size=shape) * 2 + 5).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        y, mean, invstd = F.batch_norm_forward(x, w, b, rm, rv, True, momentum=0.3, eps=1e-4)
        dx, _, _ = F.batch_norm_backward(dy, x, w, mean, invstd, True, grad_weight=gw if affine else None,
                                         grad_bias=gb if affine else None)
        t_x = _t(x, True)
        t_y = TF.batch_norm(t_x, t_rm, t_rv, t_w, t_b, training=True, momentum=0.3, eps=1e-4)
        t_y.backward(_t(dy))
        _close(y, t_y, dtype, f"y step {step}")
        _close(dx, t_x.grad, dtype, f"grad_x step {step}", _dx_scale(dy, w, invstd))
        axes = (0,) + tuple(range(2, len(shape)))
        _close(mean, x.astype(np.float64).mean(axis=axes), dtype, "save_mean")
        if running:
            _close(rm, t_rm, dtype, f"running_mean step {step}")
            _close(rv, t_rv, dtype, f"running_var step {step}")
    if affine:
        _close(gw, t_w.grad, dtype, "grad_weight (3 steps)")
        _close(gb, t_b.grad, dtype, "grad_bias (3 steps)")


@DTYPES
@pytest.mark.parametrize("shape", BATCH_NORM_SHAPES + [(1, 3)], ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_batch_norm_evaluation_matches_torch(shape, affine, dtype):
    rng = np.random.default_rng(1)
    c = shape[1]
    x, dy = rng.normal(size=shape).astype(dtype), rng.normal(size=shape).astype(dtype)
    w, b = (rng.normal(size=c).astype(dtype), rng.normal(size=c).astype(dtype)) if affine else (None, None)
    rm, rv = rng.normal(size=c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    y, mean, invstd = F.batch_norm_forward(x, w, b, rm, rv, False)
    dx, dw, db = F.batch_norm_backward(dy, x, w, mean, invstd, False)
    t_x, t_w, t_b = _t(x, True), _t(w, True), _t(b, True)
    t_rm, t_rv = _t(rm), _t(rv)
    t_y = TF.batch_norm(t_x, t_rm, t_rv, t_w, t_b, training=False)
    t_y.backward(_t(dy))
    _close(y, t_y, dtype, "y")
    _close(dx, t_x.grad, dtype, "grad_x")
    np.testing.assert_array_equal(rm, t_rm.numpy())  # evaluation moves neither
    np.testing.assert_array_equal(rv, t_rv.numpy())
    if affine:
        _close(dw, t_w.grad, dtype, "grad_weight")
        _close(db, t_b.grad, dtype, "grad_bias")
    else:
        assert dw is None and db is None


def test_batch_norm_save_statistics_match_torch_native_batch_norm():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 4, 3)) * 3 + 100
    _, mean, invstd = F.batch_norm_forward(x, None, None, None, None, True, eps=1e-3)
    _, t_mean, t_invstd = torch.ops.aten.native_batch_norm(torch.from_numpy(x), None, None, None, None, True, 0.1, 1e-3)
    _close(mean, t_mean, np.float64, "save_mean")
    _close(invstd, t_invstd, np.float64, "save_invstd")


@DTYPES
@pytest.mark.parametrize("shape, normalized_shape", [((8, 5), 5), ((3, 4, 6), (6,)), ((3, 4, 6), (4, 6)),
                                                      ((2, 3, 4, 5), (4, 5)), ((7, 1), 1), ((5, 300), 300)], ids=str)
@pytest.mark.parametrize("weight, bias", [(True, True), (False, False), (True, False)],
                         ids=["affine", "plain", "weight-only"])
def test_layer_norm_matches_torch(shape, normalized_shape, weight, bias, dtype):
    rng = np.random.default_rng(3)
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    x, dy = (rng.normal(size=shape) * 2 + 5).astype(dtype), rng.normal(size=shape).astype(dtype)
    w = rng.normal(size=ns).astype(dtype) if weight else None
    b = rng.normal(size=ns).astype(dtype) if bias else None
    y, mean, rstd = F.layer_norm_forward(x, normalized_shape, w, b, eps=1e-4)
    dx, dw, db = F.layer_norm_backward(dy, x, normalized_shape, w, mean, rstd)
    t_x, t_w, t_b = _t(x, True), _t(w, True), _t(b, True)
    t_y = TF.layer_norm(t_x, ns, t_w, t_b, eps=1e-4)
    t_y.backward(_t(dy))
    _, t_mean, t_rstd = torch.ops.aten.native_layer_norm(torch.from_numpy(x), ns, None, None, 1e-4)
    _close(y, t_y, dtype, "y")
    _close(mean, t_mean.reshape(mean.shape), dtype, "mean")
    _close(rstd, t_rstd.reshape(rstd.shape), dtype, "rstd")
    _close(dx, t_x.grad, dtype, "grad_x")
    if weight:
        _close(dw, t_w.grad, dtype, "grad_weight")
    if bias:
        _close(db, t_b.grad, dtype, "grad_bias")
    elif weight:  # grad_bias comes with weight (the layer drops it when it has no bias)
        _close(db, dy.astype(np.float64).reshape(-1, *ns).sum(axis=0), dtype, "grad_bias")


def test_empty_batch_matches_torch():
    rm, rv = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    t_rm, t_rv = _t(rm), _t(rv)
    y, _, _ = F.batch_norm_forward(np.zeros((0, 2, 3)), None, None, rm, rv, True)
    t_y = TF.batch_norm(torch.zeros(0, 2, 3, dtype=torch.float64), t_rm, t_rv, training=True)
    assert y.shape == tuple(t_y.shape)
    np.testing.assert_array_equal(rm, t_rm.numpy())
    np.testing.assert_array_equal(rv, t_rv.numpy())
