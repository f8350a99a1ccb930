"""fit / evaluate / predict, callbacks, schedules, regularisation, dropout, augmentation, diagnostics."""
import math
import os
import re

import numpy as np
import pytest

import fuseprop
from fuseprop import augment, checkpoint, datasets, diagnostics, losses, nn, optim, training

from helpers import blobs


def mlp(dtype=np.float32, dropout=0.0, features=20, classes=3, seed=0):
    g = np.random.default_rng(seed)
    layers = [nn.Linear(features, 32, dtype=dtype, generator=g), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout, generator=np.random.default_rng(seed + 1)))
    return nn.Sequential(*layers, nn.Linear(32, classes, dtype=dtype, generator=g))


# -- fit, evaluate, predict

def test_fit_learns_and_reports_history_keys():
    x, y = blobs()
    model = mlp()
    history = model.fit(x, y, optimizer=optim.Adam(model.parameters(), lr=1e-2), epochs=5, validation_split=0.25,
                        verbose=0, seed=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history.epoch == [0, 1, 2, 3, 4]
    assert history.params["epochs"] == 5 and history.params["samples"] == 900 and history.params["fused"]
    assert history.history["val_accuracy"][-1] > 0.9
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_fused_accuracy_matches_logits_of_the_step():
    x, y = blobs(n=64)
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    expected = int((model(x).argmax(1) == y).sum())  # the step's logits are those before its update
    h = model.fit(x, y, optimizer=opt, epochs=1, batch_size=64, shuffle=False, verbose=0)
    assert h.params["fused"] and h.history["accuracy"] == [expected / 64]


def test_fused_and_per_layer_fit_agree():
    x, y = blobs(n=256)
    results = []
    for fused in (True, False):
        model = mlp()
        model.fused_train_step = fused
        h = model.fit(x, y, optimizer=optim.SGD(model.parameters(), lr=0.1), epochs=2, verbose=0, seed=1)
        results.append((h.history, model.state_dict()))
    assert results[0][0] == pytest.approx(results[1][0])
    for k in results[0][1]:
        np.testing.assert_allclose(results[0][1][k], results[1][1][k], rtol=1e-6, atol=1e-7)


def test_evaluate_and_predict_shapes_and_modes():
    x, y = blobs(n=300)
    model = mlp(dropout=0.5)
    out = model.predict(x, batch_size=64)
    assert out.shape == (300, 3) and model.training
    np.testing.assert_array_equal(out, model.eval()(x))
    model.train()
    result = model.evaluate(x, y, batch_size=64)
    assert set(result) == {"loss", "accuracy"} and 0 <= result["accuracy"] <= 1
    assert result["accuracy"] == pytest.approx(float((out.argmax(1) == y).mean()))
    reg = nn.Sequential(nn.Linear(20, 2))
    assert set(reg.evaluate(x, np.zeros((300, 2), np.float32))) == {"loss"}


def test_drop_last_and_steps():
    x, y = blobs(n=100)
    h = mlp().fit(x, y, epochs=1, batch_size=32, drop_last=True, verbose=0)
    assert h.params["steps"] == 3


def test_verbose_line_format(capsys):
    x, y = blobs(n=200)
    mlp().fit(x, y, epochs=2, validation_data=(x, y), verbose=2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    pattern = (r"epoch 2/2  loss \d+\.\d{4}  accuracy \d+\.\d\d%  val_loss \d+\.\d{4}  val_accuracy \d+\.\d\d%  "
               r"[\d,]+ samples/s  \d+\.\d\d s")
    assert re.fullmatch(pattern, lines[1]), lines[1]
    mlp().fit(x, y, epochs=1, verbose=0)
    assert capsys.readouterr().out == ""


def test_verbose_tqdm_bar_on_a_terminal(capsys, monkeypatch):
    pytest.importorskip("tqdm")
    import sys
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    x, y = blobs(n=200)
    mlp().fit(x, y, epochs=1, batch_size=50, validation_data=(x, y), verbose=1)
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "4/4" in out and "val_accuracy" in out


# -- dropout

def test_dropout_preserves_the_mean_and_is_identity_in_eval():
    drop = nn.Dropout(0.3, generator=np.random.default_rng(0))
    x = np.ones((1000, 1000), np.float32)
    y = drop(x)
    assert abs(y.mean() - 1.0) < 0.01
    assert abs((y == 0).mean() - 0.3) < 0.01
    assert set(np.unique(y)) == {np.float32(0), np.float32(1 / 0.7)}
    drop.eval()
    np.testing.assert_array_equal(drop(x), x)
    np.testing.assert_array_equal(drop.backward(x), x)


def test_dropout_backward_uses_the_forward_mask():
    drop = nn.Dropout(0.5, generator=np.random.default_rng(1))
    x = np.random.default_rng(2).normal(size=(8, 16))
    y = drop(x)
    g = np.random.default_rng(3).normal(size=(8, 16))
    mask = y / x
    np.testing.assert_allclose(drop.backward(g), g * mask)
    # the gradient of sum(y * g) with respect to x, by finite differences with the mask held fixed
    eps = 1e-6
    xp = x.copy()
    xp[0, 0] += eps
    assert (np.sum((xp * mask) * g) - np.sum(y * g)) / eps == pytest.approx(drop.backward(g)[0, 0], rel=1e-5)


def test_dropout_model_trains_on_the_per_layer_path():
    x, y = blobs()
    model = mlp(dropout=0.2)
    h = model.fit(x, y, optimizer=optim.Adam(model.parameters(), lr=1e-2), epochs=4, verbose=0, seed=0)
    assert not h.params["fused"] and model.evaluate(x, y)["accuracy"] > 0.9


# -- early stopping

class Scripted(training.Callback):
    """Overwrites val_loss with a scripted sequence and records the weights of every epoch."""

    def __init__(self, values):
        self.values, self.weights = values, []

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.values[epoch]
        self.weights.append(self.model.state_dict())


def test_early_stopping_stops_and_restores_the_best_weights():
    x, y = blobs(n=200)
    model = mlp()
    script = Scripted([1.0, 0.5, 0.6, 0.7, 0.4, 0.3])
    stop = training.EarlyStopping(monitor="val_loss", patience=2)
    h = model.fit(x, y, epochs=6, validation_data=(x, y), callbacks=[script, stop], verbose=0)
    assert h.epoch == [0, 1, 2, 3] and stop.stopped_epoch == 3 and stop.best_epoch == 1
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, script.weights[1][k])


def test_early_stopping_mode_auto():
    assert training.EarlyStopping(monitor="val_accuracy").mode == "max"
    assert training.EarlyStopping(monitor="loss").mode == "min"


# -- clipping

def _grads(shapes, seed=0):
    rng = np.random.default_rng(seed)
    params = [nn.Parameter(np.zeros(s)) for s in shapes]
    for p in params:
        p.grad[...] = rng.normal(size=p.shape) * 10
    return params


def test_clip_grad_norm_bounds_the_global_norm():
    params = _grads([(4, 5), (5,), (3, 2)])
    manual = math.sqrt(sum(float((p.grad ** 2).sum()) for p in params))
    before = [p.grad.copy() for p in params]
    total = nn.utils.clip_grad_norm_(params, 1.0)
    assert total == pytest.approx(manual)
    after = math.sqrt(sum(float((p.grad ** 2).sum()) for p in params))
    assert after <= 1.0 + 1e-6
    for b, p in zip(before, params):
        np.testing.assert_allclose(p.grad, b * (1.0 / (manual + 1e-6)))
    small = _grads([(3,)], seed=1)
    kept = small[0].grad.copy()
    nn.utils.clip_grad_norm_(small, 1e6)
    np.testing.assert_array_equal(small[0].grad, kept)


def test_clip_grad_value():
    params = _grads([(10, 10)])
    expected = np.clip(params[0].grad, -0.5, 0.5)
    nn.utils.clip_grad_value_(params, 0.5)
    np.testing.assert_array_equal(params[0].grad, expected)


@pytest.mark.parametrize("fused", [True, False])
def test_fit_clips_the_global_norm_before_the_update(fused):
    x, y = blobs(n=32)
    model = mlp(dtype=np.float64)
    model.fused_train_step = fused
    before = model.state_dict()
    h = model.fit(x, y, optimizer=optim.SGD(model.parameters(), lr=1.0), epochs=1, batch_size=32,
                  clip_grad_norm=0.01, verbose=0, grad_norm_history=True)
    step = math.sqrt(sum(float(((before[k] - v) ** 2).sum()) for k, v in model.state_dict().items()))
    assert h.params["fused"] == fused and step == pytest.approx(0.01, rel=1e-4)
    assert math.hypot(*(v[0] for v in h.grad_norms.values())) == pytest.approx(0.01, rel=1e-4)


def test_fused_clipping_matches_clip_grad_norm():
    x, y = blobs(n=64)
    runs = []
    for fused in (True, False):
        model = mlp()
        model.fused_train_step = fused
        h = model.fit(x, y, optimizer=optim.Adam(model.parameters(), lr=1e-2), epochs=2, batch_size=16,
                      clip_grad_norm=0.5, verbose=0, seed=0)
        assert h.params["fused"] == fused
        runs.append((h.history["loss"], model.state_dict()))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5)
    for k in runs[0][1]:
        np.testing.assert_allclose(runs[0][1][k], runs[1][1][k], rtol=1e-4, atol=1e-5)


