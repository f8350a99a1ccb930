"""Training on the GPU: model.to("cuda"), train_step, fit, predict, evaluate, DLPack with torch's CUDA
tensors. The oracle is the same model in float64 on the CPU, whose step is itself checked against the
NumPy reference (tests/test_train_step_fused.py, tests/test_network.py). Everything here needs a GPU
and skips without one; tests/test_cuda_dlpack.py covers what runs without one.

GEMMs run in plain FP32 here (fuseprop.cuda.allow_tf32 = False), so float32 tolerances apply;
one test checks the TF32 default at a TF32 tolerance.
"""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest

from fuseprop import _C, cuda, losses, nn, optim
from helpers import all_pairs

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not cuda.is_available(), reason="no CUDA device")]

ACTS = [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, lambda: nn.LeakyReLU(0.1), nn.Identity]


@pytest.fixture(autouse=True)
def fp32_gemms():
    old = cuda.allow_tf32, cuda.fused_mlp
    cuda.allow_tf32 = False
    yield
    cuda.allow_tf32, cuda.fused_mlp = old


def network(sizes, act=nn.ReLU, seed=0, bias=True):
    gen = np.random.default_rng(seed)
    mods = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(nn.Linear(a, b, bias=bias, generator=gen))
        if i + 2 < len(sizes):
            mods.append(act())
    return nn.Sequential(*mods)


def as64(model):
    m = copy.deepcopy(model)
    for p in m.parameters():
        p._data, p._grad = p._data.astype(np.float64), p._grad.astype(np.float64)
    return m


def make_opt(kind, params):
    return {"sgd": lambda: optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
            "adam": lambda: optim.Adam(params, lr=1e-2, weight_decay=1e-3),
            "adamw": lambda: optim.AdamW(params, lr=1e-2)}[kind]()


def data(rng, B, sizes, loss):
    x = rng.standard_normal((B, sizes[0])).astype(np.float32)
    if loss == "ce":
        return x, rng.integers(0, sizes[-1], B)
    return x, rng.random((B, sizes[-1])).astype(np.float32)


LOSSES = {"ce": lambda: losses.CrossEntropyLoss(label_smoothing=0.1), "mse": losses.MSELoss,
          "bce": losses.BCEWithLogitsLoss}


# Whether the fused MLP kernel takes the step depends on the sizes, the loss and the fused flag together:
# those three are one factor (every combination kept); the optimizer and the batch size are independent
# code, covered pairwise with it.
STEP_CASES = [(*row["net"], row["opt"], row["B"]) for row in all_pairs({
    "net": list(itertools.product([(784, 16, 16, 10), (33, 127, 1, 5), (64, 64, 64, 64, 64)], ["ce", "mse", "bce"],
                                  [True, False])),
    "opt": ["sgd", "adam", "adamw"], "B": [1, 7, 300]})]


