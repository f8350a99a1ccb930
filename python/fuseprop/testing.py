"""Parity and gradient-check helpers, used by fuseprop's own tests and usable by anyone.

Only NumPy is imported, so these work without the native extension.
"""

import numpy as np


def tolerances(dtype, reduction_length=1):
    """(rtol, atol) for comparing a result computed in `dtype` against the float64 reference.

    atol grows with sqrt(K), K the length of the longest sum behind each element, because
    rounding errors of a K-term sum grow like a random walk.
    """
    dtype = np.dtype(dtype)
    scale = max(reduction_length, 1) ** 0.5
    if dtype == np.float64:
        return 1e-10, 1e-12 * scale
    if dtype == np.float32:
        return 1e-5, 1e-6 * scale
    raise TypeError(f"no tolerances for dtype {dtype}; expected float32 or float64")


def assert_parity(actual, expected, *, rtol=None, atol=None, dtype=None, reduction_length=1,
                  name="value"):
    """Assert same shape and |actual - expected| <= atol + rtol * |expected| elementwise.

    NaN matches NaN at the same place and inf matches inf of the same sign. rtol / atol default
    to tolerances(dtype or actual.dtype, reduction_length). Returns the worst errors and the
    tolerances; max_rel_err is taken over elements whose expected value is nonzero, and
    tolerance_used is the worst error as a fraction of its element's tolerance.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: expected shape {expected.shape}, got {actual.shape}")
    if rtol is None or atol is None:
        default_rtol, default_atol = tolerances(actual.dtype if dtype is None else dtype,
                                                reduction_length)
        rtol = default_rtol if rtol is None else rtol
        atol = default_atol if atol is None else atol

    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf is NaN here, and NaN fails every test below
        err = np.abs(a - e)
        excess = err - (atol + rtol * np.abs(e))  # > 0: outside tolerance
    identical = (a == e) | (np.isnan(a) & np.isnan(e))
    ok = identical | (excess <= 0)

    if not ok.all():
        worst_first = np.where(ok, -np.inf, np.nan_to_num(excess, nan=np.inf))
        worst = np.unravel_index(np.argmax(worst_first), ok.shape)
        raise AssertionError(
            f"{name}: {np.count_nonzero(~ok)} of {ok.size} elements outside tolerance; worst at "
            f"index {tuple(int(i) for i in worst)}: actual {actual[worst].item()!r}, expected "
            f"{expected[worst].item()!r} (abs err {err[worst]:.3e}, rtol {rtol:g}, atol {atol:g})")

    inexact = ~identical
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero tolerance (atol=0, expected 0) divides by 0
        used = err / (atol + rtol * np.abs(e))
    return {
        "max_abs_err": float(np.max(err, where=inexact, initial=0.0)),
        "max_rel_err": float(np.max(err / np.where(e == 0, 1.0, np.abs(e)),
                                    where=inexact & (e != 0), initial=0.0)),
        # the largest err / (atol + rtol |expected|): 1.0 would be exactly at the tolerance
        "tolerance_used": float(np.max(used, where=inexact, initial=0.0)),
        "rtol": rtol,
        "atol": atol,
    }


def numerical_grad(f, x, eps=1e-6):
    """Central finite differences (f(x + eps) - f(x - eps)) / (2 eps) of the scalar f() w.r.t. each
    element of x. f takes no arguments and reads x, which is perturbed in place and restored
    bit for bit afterwards. x must be float64: in float32 the differences are mostly rounding.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        got = getattr(x, "dtype", type(x))
        raise TypeError(f"numerical_grad needs a float64 ndarray, got {got}")
    grad = np.empty(x.shape, dtype=np.float64)
    for index in np.ndindex(x.shape):
        original = x[index]
        try:
            x[index] = original + eps
            f_plus = float(f())
            x[index] = original - eps
            f_minus = float(f())
        finally:
            x[index] = original
        grad[index] = (f_plus - f_minus) / (2 * eps)
    return grad


def check_grad(f, x, analytic, *, eps=1e-6, rtol=1e-6, atol=1e-8, name="x"):
    """Assert the analytic gradient of the scalar f() w.r.t. x matches finite differences.

    Returns assert_parity's error dict.
    """
    return assert_parity(analytic, numerical_grad(f, x, eps), rtol=rtol, atol=atol,
                         name=f"d{name} (analytic vs finite differences)")