# -- L1 / L2

@pytest.mark.parametrize("l1,l2", [(0.01, 0.0), (0.0, 0.05), (0.01, 0.05)])
def test_penalties_change_gradients_and_loss_as_documented(l1, l2):
    x, y = blobs(n=16)
    plain, reg = mlp(dtype=np.float64), mlp(dtype=np.float64)
    w0 = reg.state_dict()
    loss_fn = losses.CrossEntropyLoss()
    base = loss_fn(plain(x), y)
    plain.zero_grad()
    plain.backward(loss_fn.backward())
    grads = {k: p.grad.copy() for k, p in plain.named_parameters()}
    h = reg.fit(x, y, loss=loss_fn, optimizer=optim.SGD(reg.parameters(), lr=1.0), epochs=1, batch_size=16,
                shuffle=False, verbose=0, l1=l1, l2=l2)
    penalty = 0.0
    for k, v in reg.state_dict().items():
        w = w0[k]
        expected = grads[k] + ((l1 * np.sign(w) + l2 * w) if w.ndim == 2 else 0)
        penalty += (l1 * np.abs(w).sum() + 0.5 * l2 * (w ** 2).sum()) if w.ndim == 2 else 0
        np.testing.assert_allclose(w - v, expected, rtol=1e-10, atol=1e-12)  # SGD lr=1: the step is the gradient
    assert h.history["loss"][0] == pytest.approx(base + penalty, rel=1e-10)