@pytest.mark.parametrize("sizes, loss, fused, opt, B", STEP_CASES)
def test_train_steps_match_the_float64_cpu_model(sizes, loss, opt, B, fused):
    cuda.fused_mlp = fused
    rng = np.random.default_rng(B)
    cpu = as64(network(sizes))
    gpu = network(sizes).to("cuda")
    o_cpu, o_gpu = make_opt(opt, cpu.parameters()), make_opt(opt, gpu.parameters())
    for _ in range(4):
        x, y = data(rng, B, sizes, loss)
        l_cpu = cpu.train_step(x.astype(np.float64), y if loss == "ce" else y.astype(np.float64), LOSSES[loss](), o_cpu)
        l_gpu = gpu.train_step(x, y, LOSSES[loss](), o_gpu)
        assert abs(l_gpu - l_cpu) <= 1e-4 * max(1.0, abs(l_cpu))
    for (name, p), q in zip(gpu.named_parameters(), cpu.parameters()):
        np.testing.assert_allclose(p.data.numpy(), q.data, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(p.grad.numpy(), q.grad, rtol=1e-3, atol=1e-5 * np.sqrt(B), err_msg=name)
    assert gpu.train_plan.steps == 4
    assert gpu.train_plan.fused == (fused and loss == "ce" and max(sizes[1:]) <= 128)


def test_tf32_default_trains_close_to_fp32():
    cuda.allow_tf32 = True
    rng = np.random.default_rng(1)
    x, y = data(rng, 512, (784, 128, 128, 10), "ce")
    a, b = network((784, 128, 128, 10)), network((784, 128, 128, 10))
    b.to("cuda")
    la = a.train_step(x, y, losses.CrossEntropyLoss(), optim.SGD(a.parameters(), lr=0.1))
    lb = b.train_step(x, y, losses.CrossEntropyLoss(), optim.SGD(b.parameters(), lr=0.1))
    assert abs(la - lb) < 5e-3 * abs(la)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(q.data.numpy(), p.data, rtol=5e-3, atol=1e-3)


@pytest.mark.parametrize("fused", [True, False])
def test_steps_are_deterministic(fused):
    cuda.fused_mlp = fused

    def run():
        m = network((50, 40, 30, 7)).to("cuda")
        o = optim.Adam(m.parameters())
        rng = np.random.default_rng(3)
        for _ in range(5):
            m.train_step(*data(rng, 4097, (50, 40, 30, 7), "ce"), losses.CrossEntropyLoss(), o)
        return [p.data.numpy() for p in m.parameters()]
    for a, b in zip(run(), run()):
        np.testing.assert_array_equal(a, b)


def test_device_inputs_and_clipping_match_host_inputs():
    rng = np.random.default_rng(4)
    x, y = data(rng, 256, (20, 30, 5), "ce")
    a, b = network((20, 30, 5)).to("cuda"), network((20, 30, 5)).to("cuda")
    oa, ob = optim.SGD(a.parameters(), lr=0.5), optim.SGD(b.parameters(), lr=0.5)
    la = a._fused_step(x, y, losses.CrossEntropyLoss(), oa, 0.05)
    lb = b._fused_step(cuda.asarray(x), cuda.asarray(y), losses.CrossEntropyLoss(), ob, 0.05)
    assert la == lb and a.train_plan.grad_norm == b.train_plan.grad_norm > 0.05
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data.numpy(), q.data.numpy())


def test_refused_steps_change_nothing():
    m = network((6, 5, 3)).to("cuda")
    o = optim.Adam(m.parameters())
    before = [p.data.numpy() for p in m.parameters()]
    x = np.ones((4, 6), np.float32)
    with pytest.raises(ValueError, match=r"labels\[2\] is 3"):
        m.train_step(x, np.array([0, 1, 3, 0]), losses.CrossEntropyLoss(), o)
    with pytest.raises(ValueError, match=r"labels\[1\] is -1"):
        m.train_step(cuda.asarray(x), cuda.asarray(np.array([0, -1, 2, 0])), losses.CrossEntropyLoss(), o)
    x[1, 2] = np.nan
    with pytest.raises(FloatingPointError, match="not updated"):
        m.train_step(x, np.array([0, 1, 2, 0]), losses.CrossEntropyLoss(), o)
    with pytest.raises(ValueError, match="non-empty batch"):
        m.train_step(np.ones((0, 6), np.float32), np.zeros(0, np.int64), losses.CrossEntropyLoss(), o)
    with pytest.raises(TypeError, match="float32"):
        m.train_step(cuda.asarray(np.ones((4, 6), np.int64)), np.zeros(4, np.int64), losses.CrossEntropyLoss(), o)
    for p, b in zip(m.parameters(), before):
        np.testing.assert_array_equal(p.data.numpy(), b)
    assert not o.state  # no update ran: no state was published


def test_fit_predict_evaluate_on_the_gpu_follow_the_cpu():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1000, 20)).astype(np.float32)
    y = (x[:, :3].sum(1) > 0).astype(np.int64) + (x[:, 3] > 1)
    cpu, gpu = network((20, 32, 3)), network((20, 32, 3)).to("cuda")
    h_cpu = cpu.fit(x, y, optimizer=optim.SGD(cpu.parameters(), lr=0.1), epochs=3, batch_size=64, seed=0, verbose=0)
    h_gpu = gpu.fit(x, y, optimizer=optim.SGD(gpu.parameters(), lr=0.1), epochs=3, batch_size=64, seed=0, verbose=0)
    np.testing.assert_allclose(h_gpu.history["loss"], h_cpu.history["loss"], rtol=1e-4)
    assert h_gpu.history["accuracy"] == pytest.approx(h_cpu.history["accuracy"], abs=2e-3)
    np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), rtol=1e-4, atol=1e-5)
    assert gpu.evaluate(x, y)["accuracy"] == pytest.approx(cpu.evaluate(x, y)["accuracy"], abs=2e-3)


