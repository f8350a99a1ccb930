"""The fused MLP kernel (cuda/plan/fused_mlp.cu) against the NumPy reference, through _C.cuda_fused_mlp_forward_backward
and _C.cuda_fused_mlp_forward (host arrays in, one fused pass on the device, host arrays out).

Inputs are drawn in float64 and rounded to float32; the reference runs layer by layer in float64 on the same
rounded values. The FP32 path is held to float32's tolerances, rtol 1e-5 and atol 1e-6 sqrt(K) times the largest
expected magnitude, K the longest chain of sums behind a value; the TF32 path to 5e-3 of the magnitude (see
TF32_TOL and reference_pass). The parity tests need a GPU and skip without one; the argument checks at the end run wherever the
backend is compiled, and without a device a valid call raises RuntimeError "no CUDA device: ...".
"""
from __future__ import annotations

import numpy as np
import pytest

from fuseprop import _C, cuda, reference, testing
from fuseprop.reference import ACTIVATIONS

needs_gpu = [pytest.mark.cuda, pytest.mark.skipif(not cuda.is_available(), reason="no CUDA device")]
needs_backend = pytest.mark.skipif(not cuda.is_compiled(), reason="built without the CUDA backend")
needs_backend_without_gpu = pytest.mark.skipif(not cuda.is_compiled() or cuda.is_available(),
                                               reason="needs the CUDA backend compiled and no device present")

# TF32 rounds each product's inputs to 10 mantissa bits (relative error 2^-11 each). The forward pass chains n
# products, so a logit's error is a few times 1e-3 of the magnitudes it is built from: 5e-3 of the largest expected
# magnitude, and 5e-3 of each value. The gradients are held to the same tolerance against a reference that rounds
# the same operands (reference_pass(tf32=True)).
TF32_TOL = 5e-3


def apply(marks):
    def decorate(f):
        for mark in marks:
            f = mark(f)
        return f
    return decorate


