"""The convolutional and normalisation layers as modules: shaped like torch.nn's (state dict keys, shapes,
defaults, eval mode), the same outputs and gradients as torch.nn in float64, the tape rules, training in
Sequential / train_step / fit, checkpoints with buffers, and bad input."""
from __future__ import annotations

import numpy as np
import pytest

import fuseprop
from fuseprop import checkpoint, losses, nn, optim

torch = pytest.importorskip("torch")
import fuseprop.torch as ft  # noqa: E402  (needs torch)
from helpers import assert_trains_as_torch  # noqa: E402


def randn(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


LAYERS = {
    "conv": (lambda: nn.Conv2d(3, 5, 3, dtype=np.float64), (4, 3, 9, 8)),
    "conv-stride-pad-dilation": (lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1),
                                                   dtype=np.float64), (2, 3, 11, 7)),
    "conv-no-bias": (lambda: nn.Conv2d(2, 3, 1, bias=False, dtype=np.float64), (3, 2, 5, 5)),
    "maxpool": (lambda: nn.MaxPool2d(2), (2, 3, 7, 6)),
    "maxpool-stride-pad": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 2, 9, 8)),
    "avgpool": (lambda: nn.AvgPool2d(2), (2, 3, 6, 6)),
    "avgpool-pad-exclude": (lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (2, 2, 7, 9)),
    "flatten": (lambda: nn.Flatten(), (3, 2, 4, 5)),
    "batchnorm2d": (lambda: nn.BatchNorm2d(3, dtype=np.float64), (4, 3, 5, 6)),
    "batchnorm1d": (lambda: nn.BatchNorm1d(6, dtype=np.float64), (8, 6)),
    "batchnorm1d-3d": (lambda: nn.BatchNorm1d(3, momentum=None, dtype=np.float64), (4, 3, 7)),
    "batchnorm-no-affine": (lambda: nn.BatchNorm2d(3, affine=False, dtype=np.float64), (4, 3, 2, 2)),
    "layernorm": (lambda: nn.LayerNorm(7, dtype=np.float64), (5, 7)),
    "layernorm-2d": (lambda: nn.LayerNorm((4, 5), dtype=np.float64), (3, 2, 4, 5)),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_torch_nn(name, training):
    make, shape = LAYERS[name]
    fuseprop.manual_seed(0)
    ours = make()
    for b in ours.buffers():  # non-trivial running statistics, so eval mode shows them
        if b.dtype.kind == "f":
            b[...] = np.abs(randn(*b.shape, seed=7)) + 0.5
    theirs = ft.to_torch(ours)
    ours.train(training), theirs.train(training)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = randn(*shape, seed=1)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    y = ours(x)
    yt = theirs(xt)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = randn(*y.shape, seed=2)
    ours.zero_grad()
    gx = ours.backward(g)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    grads = dict(theirs.named_parameters())
    for pname, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, grads[pname].grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=pname)
    for (bname, b), tb in zip(ours.named_buffers(), theirs.buffers()):  # running statistics move alike
        np.testing.assert_allclose(b, tb.numpy(), rtol=1e-12, atol=1e-14, err_msg=bname)


def test_batchnorm_counts_batches_and_uses_running_statistics_in_eval_mode():
    bn = nn.BatchNorm2d(2, dtype=np.float64)
    x = randn(6, 2, 3, 3) * 3 + 1
    bn(x)
    assert int(bn.num_batches_tracked) == 1
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-12)
    bn.eval()
    y = bn(x)
    expected = (x - bn.running_mean[None, :, None, None]) / np.sqrt(bn.running_var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    assert int(bn.num_batches_tracked) == 1  # eval mode leaves the statistics alone


def test_a_cnn_trains_step_by_step_as_torch_does():
    fuseprop.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, dtype=np.float64), nn.BatchNorm2d(4, dtype=np.float64),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, dtype=np.float64), nn.Tanh(),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(6, 3, dtype=np.float64))
    twin = ft.to_torch(model)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    assert_trains_as_torch(model, twin, opt, topt, [(randn(8, 1, 10, 10, seed=step),
                                                     np.random.default_rng(step).integers(0, 3, 8)) for step in range(3)])
    assert model.train_plan is None  # layer by layer: the native plan takes Linear chains only