# -- schedules

def _opt(lr=0.1):
    return optim.SGD([nn.Parameter(np.zeros(3))], lr=lr)


def _lrs(sched, n):
    out = [sched.get_last_lr()[0]]
    for _ in range(n):
        sched.step()
        out.append(sched.get_last_lr()[0])
    return out


def test_step_lr_formula():
    assert _lrs(training.StepLR(_opt(), step_size=3, gamma=0.5), 7) == pytest.approx(
        [0.1 * 0.5 ** (t // 3) for t in range(8)])


def test_cosine_formula():
    got = _lrs(training.CosineAnnealingLR(_opt(), T_max=10, eta_min=0.01), 10)
    assert got == pytest.approx([0.01 + 0.09 * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(11)])
    assert got[-1] == pytest.approx(0.01)


def test_linear_warmup_formula():
    got = _lrs(training.LinearWarmup(_opt(), warmup=4, start_factor=0.25), 6)
    assert got == pytest.approx([0.1 * (0.25 + 0.75 * min(t, 4) / 4) for t in range(7)])


def test_schedules_match_torch():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(3))
    cases = [(lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.3), lambda o: training.StepLR(o, 2, 0.3)),
             (lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 5, 0.001),
              lambda o: training.CosineAnnealingLR(o, 5, 0.001)),
             (lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.2, 1.0, 3), lambda o: training.LinearWarmup(o, 3, 0.2))]
    for make_torch, make_ours in cases:
        topt = torch.optim.SGD([p], lr=0.1)
        tsched = make_torch(topt)
        ours = make_ours(_opt())
        for _ in range(5):
            assert ours.get_last_lr()[0] == pytest.approx(tsched.get_last_lr()[0])
            topt.step()
            tsched.step()
            ours.step()


def test_fit_steps_schedules_per_epoch_and_per_step():
    x, y = blobs(n=64)
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    per_epoch = training.StepLR(opt, step_size=1, gamma=0.5)
    model.fit(x, y, optimizer=opt, epochs=3, callbacks=[per_epoch], verbose=0)
    assert per_epoch.get_last_lr()[0] == pytest.approx(0.1 * 0.5 ** 3)
    opt = optim.SGD(model.parameters(), lr=0.1)
    per_step = training.CosineAnnealingLR(opt, T_max=4, interval="step")
    model.fit(x, y, optimizer=opt, epochs=1, batch_size=16, callbacks=[per_step], verbose=0)
    assert per_step.last_epoch == 4 and per_step.get_last_lr()[0] == pytest.approx(0.0)


# -- augmentation

