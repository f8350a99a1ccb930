"""Builders and checks the test files share: small networks, seeded data and targets, identical model
pairs, before/after snapshots, array layouts, and an all-pairs covering for parameters that are
independent code. Test files import it by name (pytest puts tests/ on sys.path: it is not a package)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import fuseprop
from fuseprop import losses, nn, optim

# ---------------------------------------------------------------------------------------------
# all-pairs covering


def all_pairs(factors):
    """Rows (dicts) in which every pair of values of any two factors appears at least once.

    factors maps a name to its values. Greedy and deterministic: each row starts from the first pair not
    yet covered and fills the other factors with the value that covers the most new pairs (the first such
    value on a tie). A full product of n factors of v values has v^n rows; this has about v^2."""
    names = list(factors)
    values = [list(factors[n]) for n in names]
    if len(names) < 2:  # no pairs: every value once
        return [dict(zip(names, row)) for row in itertools.product(*values)]
    uncovered = {((i, a), (j, b)) for i, j in itertools.combinations(range(len(names)), 2)
                 for a in range(len(values[i])) for b in range(len(values[j]))}
    rows = []
    while uncovered:
        (i, a), (j, b) = min(uncovered)
        row = {i: a, j: b}
        for f in range(len(names)):
            if f in row:
                continue
            row[f] = max(range(len(values[f])),
                         key=lambda v: (sum(((g, row[g]), (f, v)) in uncovered if g < f else ((f, v), (g, row[g])) in uncovered
                                            for g in row), -v))
        uncovered -= {((f, row[f]), (g, row[g])) for f, g in itertools.combinations(range(len(names)), 2)}
        rows.append({names[f]: values[f][row[f]] for f in range(len(names))})
    return rows


# ---------------------------------------------------------------------------------------------
# networks (fuseprop.manual_seed before a call makes its weights repeatable)


def relu_mlp(*sizes, dtype=np.float32):
    """Linear layers of the given sizes with a ReLU between each two: relu_mlp(784, 16, 16, 10)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b, dtype=dtype)] + ([nn.ReLU()] if i + 2 < len(sizes) else [])
    return nn.Sequential(*layers)


def mlp_784_16_16_10(dtype=np.float32):
    return relu_mlp(784, 16, 16, 10, dtype=dtype)


def every_activation(dtype=np.float32, features=12):
    """features -> 5 through every activation module, one Linear without bias."""
    d = dict(dtype=dtype)
    return nn.Sequential(
        nn.Linear(features, 16, **d), nn.ReLU(), nn.Linear(16, 16, **d), nn.LeakyReLU(0.2), nn.Linear(16, 16, **d),
        nn.Sigmoid(), nn.Linear(16, 16, **d), nn.Tanh(), nn.Linear(16, 16, **d), nn.GELU(),
        nn.Linear(16, 16, **d), nn.GELU(approximate="tanh"), nn.Linear(16, 16, bias=False, **d), nn.Identity(),
        nn.Linear(16, 5, **d))


def every_layer(dtype=np.float32, features=6, seed=0):
    """features -> 4 through every layer type fuseprop has (a nested Sequential, Dropout, Softmax and
    LogSoftmax too): the model the PyTorch and ONNX bridges are checked on."""
    fuseprop.manual_seed(seed)
    d = dict(dtype=dtype)
    return nn.Sequential(
        nn.Linear(features, 8, **d), nn.ReLU(), nn.Dropout(0.25),
        nn.Sequential(nn.Linear(8, 8, **d), nn.LeakyReLU(0.2), nn.Linear(8, 8, bias=False, **d), nn.Sigmoid()),
        nn.Linear(8, 8, **d), nn.Tanh(), nn.Linear(8, 8, **d), nn.GELU(), nn.Linear(8, 8, **d),
        nn.GELU(approximate="tanh"), nn.Identity(), nn.Linear(8, 8, **d), nn.Softmax(dim=1), nn.Linear(8, 4, **d),
        nn.LogSoftmax(dim=-1))


def no_bias(dtype=np.float32):
    d = dict(dtype=dtype, bias=False)
    return nn.Sequential(nn.Linear(12, 10, **d), nn.Tanh(), nn.Linear(10, 8, **d), nn.LeakyReLU(0.05),
                         nn.Linear(8, 5, **d))


def linear_after_linear(dtype=np.float32):
    # Two Linear layers in a row is still a chain: the first one's activation is the identity.
    d = dict(dtype=dtype)
    return nn.Sequential(nn.Linear(12, 8, **d), nn.Linear(8, 8, bias=False, **d), nn.Sigmoid(), nn.Linear(8, 5, **d))


def unfused(dtype=np.float32, classes=5):
    # Nothing here fuses: an activation first, two Linear layers in a row, two activations in a row.
    d = dict(dtype=dtype)
    return nn.Sequential(nn.Tanh(), nn.Linear(12, 8, **d), nn.Linear(8, 8, bias=False, **d), nn.Sigmoid(),
                         nn.Tanh(), nn.Linear(8, classes, **d))