@pytest.mark.parametrize("make_act", [nn.ReLU, lambda: nn.LeakyReLU(-0.3), nn.Sigmoid, lambda: nn.GELU("tanh")],
                         ids=["relu", "leaky-negative-slope", "sigmoid", "gelu-tanh"])
@pytest.mark.parametrize("shape", [(6, 3, 4, 5), (7, 3)], ids=["2d", "1d"])
def test_batchnorm_and_its_activation_run_as_one_pass_with_the_numbers_of_two(make_act, shape):
    """Sequential runs BatchNorm + activation as one call each way (the activation in the normalisation's
    pass); the outputs, gradients and running statistics are those of the two layers run one by one."""
    bn_type = nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d
    fused_bn, apart_bn, apart_act = bn_type(3, dtype=np.float64), bn_type(3, dtype=np.float64), make_act()
    fused_bn.weight.data[:] = randn(3, seed=1)
    fused_bn.bias.data[:] = randn(3, seed=2)
    apart_bn.load_state_dict(fused_bn.state_dict())
    model = nn.Sequential(fused_bn, make_act())
    assert len(model._segments()) == 1  # one fused pair
    x, g = randn(*shape, seed=3) * 2 + 1, randn(*shape, seed=4)
    np.testing.assert_allclose(model(x), apart_act(apart_bn(x)), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(model.backward(g), apart_bn.backward(apart_act.backward(g)), rtol=1e-11, atol=1e-13)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(getattr(fused_bn, name).grad, getattr(apart_bn, name).grad, rtol=1e-11, atol=1e-13)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_array_equal(getattr(fused_bn, name), getattr(apart_bn, name))


def small_cnn(dtype=np.float32):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, dtype=dtype), nn.BatchNorm2d(4, dtype=dtype), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3, dtype=dtype))


def blobs(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    x[np.arange(n), 0, y * 2, y * 2] += 4.0  # a bright pixel whose place is the class
    return x, y


def test_fit_learns_and_is_the_same_whatever_the_thread_count():
    x, y = blobs()
    results, threads_before = [], fuseprop.get_num_threads()
    try:
        for threads in (1, 2):
            fuseprop.set_num_threads(threads)
            fuseprop.manual_seed(0)
            m = small_cnn()
            h = m.fit(x, y, optimizer=optim.Adam(m.parameters(), lr=1e-2), epochs=8, batch_size=16, verbose=0, seed=0)
            results.append((h.history, m.state_dict()))
    finally:
        fuseprop.set_num_threads(threads_before)
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1].values(), results[1][1].values()):
        np.testing.assert_array_equal(a, b)
    assert results[0][0]["accuracy"][-1] > 0.9