def make_network(dims, activation, has_bias, batch, seed):
    """x (batch, dims[0]), labels, weights (dims[l+1], dims[l]) scaled 1/sqrt(fan_in), biases, activations."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, dims[0])).astype(np.float32)
    weights = [(rng.standard_normal((o, i)) * i**-0.5).astype(np.float32) for i, o in zip(dims[:-1], dims[1:])]
    biases = [(rng.standard_normal(o) * 0.1).astype(np.float32) if has_bias else None for o in dims[1:]]
    activations = [activation] * (len(weights) - 1) + ["identity"]
    labels = rng.integers(0, dims[-1], batch).astype(np.int64)
    return x, labels, weights, biases, activations


def round_to_tf32(a):
    """a rounded to TF32 as the tensor cores see it (10 mantissa bits, to nearest, ties away from zero), as float64."""
    a = np.array(a, dtype=np.float32)
    bits = a.view(np.uint32)
    finite = (bits & 0x7F800000) != 0x7F800000
    bits[finite] = (bits[finite] + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
    return a.astype(np.float64)


def reference_pass(x, labels, weights, biases, activations, slope, label_smoothing, reduction, tf32=False):
    """(loss, logits, grad_weights, grad_biases) in float64, one layer at a time. tf32: every operand of every
    product rounded to TF32 first, as the kernel's tensor-core path does. That is the fair reference for its
    gradients: where a pre-activation lies within TF32's error of a kink (relu at 0), the derivative flips, and
    one flipped row moves a column of grad_weight by O(1/sqrt(B)) of its size, far beyond any rounding tolerance."""
    rnd = round_to_tf32 if tf32 else (lambda a: a)
    a, cache = x.astype(np.float64), []
    for w, b, act in zip(weights, biases, activations):
        y, z = reference.linear_forward(rnd(a), rnd(w), None if b is None else b.astype(np.float64), act, slope)
        cache.append((a, z, y))
        a = y
    loss, grad = reference.cross_entropy_loss(a, labels, label_smoothing, reduction)
    dws, dbs = [None] * len(weights), [None] * len(weights)
    for l in reversed(range(len(weights))):
        a_prev, z, y = cache[l]
        dz = grad if activations[l] == "identity" else reference.activation_backward(grad, z, y, activations[l], slope)
        grad, dws[l], dbs[l] = reference.linear_backward(rnd(dz), rnd(a_prev), rnd(weights[l]), None, None, "identity",
                                                         slope, biases[l] is not None, l > 0)
    return loss, a, dws, dbs


def assert_close(got, want, tf32, reduction_length, name):
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-30)
    if tf32:
        testing.assert_parity(got, want, rtol=TF32_TOL, atol=TF32_TOL * scale, name=f"tf32 {name}")
    else:
        testing.assert_parity(got, want, rtol=1e-5, atol=1e-6 * reduction_length**0.5 * scale, name=name)


def check_pass(dims, activation, has_bias, batch, tf32, label_smoothing=0.0, reduction="mean", slope=0.1, seed=0):
    x, labels, weights, biases, activations = make_network(dims, activation, has_bias, batch, seed)
    loss, correct, dws, dbs = _C.cuda_fused_mlp_forward_backward(x, labels, weights, biases, activations, slope,
                                                                 label_smoothing, reduction, tf32)
    logits = _C.cuda_fused_mlp_forward(x, weights, biases, activations, slope, tf32)
    want_loss, want_logits, want_dws, want_dbs = reference_pass(x, labels, weights, biases, activations, slope,
                                                                label_smoothing, reduction)
    if tf32:  # the logits and the loss against float64, the gradients against products of TF32-rounded operands
        want_dws, want_dbs = reference_pass(x, labels, weights, biases, activations, slope, label_smoothing, reduction,
                                            tf32=True)[2:]
    chain = sum(dims[:-1])  # the sums behind a logit; the gradients add a sum over the batch
    assert logits.dtype == np.float32 and logits.shape == (batch, dims[-1])
    assert_close(logits, want_logits, tf32, chain, "logits")
    assert_close(np.float64(loss), np.float64(want_loss), tf32, chain + batch, "loss")
    # The training pass computes the logits as the forward pass does (the same bits), so argmax is exact.
    assert correct == int(np.sum(np.argmax(logits, axis=1) == labels))
    assert len(dws) == len(dbs) == len(weights)
    for l, (dw, db, want_dw, want_db) in enumerate(zip(dws, dbs, want_dws, want_dbs)):
        assert dw.dtype == np.float32 and dw.shape == weights[l].shape
        assert_close(dw, want_dw, tf32, chain + batch, f"grad_weight[{l}]")
        if want_db is None:
            assert db is None
        else:
            assert db.dtype == np.float32 and db.shape == (dims[l + 1],)
            assert_close(db, want_db, tf32, chain + batch, f"grad_bias[{l}]")


# (dims, activation, has_bias, batch): MNIST-shaped nets (the input wider than one 128-column step), full-width
# layers, a deep net, odd widths, a 1-wide hidden layer, one class, eight layers; a partial last tile of 128 rows.
CASES = ([([784, 16, 16, 10], "relu", True, b) for b in (1, 7, 130, 4097, 65536)]
         + [([784, 128, 128, 10], "relu", True, b) for b in (7, 130, 4097)]
         + [([64, 64, 64, 64, 64], a, True, 130) for a in ACTIVATIONS]
         + [([64, 64, 64, 64, 64], "leaky_relu", False, 4097),
            ([33, 127, 1, 5], "gelu", False, 7), ([33, 127, 1, 5], "tanh", True, 130),
            ([127, 33, 1], "sigmoid", True, 7), ([300, 33, 10], "gelu_tanh", True, 1),
            ([5] + [128] * 7 + [3], "relu", True, 130)])


def case_id(case):
    dims, activation, has_bias, batch = case
    return f"{'-'.join(map(str, dims))}-{activation}-{'bias' if has_bias else 'nobias'}-B{batch}"


@apply(needs_gpu)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fp32_pass_matches_the_reference(case):
    check_pass(*case, tf32=False)


@apply(needs_gpu)
@pytest.mark.parametrize("case", [c for c in CASES if c[3] <= 4097], ids=case_id)
def test_tf32_pass_matches_the_reference(case):
    check_pass(*case, tf32=True)


@apply(needs_gpu)
@pytest.mark.parametrize("tf32", [False, True], ids=["fp32", "tf32"])
@pytest.mark.parametrize("label_smoothing,reduction", [(0.1, "mean"), (0.0, "sum"), (0.2, "sum")])
def test_label_smoothing_and_sum(label_smoothing, reduction, tf32):
    check_pass([100, 64, 32, 10], "gelu", True, 300, tf32, label_smoothing, reduction)


@apply(needs_gpu)
@pytest.mark.parametrize("tf32", [False, True], ids=["fp32", "tf32"])
def test_two_runs_give_the_same_bits(tf32):
    x, labels, weights, biases, activations = make_network([784, 128, 64, 10], "relu", True, 20000, 3)
    runs = [_C.cuda_fused_mlp_forward_backward(x, labels, weights, biases, activations, 0.01, 0.1, "mean", tf32)
            for _ in range(2)]
    (loss1, correct1, dws1, dbs1), (loss2, correct2, dws2, dbs2) = runs
    assert loss1 == loss2 and correct1 == correct2
    for a, b in zip(dws1 + dbs1, dws2 + dbs2):
        assert np.array_equal(a, b)


@apply(needs_gpu)
def test_nan_input_propagates_and_wins_argmax():
    x, labels, weights, biases, activations = make_network([16, 8, 4], "relu", True, 3, 4)
    x[1, 0] = np.nan
    loss, correct, dws, dbs = _C.cuda_fused_mlp_forward_backward(x, labels, weights, biases, activations)
    logits = _C.cuda_fused_mlp_forward(x, weights, biases, activations)
    assert np.isnan(loss) and np.isnan(logits[1]).all() and np.isnan(dws[0]).any()
    assert correct == int(np.sum(np.argmax(logits, axis=1) == labels))  # numpy's argmax: the first NaN


# ---------------------------------------------------------------- argument checks (no device needed)
def valid_args():
    x, labels, weights, biases, activations = make_network([6, 5, 3], "relu", True, 4, 0)
    return dict(x=x, labels=labels, weights=weights, biases=biases, activations=activations)


def forward_backward(**kwargs):
    args = valid_args()
    args.update(kwargs)
    return _C.cuda_fused_mlp_forward_backward(**args)


@needs_backend
def test_float64_x_is_a_type_error():
    with pytest.raises(TypeError, match="x must have dtype float32"):
        forward_backward(x=np.ones((4, 6)))


@needs_backend
def test_float64_weight_is_a_type_error():
    w = valid_args()["weights"]
    with pytest.raises(TypeError, match=r"weights\[1\] must have dtype float32"):
        forward_backward(weights=[w[0], w[1].astype(np.float64)])


@needs_backend
def test_strided_x_is_a_value_error():
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        forward_backward(x=np.ones((6, 4), np.float32).T)


@needs_backend
def test_weights_that_do_not_chain_are_a_value_error():
    w = valid_args()["weights"]
    with pytest.raises(ValueError, match=r"weights\[1\] must have shape \(out_features, 5\)"):
        forward_backward(weights=[w[0], np.ones((3, 4), np.float32)])
    with pytest.raises(ValueError, match=r"weights\[0\] must have shape \(out_features, 6\)"):
        forward_backward(weights=[np.ones((5, 7), np.float32), w[1]])


@needs_backend
def test_bias_of_the_wrong_shape_is_a_value_error():
    b = valid_args()["biases"]
    with pytest.raises(ValueError, match=r"biases\[0\] must have shape \(5,\)"):
        forward_backward(biases=[np.ones(4, np.float32), b[1]])


@needs_backend
def test_a_layer_wider_than_128_is_a_value_error():
    with pytest.raises(ValueError, match=r"layers 1 to 128 wide; weights\[0\] has shape \(129, 6\)"):
        forward_backward(weights=[np.ones((129, 6), np.float32), np.ones((3, 129), np.float32)])


@needs_backend
def test_more_than_eight_layers_is_a_value_error():
    n = 9
    with pytest.raises(ValueError, match="takes 1 to 8 layers, got 9"):
        forward_backward(x=np.ones((2, 4), np.float32), weights=[np.ones((4, 4), np.float32)] * n, biases=[None] * n,
                         activations=["relu"] * (n - 1) + ["identity"], labels=np.zeros(2, np.int64))


@needs_backend
def test_no_layers_is_a_value_error():
    with pytest.raises(ValueError, match="takes 1 to 8 layers, got 0"):
        forward_backward(weights=[], biases=[], activations=[])


@needs_backend
def test_lists_of_different_lengths_are_a_value_error():
    with pytest.raises(ValueError, match="one entry per layer"):
        forward_backward(activations=["relu", "identity", "identity"])


@needs_backend
def test_last_activation_other_than_identity_is_a_value_error():
    with pytest.raises(ValueError, match="its activation must be 'identity', got 'relu'"):
        forward_backward(activations=["relu", "relu"])


@needs_backend
def test_unknown_activation_is_a_value_error():
    with pytest.raises(ValueError, match="activation must be one of"):
        forward_backward(activations=["swish", "identity"])


@needs_backend
def test_labels_out_of_range_are_a_value_error():
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        forward_backward(labels=np.array([0, 1, 3, 2], np.int64))


@needs_backend
def test_labels_of_the_wrong_dtype_are_a_type_error():
    with pytest.raises(TypeError, match="labels must be class indices with dtype int64"):
        forward_backward(labels=np.zeros(4, np.int32))


@needs_backend
def test_empty_batch_is_a_value_error():
    with pytest.raises(ValueError, match="x must have at least one row"):
        forward_backward(x=np.ones((0, 6), np.float32), labels=np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="x must have at least one row"):
        _C.cuda_fused_mlp_forward(np.ones((0, 6), np.float32), valid_args()["weights"], [None, None], ["relu", "identity"])


@needs_backend
def test_bad_hyper_parameters_are_value_errors():
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        forward_backward(label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        forward_backward(reduction="max")
    with pytest.raises(ValueError, match="negative_slope must be finite"):
        forward_backward(negative_slope=float("nan"))


@needs_backend_without_gpu
def test_valid_calls_say_there_is_no_device():
    with pytest.raises(RuntimeError, match="^no CUDA device: ") as info:
        forward_backward(tf32=True)
    assert str(info.value) == cuda.status()
    args = valid_args()
    with pytest.raises(RuntimeError, match="^no CUDA device: "):
        _C.cuda_fused_mlp_forward(args["x"], args["weights"], args["biases"], args["activations"])