def test_shift_moves_pixels_and_fills_zeros():
    img = np.zeros((1, 5, 5), np.float32)
    img[0, 2, 2] = 1
    shift = augment.RandomShift(max_shift=2, image_shape=(5, 5), generator=np.random.default_rng(0))
    out = shift(np.repeat(img, 200, axis=0))
    assert out.shape == (200, 5, 5) and out.dtype == np.float32
    assert np.all(out.reshape(200, -1).sum(1) == 1)  # the pixel stays within reach
    assert len({tuple(np.argwhere(o)[0]) for o in out}) == 25


def test_shift_is_exact_for_a_known_draw():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    shift = augment.RandomShift(1, (4, 4), generator=np.random.default_rng(0))
    dy, dx = np.random.default_rng(0).integers(-1, 2, size=(2, 1))[:, 0]
    expected = np.zeros_like(x[0])
    for r in range(4):
        for c in range(4):
            if 0 <= r - dy < 4 and 0 <= c - dx < 4:
                expected[r, c] = x[0, r - dy, c - dx]
    np.testing.assert_array_equal(shift(x)[0], expected)


def test_flip_and_compose_shapes_and_determinism():
    x = np.random.default_rng(0).random((64, 784)).astype(np.float32)

    def make(seed):
        g = np.random.default_rng(seed)
        return augment.Compose([augment.RandomShift(2, generator=g), augment.RandomHorizontalFlip(0.5, generator=g)])

    a, b, c = make(7)(x), make(7)(x), make(8)(x)
    assert a.shape == x.shape and a.dtype == x.dtype
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    flip = augment.RandomHorizontalFlip(1.0)(x).reshape(64, 28, 28)
    np.testing.assert_array_equal(flip, x.reshape(64, 28, 28)[:, :, ::-1])
    np.testing.assert_array_equal(augment.RandomHorizontalFlip(0.0)(x), x)
    with pytest.raises(ValueError):
        augment.RandomShift()(np.zeros((2, 100)))


def test_fit_with_augmentation_keeps_the_fused_step():
    x = np.random.default_rng(0).random((64, 784)).astype(np.float32)
    y = np.arange(64) % 10
    model = nn.Sequential(nn.Linear(784, 10))
    h = model.fit(x, y, epochs=1, augment=augment.RandomShift(1, generator=np.random.default_rng(0)), verbose=0)
    assert h.params["fused"]


# -- gradient-norm diagnostics

def test_grad_norm_history_per_layer_and_step():
    x, y = blobs(n=96)
    h = mlp().fit(x, y, epochs=2, batch_size=32, verbose=0, grad_norm_history=True)
    assert set(h.grad_norms) == {"0", "2"} and all(len(v) == 6 for v in h.grad_norms.values())


def test_vanishing_gradients_warn():
    x, y = blobs(n=64)
    model = nn.Sequential(nn.Linear(20, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 3))
    model[0].weight.data[...] = 0
    model[0].bias.data[...] = -60  # sigmoid saturated: its derivative ~ 1e-26
    with pytest.warns(diagnostics.GradientWarning, match="vanishing gradients in layer '0'"):
        model.fit(x, y, optimizer=optim.SGD(model.parameters(), lr=0.0), epochs=1, verbose=0, grad_norm_history=True)


def test_exploding_gradients_warn():
    x, y = blobs(n=64)
    model = mlp()
    model[2].weight.data[...] *= 1e5
    with pytest.warns(diagnostics.GradientWarning, match="exploding gradients"):
        model.fit(x, y, optimizer=optim.SGD(model.parameters(), lr=0.0), epochs=1, verbose=0, grad_norm_history=True)


# -- saliency and plots

def test_saliency_matches_finite_differences():
    model = mlp(dtype=np.float64, features=6)
    x = np.random.default_rng(0).normal(size=(2, 6))
    target = np.array([1, 2])
    before = [p.grad.copy() for p in model.parameters()]
    sal = diagnostics.saliency(model, x, target)
    assert sal.shape == x.shape
    eps = 1e-6
    for n in range(2):
        for i in range(6):
            xp, xm = x.copy(), x.copy()
            xp[n, i] += eps
            xm[n, i] -= eps
            fd = (model(xp)[n, target[n]] - model(xm)[n, target[n]]) / (2 * eps)
            assert sal[n, i] == pytest.approx(fd, rel=1e-6, abs=1e-9)
    for b, p in zip(before, model.parameters()):
        np.testing.assert_array_equal(b, p.grad)
    assert diagnostics.saliency(model, x[0], 1).shape == (6,)