def test_checkpoint_round_trip_keeps_the_running_statistics(tmp_path):
    x, y = blobs()
    fuseprop.manual_seed(0)
    m = small_cnn()
    m.fit(x, y, epochs=1, batch_size=16, verbose=0, seed=0)
    checkpoint.save_checkpoint(tmp_path / "cnn.npz", m)
    fuseprop.manual_seed(1)
    again = small_cnn()
    checkpoint.load_checkpoint(tmp_path / "cnn.npz", again)
    for (name, a), b in zip(m.state_dict().items(), again.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    np.testing.assert_array_equal(m.predict(x), again.predict(x))


def test_conv_and_batchnorm_use_their_tape_once_pools_may_backward_again():
    x = randn(2, 2, 6, 6)
    for layer in (nn.Conv2d(2, 3, 3, dtype=np.float64), nn.BatchNorm2d(2, dtype=np.float64)):
        g = np.ones_like(layer(x))
        layer.backward(g)
        with pytest.raises(RuntimeError, match="called twice for one forward"):
            layer.backward(g)
    pool = nn.MaxPool2d(2)
    g = np.ones_like(pool(x))
    np.testing.assert_array_equal(pool.backward(g), pool.backward(g))


BAD = {
    "conv 3-D input": (lambda: nn.Conv2d(2, 3, 3)(np.zeros((2, 6, 6), np.float32)), ValueError, r"^x must be 4-D"),
    "conv channels": (lambda: nn.Conv2d(2, 3, 3)(np.zeros((1, 3, 6, 6), np.float32)), ValueError,
                      r"^x must have 2 channels \(N, 2, H, W\), got shape \(1, 3, 6, 6\)"),
    "conv kernel larger than the padded input": (lambda: nn.Conv2d(1, 1, 5, padding=1)(np.zeros((1, 1, 2, 2), np.float32)),
                                                 ValueError, r"kernel|larger|fit"),
    "conv kernel_size 0": (lambda: nn.Conv2d(1, 1, 0), ValueError, r"^kernel_size must be >= 1, got 0$"),
    "conv negative padding": (lambda: nn.Conv2d(1, 1, 3, padding=-1), ValueError, r"^padding must be >= 0"),
    "conv padding string": (lambda: nn.Conv2d(1, 1, 3, padding="same"), ValueError, r"no 'same' / 'valid'"),
    "conv stride triple": (lambda: nn.Conv2d(1, 1, 3, stride=(1, 1, 1)), TypeError, r"^stride must be an int or a pair"),
    "pool window larger than the input": (lambda: nn.MaxPool2d(4)(np.zeros((1, 1, 3, 3), np.float32)), ValueError,
                                          r"does not fit an input of size \(3, 3\)"),
    "pool padding over half": (lambda: nn.AvgPool2d(2, padding=2), ValueError, r"at most half of the kernel size"),
    "pool ceil_mode": (lambda: nn.MaxPool2d(2, ceil_mode=True), NotImplementedError, r"ceil_mode"),
    "pool 2-D input": (lambda: nn.AvgPool2d(2)(np.zeros((4, 4), np.float32)), ValueError, r"^x must be 4-D"),
    "batchnorm2d 2-D input": (lambda: nn.BatchNorm2d(3)(np.zeros((4, 3), np.float32)), ValueError,
                              r"^BatchNorm2d expects a 4-D input \(N, 3, \.\.\.\), got shape \(4, 3\)$"),
    "batchnorm channels": (lambda: nn.BatchNorm1d(3)(np.zeros((4, 5), np.float32)), ValueError,
                           r"^x must have 3 channels along axis 1, got shape \(4, 5\)$"),
    "batchnorm one value per channel": (lambda: nn.BatchNorm1d(3)(np.zeros((1, 3), np.float32)), ValueError,
                                        r"Expected more than 1 value per channel when training"),
    "batchnorm momentum": (lambda: nn.BatchNorm1d(3, momentum=1.5), ValueError, r"^momentum must be in \[0, 1\]"),
    "layernorm shape": (lambda: nn.LayerNorm(5)(np.zeros((2, 4), np.float32)), ValueError,
                        r"^x must end in the normalized shape \(5,\), got shape \(2, 4\)$"),
    "layernorm eps": (lambda: nn.LayerNorm(5, eps=0), ValueError, r"^eps must be a positive finite number"),
    "flatten dims": (lambda: nn.Flatten(2, 5)(np.zeros((2, 3), np.float32)), ValueError, r"does not fit an input of 2"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused(case):
    call, exc, message = BAD[case]
    with pytest.raises(exc, match=message):
        call()


def test_a_refused_batchnorm_input_changes_no_statistic():
    bn = nn.BatchNorm1d(3)
    before = {k: v.copy() for k, v in bn.state_dict().items()}
    with pytest.raises(ValueError):
        bn(np.zeros((1, 3), np.float32))
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_the_models_with_buffers_stay_on_the_cpu():
    with pytest.raises((NotImplementedError, RuntimeError)):
        small_cnn().to("cuda")


@pytest.mark.parametrize("bad", ["nan-input", "label-out-of-range"])
def test_a_refused_step_leaves_the_running_statistics_as_they_were(bad):
    # The training-mode forward moves BatchNorm's statistics before the loss is even computed.
    x, y = blobs(32)
    fuseprop.manual_seed(0)
    m = small_cnn()
    m.fit(x, y, epochs=1, batch_size=16, verbose=0, seed=0)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    if bad == "nan-input":
        x = np.full_like(x, np.nan)
        exc = FloatingPointError
    else:
        y = y + 3
        exc = ValueError
    with pytest.raises(exc):
        m.train_step(x[:16], y[:16], losses.CrossEntropyLoss(), optim.SGD(m.parameters(), lr=0.1))
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