def test_state_moves_between_devices():
    rng = np.random.default_rng(6)
    m = network((8, 8, 3)).to("cuda")
    o = optim.Adam(m.parameters())
    m.train_step(*data(rng, 16, (8, 8, 3), "ce"), losses.CrossEntropyLoss(), o)
    sd, osd = m.state_dict(), o.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    assert all(isinstance(v, np.ndarray) for s in osd["state"].values() for k, v in s.items() if k != "step")
    m.to("cpu")
    m.train_step(*data(rng, 16, (8, 8, 3), "ce"), losses.CrossEntropyLoss(), o)  # the state comes back
    assert o.state[m[0].weight]["step"] == 2
    m.to("cuda")
    m.train_step(*data(rng, 16, (8, 8, 3), "ce"), losses.CrossEntropyLoss(), o)
    assert o.state[m[0].weight]["step"] == 3
    m2 = network((8, 8, 3), seed=9).to("cuda")
    m2.load_state_dict(m.state_dict())
    for p, q in zip(m.parameters(), m2.parameters()):
        np.testing.assert_array_equal(p.data.numpy(), q.data.numpy())


def test_gpu_models_refuse_what_only_the_cpu_does():
    m = network((4, 4, 2)).to("cuda")
    with pytest.raises(NotImplementedError, match="CPU only"):
        m.backward(np.ones((1, 2), np.float32))
    with pytest.raises(NotImplementedError, match="CPU only"):
        optim.SGD(m.parameters(), lr=0.1).step()
    with pytest.raises(NotImplementedError, match="l1"):
        m.fit(np.ones((4, 4), np.float32), np.zeros(4, np.int64), l1=0.1, verbose=0)
    with pytest.raises(TypeError, match="float32 only"):
        nn.Linear(2, 2, dtype=np.float64).to("cuda")
    with pytest.raises(TypeError, match="DeviceArray"):
        m[0].weight.data = np.zeros((4, 4), np.float32)


def test_dlpack_round_trips_with_torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    a = cuda.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    t = torch.from_dlpack(a)
    assert t.is_cuda and t.data_ptr() == a.data_ptr
    t.mul_(2)
    np.testing.assert_array_equal(a.numpy(), np.arange(6).reshape(2, 3) * 2)
    u = torch.arange(8, device="cuda", dtype=torch.float32).reshape(4, 2)
    b = cuda.asarray(u)
    assert b.data_ptr == u.data_ptr()
    np.testing.assert_array_equal(b.numpy(), u.cpu().numpy())
    labels = cuda.asarray(torch.tensor([0, 1, 1, 0], device="cuda"))
    m = network((2, 4, 2)).to("cuda")
    m.train_step(u, labels, losses.CrossEntropyLoss(), optim.SGD(m.parameters(), lr=0.1))
    out = torch.from_dlpack(m(u))
    assert out.shape == (4, 2) and out.is_cuda
    with pytest.raises(ValueError, match="C-contiguous"):
        cuda.asarray(torch.zeros(4, 4, device="cuda").t())


def test_gather_rows_picks_rows_on_the_device():
    src = np.arange(20, dtype=np.float32).reshape(5, 4)
    d = cuda.asarray(src)
    idx = np.array([4, 0, 0, 2], np.int64)
    np.testing.assert_array_equal(_C.cuda_gather_rows(d, idx).numpy(), src[idx])
    with pytest.raises(ValueError, match=r"index\[0\] is 5"):
        _C.cuda_gather_rows(d, np.array([5], np.int64))
    labels = cuda.asarray(np.arange(5, dtype=np.int64))
    xb, yb = _C.cuda_gather_rows((d, labels), idx)
    np.testing.assert_array_equal(xb.numpy(), src[idx])
    np.testing.assert_array_equal(yb.numpy(), idx)