def pair(make, dtype, seed=0):
    """The same model twice: the first trains fused, the second layer by layer."""
    fuseprop.manual_seed(seed)
    fused = make(dtype)
    fuseprop.manual_seed(seed)
    per_layer = make(dtype)
    per_layer.fused_train_step = False
    return fused, per_layer


# ---------------------------------------------------------------------------------------------
# data


def blobs(n=1200, features=20, classes=3, seed=0):
    """A linearly separable classification problem."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = (x @ rng.normal(size=(features, classes))).argmax(1)
    return x, y


def labels_for(rng, n, classes, dtype):
    return rng.integers(0, classes, size=n)


def values_for(rng, n, classes, dtype):
    return rng.normal(size=(n, classes)).astype(dtype)


def probabilities_for(rng, n, classes, dtype):
    return rng.uniform(size=(n, classes)).astype(dtype)


# ---------------------------------------------------------------------------------------------
# the training-step matrix: networks, losses (with their targets) and optimizers


RTOL = {np.float32: 1e-6, np.float64: 1e-12}  # the fused step against the per-layer path: the same kernels

NETWORKS = {"784-16-16-10": (mlp_784_16_16_10, 784, 10), "every-activation": (every_activation, 12, 5),
            "no-bias": (no_bias, 12, 5), "linear-after-linear": (linear_after_linear, 12, 5)}

LOSSES = {
    "ce": (lambda: losses.CrossEntropyLoss(), labels_for),
    "ce-smoothing": (lambda: losses.CrossEntropyLoss(label_smoothing=0.1), labels_for),
    "ce-sum": (lambda: losses.CrossEntropyLoss(reduction="sum"), labels_for),
    "ce-smoothing-sum": (lambda: losses.CrossEntropyLoss(label_smoothing=0.2, reduction="sum"), labels_for),
    "mse": (lambda: losses.MSELoss(), values_for),
    "mse-sum": (lambda: losses.MSELoss(reduction="sum"), values_for),
    "bce": (lambda: losses.BCEWithLogitsLoss(), probabilities_for),
    "bce-sum": (lambda: losses.BCEWithLogitsLoss(reduction="sum"), probabilities_for),
}


def two_groups(model, **first):
    """Weights in one group (with its own settings), biases in another, listed in reverse order."""
    named = list(model.named_parameters())
    weights = [p for n, p in reversed(named) if n.endswith("weight")]
    biases = [p for n, p in named if n.endswith("bias")]
    return [{"params": weights, **first}] + ([{"params": biases}] if biases else [])


OPTIMIZERS = {
    "sgd": lambda m: optim.SGD(m.parameters(), lr=0.05),
    "sgd-momentum": lambda m: optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
    "sgd-nesterov": lambda m: optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True),
    "sgd-dampening-wd": lambda m: optim.SGD(m.parameters(), lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2),
    "sgd-groups": lambda m: optim.SGD(two_groups(m, lr=0.01, momentum=0.5), lr=0.05, momentum=0.9),
    "adam-l2": lambda m: optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-2),
    "adamw": lambda m: optim.AdamW(m.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1),
    "adam-groups": lambda m: optim.Adam(two_groups(m, lr=3e-3, eps=1e-6), lr=1e-2),
}


# ---------------------------------------------------------------------------------------------
# checks


def assert_same_params(a, b, dtype, what=""):
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=RTOL[dtype], atol=0, err_msg=f"{name} {what}")


def assert_same_state_dict(sa, sb):
    assert sa["param_groups"] == sb["param_groups"]
    assert sorted(sa["state"]) == sorted(sb["state"])
    for i, entry in sa["state"].items():
        assert sorted(entry) == sorted(sb["state"][i])
        for k, v in entry.items():
            np.testing.assert_array_equal(v, sb["state"][i][k], err_msg=f"state {i} {k}")


def assert_same_state(opt_a, opt_b):
    assert_same_state_dict(opt_a.state_dict(), opt_b.state_dict())


def params_snapshot(model):
    return [p.data.copy() for p in model.parameters()]


def assert_params_unchanged(model, snap):
    for p, before in zip(model.parameters(), snap):
        np.testing.assert_array_equal(p.data, before, err_msg=f"{p.name} changed")


def snapshot(model, opt):
    """The parameters and the optimizer state, copied: for assert_unchanged after a refused call."""
    return params_snapshot(model), {id(p): {k: np.copy(v) for k, v in s.items()} for p, s in opt.state.items()}


def assert_unchanged(model, opt, snap):
    params, state = snap
    assert_params_unchanged(model, params)
    assert {id(p) for p, s in opt.state.items() if s} == {i for i, s in state.items() if s}
    for p, s in opt.state.items():
        for k, v in s.items():
            np.testing.assert_array_equal(v, state[id(p)][k], err_msg=f"state {k} of {p.name} changed")


# ---------------------------------------------------------------------------------------------
# arrays of the same values in layouts native code does not take as they are


def unaligned(arr):
    """A writeable copy of arr whose data starts one byte past an aligned address."""
    buf = bytearray(arr.nbytes + 1)
    out = np.frombuffer(buf, dtype=np.uint8, offset=1).view(arr.dtype).reshape(arr.shape)
    out[...] = arr
    assert not out.flags.aligned and out.flags.c_contiguous and out.flags.writeable
    return out


def strided(arr):
    """Same shape and values as arr, every other element of a wider buffer (x[..., ::2])."""
    out = np.repeat(arr, 2, axis=-1)[..., ::2]
    assert not out.flags.c_contiguous
    return out


def transposed(arr):
    """Same shape and values as the 2-D arr, but a transposed (Fortran-ordered) view."""
    out = np.ascontiguousarray(arr.T).T
    assert not out.flags.c_contiguous
    return out


def negative_stride(arr):
    """Same shape and values as arr, viewed through a negative first stride."""
    out = np.flip(np.flip(arr, 0).copy(), 0)
    assert out.strides[0] < 0
    return out


def randn(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def small_mlp(dtype=np.float32):
    """3 -> 4 -> 2 with a ReLU, seeded: the model the bad-input tests refuse things to."""
    fuseprop.manual_seed(0)
    return relu_mlp(3, 4, 2, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# bad arrays: every float array argument of an op in every wrong form (test_bad_input_{ops,conv,norm}.py)

# form -> (transform, exception, message after "<name> ", applies to the dtype-defining argument, needs 2-D)
BAD_FORMS = {
    "list": (lambda a: a.tolist(), TypeError, r"must be a numpy\.ndarray, got list", True, False),
    "int64": (lambda a: a.astype(np.int64), TypeError,
              r"must have dtype float32 or float64 \(native byte order\), got int64", True, False),
    "float16": (lambda a: a.astype(np.float16), TypeError, r"must .*float32.*got float16", True, False),
    "complex64": (lambda a: a.astype(np.complex64), TypeError, r"must .*float32.*got complex64", True, False),
    "object": (lambda a: a.astype(object), TypeError, r"must .*float32.*got object", True, False),
    "big_endian_f4": (lambda a: a.astype(">f4"), TypeError, r"must .*float32.*got >f4", True, False),
    "mixed_float64": (lambda a: a.astype(np.float64), TypeError,
                      r"must have the same dtype as \w+ \(float32\), got float64", False, False),
    "strided": (strided, ValueError, r"must be C-contiguous \(row-major, unit stride\)", True, False),
    "transposed": (transposed, ValueError, r"must be C-contiguous", True, True),
    "negative_stride": (negative_stride, ValueError, r"must be C-contiguous", True, False),
    "unaligned": (unaligned, ValueError, r"must be aligned to its dtype; got an unaligned buffer", True, False),
}


def bad_form_cases(ops, call, forms=tuple(BAD_FORMS)):
    """pytest params (op, name, form): each float array argument of each op (the dtype-defining one, the
    first, only in the forms that apply to it), in each of forms. call(op) -> (fn, good arguments)."""
    for op in ops:
        _, good = call(op)
        names = [k for k, v in good.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"]
        for i, name in enumerate(names):
            for form in forms:
                first_ok, needs_2d = BAD_FORMS[form][3:]
                if (i == 0 and not first_ok) or (needs_2d and good[name].ndim != 2):
                    continue
                yield pytest.param(op, name, form, id=f"{op}-{name}-{form}")


def array_snapshot(args):
    """Copies of the arrays among a call's arguments, for assert_arrays_unchanged after a refused call."""
    return {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray)}