def test_saliency_png(tmp_path):
    model = nn.Sequential(nn.Linear(784, 10))
    x = np.random.default_rng(0).random(784).astype(np.float32)
    img = diagnostics.saliency_image(diagnostics.saliency(model, x, 3))
    assert img.shape == (28, 28) and img.dtype == np.uint8 and img.max() == 255
    path = diagnostics.save_saliency_png(tmp_path / "s.png", model, x, 3)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == (28 * 2 + 2) * 4


def test_plot_history(tmp_path):
    pytest.importorskip("matplotlib")
    x, y = blobs(n=100)
    h = mlp().fit(x, y, epochs=2, validation_data=(x, y), verbose=0)
    path = diagnostics.plot_history(h, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_history_without_matplotlib(monkeypatch, tmp_path):
    import builtins
    real = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"pip install fuseprop\[plot\]"):
        diagnostics.plot_history({"loss": [1.0]}, tmp_path / "c.png")


# -- the CLI and the real data set

FASHION = "/usr/share/datasets/fashion-mnist"


def test_cli_train_on_idx_files(tmp_path, capsys):
    from fuseprop.__main__ import main
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300).astype(np.uint8)
    images = (np.kron(np.eye(3)[labels], np.ones(48)).reshape(300, 12, 12) * 200
              + rng.integers(0, 50, (300, 12, 12))).astype(np.uint8)
    paths = []
    for name, arr in (("tri", images), ("trl", labels), ("tei", images[:100]), ("tel", labels[:100])):
        datasets.write_idx(tmp_path / f"{name}.gz", arr)
        paths.append(str(tmp_path / f"{name}.gz"))
    code = main(["train", "--train-images", paths[0], "--train-labels", paths[1], "--test-images", paths[2],
                 "--test-labels", paths[3], "--hidden", "16", "--epochs", "3", "--verbose", "2",
                 "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0 and "final test accuracy" in out and "samples/s" in out
    assert float(re.search(r"final test accuracy ([\d.]+)%", out).group(1)) > 90
    # the checkpoint restores the model (and carries the input normalisation)
    fuseprop.manual_seed(1)
    restored = nn.Sequential(nn.Linear(144, 16), nn.ReLU(), nn.Linear(16, 3))
    extra = checkpoint.load_checkpoint(tmp_path / "out" / f"checkpoint.{checkpoint.default_format()}", restored)
    assert extra["sizes"] == [144, 16, 3] and extra["std"] > 0


def test_cli_trains_the_cnn_on_idx_files(tmp_path, capsys):
    from fuseprop.__main__ import build_cnn, main
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 240).astype(np.uint8)
    images = rng.integers(0, 60, (240, 12, 12)).astype(np.uint8)
    for i, c in enumerate(labels):  # a bright 4x4 square whose corner is the class
        images[i, 4 * c:4 * c + 4, 4 * c:4 * c + 4] = 230
    paths = []
    for name, arr in (("tri", images), ("trl", labels), ("tei", images[:60]), ("tel", labels[:60])):
        datasets.write_idx(tmp_path / f"{name}.gz", arr)
        paths.append(str(tmp_path / f"{name}.gz"))
    code = main(["train", "--model", "cnn", "--channels", "4", "8", "--hidden", "16", "--train-images", paths[0],
                 "--train-labels", paths[1], "--test-images", paths[2], "--test-labels", paths[3], "--epochs", "4",
                 "--batch-size", "32", "--verbose", "2", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0 and "network cnn 1x12x12 -> conv3x3(4) bn relu pool2 -> conv3x3(8) bn relu pool2 -> 16 -> 3" in out
    assert float(re.search(r"final test accuracy ([\d.]+)%", out).group(1)) > 90
    restored = build_cnn([4, 8], 16, 3, (1, 12, 12))  # the checkpoint holds the layers and the batch statistics
    extra = checkpoint.load_checkpoint(tmp_path / "out" / f"checkpoint.{checkpoint.default_format()}", restored)
    assert extra["model"] == "cnn" and int(restored[1].num_batches_tracked) == 4 * 8


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="Fashion-MNIST is not installed")
def test_fashion_mnist_one_epoch_smoke():
    (x, y), (xt, yt) = datasets.load_fashion_mnist(FASHION)
    x = x.reshape(-1, 784).astype(np.float32) / 255
    xt = xt.reshape(-1, 784).astype(np.float32) / 255
    fuseprop.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 128, init="he_uniform"), nn.ReLU(), nn.Linear(128, 10))
    history = model.fit(x, y, optimizer=optim.Adam(model.parameters(), lr=2e-3), epochs=1, batch_size=128,
                        verbose=0, seed=0)
    assert history.params["fused"]
    assert model.evaluate(xt, yt)["accuracy"] > 0.80
