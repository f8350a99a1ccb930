"""The step-by-step API never returns gradients computed from another forward's inputs: what a forward
records for backward belongs to that forward; predict and evaluate (no_grad) leave it alone; backward
uses it once; a loss gradient handed to the wrong forward raises. Each of these was a silent wrong
gradient before."""
from __future__ import annotations

import numpy as np
import pytest

import fuseprop
from fuseprop import losses, nn, optim


def make(seed=0, dropout=False):
    fuseprop.manual_seed(seed)
    layers = [nn.Linear(6, 8), nn.ReLU()] + ([nn.Dropout(0.0)] if dropout else []) + [nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def data(seed=0, n=5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, size=n)


def grads(model):
    return {n: p.grad.copy() for n, p in model.named_parameters()}


def clean_grads(x, y, **kw):
    model = make(**kw)
    model.zero_grad()
    lf = losses.CrossEntropyLoss()
    lf(model(x), y)
    model.backward(lf.backward())
    return grads(model)


@pytest.mark.parametrize("between", ["predict", "evaluate", "no_grad"])
def test_an_inference_forward_between_loss_and_backward_changes_nothing(between):
    x, y = data()
    x2, y2 = data(seed=1)  # the same batch size: the old tape was overwritten without any error
    want = clean_grads(x, y)
    model, lf = make(), losses.CrossEntropyLoss()
    model.zero_grad()
    lf(model(x), y)
    g = lf.backward()
    if between == "predict":
        model.predict(x2)
    elif between == "evaluate":
        model.evaluate(x2, y2, loss=lf)
    else:
        with nn.no_grad():
            model(x2)
    model.backward(g)
    for k, v in grads(model).items():
        np.testing.assert_array_equal(v, want[k], err_msg=k)
    assert lf.backward() is g  # evaluate used its own copy of the loss


@pytest.mark.parametrize("dropout", [False, True])
def test_a_second_backward_raises_instead_of_doubling_the_gradients(dropout):
    x, y = data()
    model, lf = make(dropout=dropout), losses.CrossEntropyLoss()
    model.zero_grad()
    lf(model(x), y)
    model.backward(lf.backward())
    once = grads(model)
    with pytest.raises(RuntimeError, match="called twice for one forward"):
        model.backward(lf.backward())
    for k, v in grads(model).items():
        np.testing.assert_array_equal(v, once[k], err_msg=k)


@pytest.mark.parametrize("module", ["sequential", "linear"])
def test_modules_with_parameters_use_their_tape_once(module):
    x, _ = data()
    m = {"sequential": make(), "linear": nn.Linear(6, 4)}[module]
    out = m(x)
    m.backward(np.ones_like(out))
    with pytest.raises(RuntimeError, match="called twice"):
        m.backward(np.ones_like(out))


@pytest.mark.parametrize("module", [nn.ReLU, nn.Tanh, lambda: nn.Dropout(0.5)])
def test_modules_without_parameters_may_backward_again(module):
    x, _ = data()
    m = module()
    out = m(x)
    g = np.random.default_rng(1).normal(size=out.shape).astype(np.float32)
    np.testing.assert_array_equal(m.backward(g), m.backward(g))  # nothing accumulates


def test_the_gradient_of_an_older_forward_raises_after_a_newer_one():
    x, y = data()
    x2, _ = data(seed=1)
    model, lf = make(), losses.CrossEntropyLoss()
    model.zero_grad()
    lf(model(x), y)
    g = lf.backward()
    model(x2)  # a newer recorded forward: its tape is what backward would use
    with pytest.raises(RuntimeError, match="another forward than the last recorded one"):
        model.backward(g)
    assert all(not v.any() for v in grads(model).values())  # nothing was added


def test_the_gradient_of_a_no_grad_output_raises():
    x, y = data()
    model, lf = make(), losses.CrossEntropyLoss()
    model(x)
    with nn.no_grad():
        lf(model(x), y)
    with pytest.raises(RuntimeError, match="recorded nothing"):
        model.backward(lf.backward())


def test_gradients_still_accumulate_over_several_forward_backward_pairs():
    x, y = data(n=8)
    lf = losses.CrossEntropyLoss(reduction="sum")
    want = clean_grads(x, y)  # mean over 8 = (sum over 4 + sum over 4) / 8
    model = make()
    model.zero_grad()
    for part in (slice(0, 4), slice(4, 8)):
        lf(model(x[part]), y[part])
        model.backward(lf.backward())
    for k, v in grads(model).items():
        np.testing.assert_allclose(v / 8, want[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_backward_through_an_eval_mode_forward_works_as_in_pytorch():
    x, y = data()
    model = make(dropout=True).eval()
    lf = losses.CrossEntropyLoss()
    model.zero_grad()
    lf(model(x), y)
    model.backward(lf.backward())
    want = clean_grads(x, y, dropout=True)
    for k, v in grads(model).items():
        np.testing.assert_array_equal(v, want[k], err_msg=k)
    gx = fuseprop.diagnostics.saliency(model, x[:1], 0)
    assert np.isfinite(gx).all() and gx.shape == (1, 6)


def test_a_bad_gradient_shape_does_not_use_up_the_tape():
    x, y = data()
    model, lf = make(), losses.CrossEntropyLoss()
    model.zero_grad()
    lf(model(x), y)
    with pytest.raises(ValueError):
        model.backward(np.ones((2, 3), np.float32))
    model.backward(lf.backward())  # the right gradient still goes through
    want = clean_grads(x, y)
    for k, v in grads(model).items():
        np.testing.assert_array_equal(v, want[k], err_msg=k)


@pytest.mark.parametrize("kwargs", [dict(l1=1e-4), dict(clip_grad_value=1e30)])
def test_fit_on_the_per_layer_path_raises_when_the_update_overflows(kwargs):
    """fit's per-layer step skipped train_step's check that the update left the weights finite."""
    x, y = data(n=16)
    x = x * np.float32(1e4)  # large gradients: lr * grad overflows float32 in the first update
    model = make()
    opt = optim.SGD(model.parameters(), lr=1e36)
    with pytest.raises(FloatingPointError, match="the optimizer update made .* non-finite"):
        model.fit(x, y, optimizer=opt, epochs=3, batch_size=8, verbose=0, **kwargs)
    model, lf = make(), losses.CrossEntropyLoss()  # the message train_step gives for the same step
    with pytest.raises(FloatingPointError, match="the optimizer update made .* non-finite"):
        model.train_step(x[:8], y[:8], lf, optim.SGD(model.parameters(), lr=1e36))


# Every layer keeps what its backward needs through Module._keep / _kept: an inference forward in between
# leaves it alone. Softmax and LogSoftmax kept their output without the tape, so a predict between the
# forward and the backward changed the gradients silently.
LAYERED = {
    "softmax": lambda: nn.Sequential(nn.Linear(6, 4), nn.Softmax()),
    "log_softmax": lambda: nn.Sequential(nn.Linear(6, 4), nn.LogSoftmax()),
    "cnn": lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.AvgPool2d(1), nn.Flatten(), nn.LayerNorm(8), nn.Linear(8, 4)),
}


@pytest.mark.parametrize("name", list(LAYERED))
def test_a_predict_between_forward_and_backward_changes_no_layers_gradient(name):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 6) if name != "cnn" else (5, 1, 4, 4)).astype(np.float32)
    other = rng.normal(size=x.shape).astype(np.float32)
    g = rng.normal(size=(5, 4)).astype(np.float32)

    def grads_with(between):
        fuseprop.manual_seed(0)
        model = LAYERED[name]()
        model.zero_grad()
        model(x)
        between(model)
        model.backward(g)
        return grads(model)

    clean = grads_with(lambda m: None)
    after_predict = grads_with(lambda m: m.predict(other))
    for k in clean:
        np.testing.assert_array_equal(after_predict[k], clean[k], err_msg=k)