def assert_arrays_unchanged(args, snap):
    for k, before in snap.items():
        np.testing.assert_array_equal(args[k], before, err_msg=f"{k} was modified by a call that raised")


def assert_refused_writing_nothing(fn, args, exc, message):
    """fn(**args) raises exc matching message, and no array in args changed."""
    snap = array_snapshot(args)
    with pytest.raises(exc, match=message):
        fn(**args)
    assert_arrays_unchanged(args, snap)


def check_bad_form(call, op, name, form):
    """The op refuses its argument name in the bad form, with the form's message, and writes nothing."""
    transform, exc, message = BAD_FORMS[form][:3]
    fn, args = call(op)
    args[name] = transform(args[name])
    assert_refused_writing_nothing(fn, args, exc, rf"^{name} {message}")


# ---------------------------------------------------------------------------------------------
# training side by side with PyTorch


def assert_trains_as_torch(model, twin, opt, topt, batches):
    """model.train_step(x, y, CrossEntropyLoss(), opt) and the same step of its torch twin (topt) on each (x, y) of
    batches: the same loss at each step (1e-10) and the same state dict after the last."""
    import torch
    lf = losses.CrossEntropyLoss()
    for x, y in batches:
        loss = model.train_step(x, y, lf, opt)
        topt.zero_grad()
        tl = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
        tl.backward()
        topt.step()
        assert loss == pytest.approx(tl.item(), rel=1e-10)
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
