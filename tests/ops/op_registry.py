"""The op registry: every native op, its float64 reference, and its runner on each device.

An entry draws float64 inputs (make), says how to call the op through the functional API (run: the
same call runs fuseprop.functional on the CPU and fuseprop.reference), and, where the op has a CUDA
twin, how to call that (cuda: a _C.cuda_* entry, host arrays in and out). A new device twin of an op is
tested by adding its runner here; tests/ops/test_ops.py runs every entry on every device it has.

Tolerances are fuseprop.testing's: float64 ~1e-10; float32 rtol 1e-5 with atol 1e-6 sqrt(K) for a
reduction of length K (k gives K for each output, or one K for all); a TF32 product gets the bound of
tf32_atol instead. The worst errors seen are kept in WORST for the run's closing summary (conftest.py).
"""
from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

import fuseprop
from fuseprop import _C, cuda, functional, reference, testing

WORST: dict[str, dict] = {}


# ---------------------------------------------------------------------------------------------
# devices: the CPU at each instruction set this machine has, and the CUDA twins (FP32 and TF32 GEMMs)


@dataclass(frozen=True)
class Device:
    name: str
    kind: str  # "cpu" or "cuda"
    dtype: type
    level: str = ""  # the CPU's instruction set
    tf32: bool = False  # the CUDA GEMMs round their inputs to TF32


# float32 runs on every instruction set this machine has; float64 always uses the portable kernels.
LEVELS = list(_C.cpu_levels_available())
CPU_DEVICES = [Device(f"float32-{lv}", "cpu", np.float32, level=lv) for lv in LEVELS] + [
    Device("float64-generic", "cpu", np.float64, level="generic")]
CUDA_DEVICES = [Device("float32-cuda", "cuda", np.float32), Device("float32-cuda-tf32", "cuda", np.float32, tf32=True)]
DEVICES = CPU_DEVICES + CUDA_DEVICES


def tf32_atol(a, b, K):
    """TF32 keeps 10 of float32's 23 mantissa bits: each input is rounded to nearest with unit roundoff
    u = 2^-11, so each product a_ik b_kj carries a relative error of at most 2u = 2^-10 (about 1e-3),
    and the float accumulation of K terms adds at most about K 2^-23 more. The sum of the errors is then
    bounded by (2^-10 + K 2^-23) sum_k |a_ik b_kj|; the tolerance is that bound at its largest element."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    bound = np.abs(a) @ np.abs(b) if a.size and b.size else np.zeros(1)
    return (2.0**-10 + K * 2.0**-23) * float(np.max(bound, initial=0.0))


# ---------------------------------------------------------------------------------------------
# the registry


@dataclass
class Op:
    name: str
    make: Callable  # (rng, shape) -> args: float64 arrays, int arrays, python values
    run: Callable  # (module, *args) -> outputs; module is fuseprop.functional or fuseprop.reference
    shapes: list  # the shapes every CPU level runs
    k: Callable = field(default=lambda shape: 1)  # reduction length behind each output: one int, or one per output
    covers: str = ""  # the fuseprop.functional function it checks
    cuda: Callable | None = None  # (tf32, *args) -> outputs of the _C.cuda_* twin: run's, or a prefix of them
    cuda_shapes: list | None = None  # the shapes the CUDA twin runs (its kernels have other edges)
    cuda_k: Callable | None = None  # the twin's reduction lengths, where they are not k's
    tf32: Callable | None = None  # (args, shape) -> atol per output when the twin's GEMMs use TF32

    def runs_on(self, device):
        if device.kind == "cpu":
            return True
        return self.cuda is not None and (self.tf32 is not None or not device.tf32)

    def shapes_on(self, device):
        return self.shapes if device.kind == "cpu" else self.cuda_shapes


def outputs(result):
    return result if isinstance(result, tuple) else (result,)


def normal(rng, *shape, scale=1.0):
    return rng.normal(scale=scale, size=shape)


ELEMENTWISE_SHAPES = [(1, 1), (7, 13), (0, 5), (2, 3, 5), (64, 257)]
CUDA_ELEMENTWISE_SHAPES = [(1,), (0,), (7, 13), (3, 1000), (100003,)]
ROW_SHAPES = [(1, 1), (7, 13), (0, 5), (4, 1000), (33, 10)]
LINEAR_SHAPES = [(1, 1, 1), (7, 13, 5), (32, 784, 16), (0, 5, 3), (5, 3, 1), (130, 300, 97), (2, 40, 3100)]
CUDA_LINEAR_SHAPES = [(1, 1, 1), (0, 5, 3), (7, 13, 5), (33, 130, 17), (130, 64, 129)]  # (B, IN, OUT)
MATMUL_SHAPES = [(1, 1, 1), (7, 13, 5), (32, 16, 784), (16, 784, 32), (0, 5, 3), (5, 0, 3), (4, 6, 0),
                 (97, 65, 300), (130, 40, 520), (3, 3100, 5)]  # 3100 > every level's nc
CUDA_MATMUL_SHAPES = [(1, 1, 1), (1, 7, 3), (17, 33, 9), (130, 129, 31), (128, 128, 128), (255, 17, 300),
                      (0, 5, 4), (5, 0, 4), (5, 4, 0)]  # (M, N, K)
CROSS_ENTROPY_SHAPES = [(1, 1), (7, 13), (32, 10), (200, 3)]
CUDA_CROSS_ENTROPY_SHAPES = [(1, 1), (1, 10), (7, 3), (33, 100), (64, 1000)]
OPTIM_SHAPES = [(1,), (7, 13), (300,)]
CUDA_OPTIM_SHAPES = [(1,), (0,), (7, 13), (100003,)]
ACTS = [("identity", 0.01), ("relu", 0.01), ("leaky_relu", 0.01), ("leaky_relu", 0.3), ("sigmoid", 0.01),
        ("tanh", 0.01), ("gelu", 0.01), ("gelu_tanh", 0.01)]


def matmul_case(trans_a, trans_b, with_c, module_name="functional"):
    def make(rng, shape):
        m, n, k = shape
        # scaled so outputs are O(1): the sqrt(K) in the tolerance is for the rounding of the sum
        a = normal(rng, *((k, m) if trans_a else (m, k)), scale=max(k, 1) ** -0.5)
        b = normal(rng, *((n, k) if trans_b else (k, n)))
        return (a, b, normal(rng, m, n) if with_c else None)

    def run(mod, a, b, c):
        mm = _C.matmul_reference if (module_name == "C_reference" and mod is functional) else mod.matmul
        if c is None:
            return mm(a, b, trans_a, trans_b)
        mm(a, b, trans_a, trans_b, c, 1.5, -0.5)
        return c

    def tf32(args, shape):
        a, b, _ = args
        return (tf32_atol(a.T if trans_a else a, b.T if trans_b else b, shape[2]),)

    twin = module_name == "functional" and not with_c  # the CUDA GEMM entry has no c
    tag = f"{'T' if trans_a else 'N'}{'T' if trans_b else 'N'}{'+c' if with_c else ''}"
    return Op(f"matmul_{module_name}_{tag}", make, run, MATMUL_SHAPES, k=lambda s: s[2],
              covers="matmul" if module_name == "functional" else "_C.matmul_reference",
              cuda=(lambda tf, a, b, c: _C.cuda_matmul(a, b, trans_a, trans_b, tf)) if twin else None,
              cuda_shapes=CUDA_MATMUL_SHAPES, tf32=tf32 if twin else None)


def activation_case(act, slope):
    return [
        Op(f"activation_forward_{act}_{slope}", lambda rng, s: (normal(rng, *s, scale=2.0),),
           lambda mod, x: mod.activation_forward(x, act, slope), ELEMENTWISE_SHAPES, covers="activation_forward",
           cuda=lambda tf, x: _C.cuda_activation_forward(x, act, slope), cuda_shapes=CUDA_ELEMENTWISE_SHAPES),
        Op(f"activation_backward_{act}_{slope}",
           lambda rng, s: (normal(rng, *s), normal(rng, *s, scale=2.0), rng.uniform(-0.99, 0.99, size=s)),
           lambda mod, dy, x, y: mod.activation_backward(dy, x, y, act, slope), ELEMENTWISE_SHAPES,
           covers="activation_backward",
           cuda=lambda tf, dy, x, y: _C.cuda_activation_backward(dy, x, y, act, slope),
           cuda_shapes=CUDA_ELEMENTWISE_SHAPES),
    ]


def linear_cases(act, slope, bias):
    def make_fwd(rng, s):
        b, i, o = s
        return normal(rng, b, i), normal(rng, o, i, scale=i ** -0.5), normal(rng, o) if bias else None

    def make_bwd(rng, s):
        b, i, o = s
        x, w, bb = make_fwd(rng, s)
        y, z = reference.linear_forward(x, w, bb, act, slope)
        # grad_y scaled so grad_weight = dz^T x (a sum over the batch) is O(1), as the sqrt(K) tolerance assumes
        return normal(rng, b, o, scale=max(b, 1) ** -0.5), x, w, z, y, normal(rng, o, i), normal(rng, o) if bias else None

    def run_bwd(mod, dy, x, w, z, y, dw, db):
        fresh = mod.linear_backward(dy, x, w, z, y, act, slope, has_bias=bias)
        mod.linear_backward(dy, x, w, z, y, act, slope, has_bias=bias, grad_weight=dw, grad_bias=db)
        return fresh + (dw, db)  # new gradients, then the accumulated ones

    def tf32_fwd(args, s):
        # z's error is the GEMM's (the bias add is exact enough); |act'| <= 1.13 (gelu), so y's is at most 1.2 times z's.
        x, w, _ = args
        atol = tf32_atol(x, w.T, s[1]) + 1e-6
        return 1.2 * atol, atol  # (y, z)

    tag = f"{act}_{slope}_{'bias' if bias else 'nobias'}"
    return [
        Op(f"linear_forward_{tag}", make_fwd, lambda mod, x, w, b: mod.linear_forward(x, w, b, act, slope),
           LINEAR_SHAPES, k=lambda s: s[1], covers="linear_forward",
           cuda=lambda tf, x, w, b: _C.cuda_linear_forward(x, w, b, act, slope, tf), cuda_shapes=CUDA_LINEAR_SHAPES,
           tf32=tf32_fwd),
        Op(f"linear_backward_{tag}", make_bwd, run_bwd, LINEAR_SHAPES, k=lambda s: max(s), covers="linear_backward",
           cuda_k=lambda s: (s[2], s[0], s[0]),  # grad_x sums over OUT, grad_weight and grad_bias over the batch
           cuda=lambda tf, dy, x, w, z, y, dw, db: _C.cuda_linear_backward(dy, x, w, z, y, act, slope, bias),
           cuda_shapes=CUDA_LINEAR_SHAPES),  # the CUDA twin has no accumulating form: the fresh gradients only
    ]


# (N, C, H, W, O, kh, kw, sh, sw, ph, pw, dh, dw): odd sizes, stride 2, padding, dilation 2, non-square kernels,
# 1x1, the smallest, an empty batch, and a batch of more than one chunk (16 samples) with a short last chunk
CONV_SHAPES = [(2, 3, 7, 9, 4, 3, 3, 1, 1, 1, 1, 1, 1), (3, 2, 9, 8, 5, 3, 2, 2, 2, 1, 0, 1, 1),
               (2, 3, 11, 10, 4, 3, 3, 1, 2, 2, 1, 2, 2), (4, 5, 6, 6, 7, 1, 1, 1, 1, 0, 0, 1, 1),
               (1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1), (0, 3, 5, 5, 4, 3, 3, 1, 1, 1, 1, 1, 1),
               (19, 4, 8, 7, 6, 2, 3, 1, 1, 1, 1, 1, 1), (2, 2, 3, 4, 3, 5, 5, 1, 1, 2, 2, 1, 1)]
# The CUDA twin's too: one with more than one 128x128 GEMM tile each way (O = 130), and one whose patch
# matrix passes 2^23 elements, so each sample is its own chunk (cuda/ops/conv2d_cuda.h).
CUDA_CONV_SHAPES = CONV_SHAPES + [(3, 8, 20, 20, 130, 3, 3, 1, 1, 1, 1, 1, 1), (2, 4, 300, 300, 3, 5, 5, 1, 1, 2, 2, 1, 1)]
CONV_ACTS = [(act, slope, True) for act, slope in ACTS] + [("identity", 0.01, False), ("relu", 0.01, False),
                                                          ("gelu", 0.01, False)]


def conv_geometry(s):
    n, c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw = s
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw)), (n, o, ho, wo)


def conv_cases(act, slope, bias, module_name="functional"):
    def make_fwd(rng, s):
        n, c, h, w, o, kh, kw = s[:7]
        return (normal(rng, n, c, h, w), normal(rng, o, c, kh, kw, scale=(c * kh * kw) ** -0.5),
                normal(rng, o) if bias else None)

    def make_bwd(rng, s):
        x, w, b = make_fwd(rng, s)
        window, out = conv_geometry(s)
        y, z = reference.conv2d_forward(x, w, b, activation=act, negative_slope=slope, **window)
        # grad_y scaled so grad_weight (a sum over N*Ho*Wo) is O(1), as the sqrt(K) tolerance assumes
        return (normal(rng, *out, scale=max(out[0] * out[2] * out[3], 1) ** -0.5), x, w, z, y,
                normal(rng, *w.shape), normal(rng, s[4]) if bias else None)

    def fn(mod, name):
        if mod is functional and module_name == "C_reference":
            return getattr(_C, f"{name}_reference")
        return getattr(mod, name)

    def run_fwd(mod, x, w, b, s):
        window, _ = conv_geometry(s)
        return fn(mod, "conv2d_forward")(x, w, b, activation=act, negative_slope=slope, **window)

    def run_bwd(mod, dy, x, w, z, y, dw, db, s):
        window, _ = conv_geometry(s)
        backward = fn(mod, "conv2d_backward")
        fresh = backward(dy, x, w, z, y, activation=act, negative_slope=slope, has_bias=bias, **window)
        backward(dy, x, w, z, y, activation=act, negative_slope=slope, has_bias=bias, grad_weight=dw, grad_bias=db,
                 **window)
        return fresh + (dw, db)  # new gradients, then the accumulated ones

    def cuda_fwd(tf, x, w, b, s):
        return _C.cuda_conv2d_forward(x, w, b, activation=act, negative_slope=slope, tf32=tf, **conv_geometry(s)[0])

    def cuda_bwd(tf, dy, x, w, z, y, dw, db, s):
        window, _ = conv_geometry(s)
        fresh = _C.cuda_conv2d_backward(dy, x, w, z, y, activation=act, negative_slope=slope, has_bias=bias, tf32=tf,
                                        **window)
        _C.cuda_conv2d_backward(dy, x, w, z, y, activation=act, negative_slope=slope, has_bias=bias, grad_weight=dw,
                                grad_bias=db, tf32=tf, **window)
        return fresh + (dw, db)

    def tf32_fwd(args, s):
        # the bound of tf32_atol with |x| convolved with |w| as |a| @ |b| (the GEMM's operands are w and im2col(x))
        x, w, _, _ = args
        window, _ = conv_geometry(s)
        bound = reference.conv2d_forward(np.abs(x), np.abs(w), None, **window)[1]
        atol = (2.0**-10 + s[1] * s[5] * s[6] * 2.0**-23) * float(np.max(bound, initial=0.0)) + 1e-6
        return 1.2 * atol, atol  # (y, z), as linear's

    def k_bwd(s):
        n, c, h, w, o, kh, kw = s[:7]
        _, (_, _, ho, wo) = conv_geometry(s)
        per_position = n * ho * wo
        return (o * kh * kw, per_position, per_position, per_position, per_position)  # grad_x sums over O*kh*kw

    tag = f"{act}_{slope}_{'bias' if bias else 'nobias'}" + ("" if module_name == "functional" else f"_{module_name}")
    covers = "conv2d_{}" if module_name == "functional" else "_C.conv2d_{}_reference"
    twin = module_name == "functional"
    return [
        Op(f"conv2d_forward_{tag}", lambda rng, s: make_fwd(rng, s) + (s,), run_fwd, CONV_SHAPES,
           k=lambda s: s[1] * s[5] * s[6], covers=covers.format("forward"), cuda=cuda_fwd if twin else None,
           cuda_shapes=CUDA_CONV_SHAPES, tf32=tf32_fwd if twin else None),
        Op(f"conv2d_backward_{tag}", lambda rng, s: make_bwd(rng, s) + (s,), run_bwd, CONV_SHAPES, k=k_bwd,
           covers=covers.format("backward"), cuda=cuda_bwd if twin else None, cuda_shapes=CUDA_CONV_SHAPES),
    ]


# (N, C, H, W, kh, kw, sh, sw, ph, pw); sh = 0: stride None (the kernel's)
POOL_SHAPES = [(2, 3, 7, 9, 2, 2, 0, 0, 0, 0), (2, 3, 8, 7, 3, 2, 2, 1, 1, 1), (1, 2, 5, 5, 3, 3, 1, 1, 1, 1),
               (0, 3, 4, 4, 2, 2, 2, 2, 0, 0), (3, 2, 6, 5, 5, 4, 2, 3, 2, 2), (2, 1, 1, 1, 1, 1, 1, 1, 0, 0)]
# the CUDA twins' too: more outputs than one block of threads, overlapping windows, more planes than a block
CUDA_POOL_SHAPES = POOL_SHAPES + [(4, 3, 33, 29, 3, 3, 2, 2, 1, 1), (3, 100, 6, 6, 2, 2, 0, 0, 0, 0)]


def pool_args(s):
    kh, kw, sh, sw, ph, pw = s[4:]
    return (kh, kw), None if sh == 0 else (sh, sw), (ph, pw)


def pool_cases():
    def make_max_bwd(rng, s):
        y, indices = reference.max_pool2d_forward(normal(rng, *s[:4]), *pool_args(s))
        return normal(rng, *y.shape), indices, s

    def make_avg_bwd(rng, s):
        y = reference.avg_pool2d_forward(normal(rng, *s[:4]), *pool_args(s))
        return normal(rng, *y.shape), s

    def overlap(s):  # how many windows may cover one input position: the backward's reduction length
        kh, kw, sh, sw = s[4:8]
        return -(-kh // (sh or kh)) * -(-kw // (sw or kw))

    cases = [
        Op("max_pool2d_forward", lambda rng, s: (normal(rng, *s[:4]), s),
           lambda mod, x, s: mod.max_pool2d_forward(x, *pool_args(s)), POOL_SHAPES, covers="max_pool2d_forward",
           cuda=lambda tf, x, s: _C.cuda_max_pool2d_forward(x, *pool_args(s)), cuda_shapes=CUDA_POOL_SHAPES),
        Op("max_pool2d_backward", make_max_bwd, lambda mod, dy, i, s: mod.max_pool2d_backward(dy, i, s[2:4]),
           POOL_SHAPES, k=overlap, covers="max_pool2d_backward",
           cuda=lambda tf, dy, i, s: _C.cuda_max_pool2d_backward(dy, i, s[2:4]), cuda_shapes=CUDA_POOL_SHAPES),
    ]
    for cip in (True, False):
        cases += [
            Op(f"avg_pool2d_forward_{cip}", lambda rng, s: (normal(rng, *s[:4]), s),
               lambda mod, x, s, cip=cip: mod.avg_pool2d_forward(x, *pool_args(s), count_include_pad=cip), POOL_SHAPES,
               k=lambda s: s[4] * s[5], covers="avg_pool2d_forward",
               cuda=lambda tf, x, s, cip=cip: _C.cuda_avg_pool2d_forward(x, *pool_args(s), count_include_pad=cip),
               cuda_shapes=CUDA_POOL_SHAPES),
            Op(f"avg_pool2d_backward_{cip}", make_avg_bwd,
               lambda mod, dy, s, cip=cip: mod.avg_pool2d_backward(dy, s[2:4], *pool_args(s), count_include_pad=cip),
               POOL_SHAPES, k=overlap, covers="avg_pool2d_backward",
               cuda=lambda tf, dy, s, cip=cip: _C.cuda_avg_pool2d_backward(dy, s[2:4], *pool_args(s),
                                                                           count_include_pad=cip),
               cuda_shapes=CUDA_POOL_SHAPES),
        ]
    return cases


def loss_cases():
    cases = []
    for smoothing, reduction in itertools.product([0.0, 0.1], ["mean", "sum"]):
        cases.append(Op(
            f"cross_entropy_{smoothing}_{reduction}",
            lambda rng, s: (normal(rng, *s, scale=3.0), rng.integers(0, s[1], size=s[0])),
            lambda mod, lg, lb, sm=smoothing, r=reduction: mod.cross_entropy_loss(lg, lb, sm, r),
            CROSS_ENTROPY_SHAPES, k=lambda s: (s[0] * s[1], s[1]), covers="cross_entropy_loss",
            cuda=lambda tf, lg, lb, sm=smoothing, r=reduction: _C.cuda_cross_entropy_loss(lg, lb, sm, r),
            cuda_shapes=CUDA_CROSS_ENTROPY_SHAPES))
    for reduction in ["mean", "sum"]:
        cases.append(Op(f"mse_{reduction}", lambda rng, s: (normal(rng, *s), normal(rng, *s)),
                        # functional.mse_loss is torch's (the loss alone): the op is mse_loss_with_grad there
                        lambda mod, p, t, r=reduction: (mod.mse_loss_with_grad if mod is functional else mod.mse_loss)(
                            p, t, r), [(1, 1), (7, 13), (3, 4, 5)],
                        k=lambda s: int(np.prod(s)), covers="mse_loss_with_grad"))
        cases.append(Op(f"bce_with_logits_{reduction}",
                        lambda rng, s: (normal(rng, *s, scale=4.0), rng.uniform(0, 1, size=s)),
                        lambda mod, p, t, r=reduction: mod.bce_with_logits_loss(p, t, r), [(1, 1), (7, 13), (3, 4, 5)],
                        k=lambda s: int(np.prod(s)), covers="bce_with_logits_loss"))
    for smoothing in [0.0, 0.1]:  # an empty batch is defined for "sum" only
        cases.append(Op(f"cross_entropy_empty_{smoothing}_sum",
                        lambda rng, s: (normal(rng, *s), np.zeros(0, np.int64)),
                        lambda mod, lg, lb, sm=smoothing: mod.cross_entropy_loss(lg, lb, sm, "sum"), [(0, 4)],
                        covers="cross_entropy_loss",
                        cuda=lambda tf, lg, lb, sm=smoothing: _C.cuda_cross_entropy_loss(lg, lb, sm, "sum"),
                        cuda_shapes=[(0, 5)]))
    return cases


SGD_CONFIGS = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, nesterov=True),
               dict(lr=0.05, momentum=0.5, dampening=0.3, weight_decay=0.01),
               dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), dict(lr=0.1, weight_decay=0.1)]
ADAM_CONFIGS = [dict(), dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
                dict(lr=0.003, beta1=0.5, beta2=0.9, eps=1e-6)]


def optimizer_cases():
    # Several steps: the state's first and later updates.
    cases = []
    for i, cfg in enumerate(SGD_CONFIGS):
        def run(mod, p, grads, buf, cfg=cfg):
            for step, g in enumerate(grads, start=1):
                mod.sgd_step(p, g, buf, step=step, **cfg)
            return p, buf

        def run_cuda(tf, p, grads, buf, cfg=cfg):
            for step, g in enumerate(grads, start=1):
                _C.cuda_sgd_step(p, g, buf, step=step, **cfg)
            return p, buf
        cases.append(Op(f"sgd_step_{i}", lambda rng, s: (normal(rng, *s), [normal(rng, *s) for _ in range(4)],
                                                         np.zeros(s)), run, OPTIM_SHAPES,
                        covers="sgd_step", cuda=run_cuda, cuda_shapes=CUDA_OPTIM_SHAPES))
    for i, cfg in enumerate(ADAM_CONFIGS):
        def run(mod, p, grads, m, v, cfg=cfg):
            for step, g in enumerate(grads, start=1):
                mod.adam_step(p, g, m, v, step=step, **cfg)
            return p, m, v

        def run_cuda(tf, p, grads, m, v, cfg=cfg):
            for step, g in enumerate(grads, start=1):
                _C.cuda_adam_step(p, g, m, v, step=step, **cfg)
            return p, m, v
        cases.append(Op(f"adam_step_{i}", lambda rng, s: (normal(rng, *s), [normal(rng, *s) for _ in range(4)],
                                                          np.zeros(s), np.zeros(s)), run, OPTIM_SHAPES,
                        covers="adam_step", cuda=run_cuda, cuda_shapes=CUDA_OPTIM_SHAPES))
    return cases


# normalisation. Batch norm: x (N, C, *spatial), statistics per channel over n = N * prod(spatial) values;
# layer norm: x (*lead, *normalized), statistics per leading index over D = prod(normalized) values.
# Every output reduces over n (batch norm) or D (forward and grad_x of layer norm); layer norm's parameter
# gradients sum over M = prod(lead) rows. x is offset from 0 so the variance's cancellation is exercised.

BATCH_NORM_SHAPES = [(2, 1), (7, 13), (64, 33), (1, 3, 2), (4, 3, 5, 6), (3, 5, 7), (2, 19, 1, 1), (0, 3), (2, 3, 0)]
LAYER_NORM_SHAPES = {1: [(1, 1), (7, 13), (0, 5), (3, 0), (4, 1000), (2, 3, 5), (33, 10)],
                     2: [(1, 1), (7, 13), (2, 3, 5), (0, 3, 4), (5, 4, 33)]}
# the CUDA twins' too: channels and rows longer than a block of threads, more channels than threads, and
# (layer norm) more rows than one partition of the parameter gradients' sums (cuda/ops/norm_cuda.cu)
CUDA_BATCH_NORM_SHAPES = BATCH_NORM_SHAPES + [(300, 4), (8, 5, 300), (3, 300, 2, 2)]
CUDA_LAYER_NORM_SHAPES = {1: LAYER_NORM_SHAPES[1] + [(300, 700), (600, 3)], 2: LAYER_NORM_SHAPES[2] + [(3, 300, 7, 5)]}


def norm_cases():
    def bn_values(s):
        return max(1, int(np.prod(s)) // s[1])

    def bn_make(rng, s, affine, running):
        c = s[1]
        x = normal(rng, *s, scale=2.0) + 3.0
        w, b = (normal(rng, c), normal(rng, c)) if affine else (None, None)
        rm, rv = (normal(rng, c), rng.uniform(0.5, 2.0, c)) if running else (None, None)
        return x, w, b, rm, rv

    cases = []
    for affine, running, training in itertools.product([True, False], [True, False], [True, False]):
        if not (training or running):
            continue  # evaluation needs the running statistics
        tag = f"{'affine' if affine else 'plain'}_{'running' if running else 'batchonly'}_{'train' if training else 'eval'}"

        def run(mod, x, w, b, rm, rv, training=training):
            # the running statistics, updated in place, are compared after the call
            return mod.batch_norm_forward(x, w, b, rm, rv, training, 0.1, 1e-5) + (rm, rv)

        def run_cuda(tf, x, w, b, rm, rv, training=training):
            return _C.cuda_batch_norm_forward(x, w, b, rm, rv, training, 0.1, 1e-5) + (rm, rv)
        cases.append(Op(f"batch_norm_forward_{tag}", lambda rng, s, a=affine, r=running: bn_make(rng, s, a, r), run,
                        BATCH_NORM_SHAPES, k=bn_values, covers="batch_norm_forward", cuda=run_cuda,
                        cuda_shapes=CUDA_BATCH_NORM_SHAPES))
    for affine, training in itertools.product([True, False], [True, False]):
        def make_bwd(rng, s, affine=affine, training=training):
            x, w, _, rm, rv = bn_make(rng, s, affine, True)
            _, mean, invstd = reference.batch_norm_forward(x, w, None, rm, rv, training)
            # grad_y scaled so the per-channel sums are O(1), as the sqrt(n) tolerance assumes
            dy = normal(rng, *s, scale=bn_values(s) ** -0.5)
            return dy, x, w, mean, invstd, normal(rng, s[1]), normal(rng, s[1])

        def run_bwd(mod, dy, x, w, mean, invstd, dw, db, training=training):
            fresh = mod.batch_norm_backward(dy, x, w, mean, invstd, training)
            # given gradients (even without weight) are accumulated into; grad_x not wanted is None
            return fresh + mod.batch_norm_backward(dy, x, w, mean, invstd, training, need_grad_x=False,
                                                   grad_weight=dw, grad_bias=db)

        def run_bwd_cuda(tf, dy, x, w, mean, invstd, dw, db, training=training):
            fresh = _C.cuda_batch_norm_backward(dy, x, w, mean, invstd, training)
            return fresh + _C.cuda_batch_norm_backward(dy, x, w, mean, invstd, training, need_grad_x=False,
                                                       grad_weight=dw, grad_bias=db)
        cases.append(Op(f"batch_norm_backward_{'affine' if affine else 'plain'}_{'train' if training else 'eval'}",
                        make_bwd, run_bwd, BATCH_NORM_SHAPES, k=bn_values, covers="batch_norm_backward",
                        cuda=run_bwd_cuda, cuda_shapes=CUDA_BATCH_NORM_SHAPES))

    # an activation after the normalisation, in the same pass (Sequential's BatchNorm + activation): relu and a
    # leaky relu of negative slope (whose derivative needs z, recomputed from x, not y), sigmoid (from y), gelu
    for act, slope in (("relu", 0.01), ("leaky_relu", -0.3), ("sigmoid", 0.01), ("gelu_tanh", 0.01)):
        def run_act(mod, x, w, b, rm, rv, act=act, slope=slope):
            return mod.batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5, activation=act, negative_slope=slope)

        def run_act_cuda(tf, x, w, b, rm, rv, act=act, slope=slope):
            return _C.cuda_batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5, activation=act, negative_slope=slope)
        cases.append(Op(f"batch_norm_forward_{act}", lambda rng, s: bn_make(rng, s, True, True), run_act,
                        BATCH_NORM_SHAPES, k=bn_values, covers="batch_norm_forward", cuda=run_act_cuda,
                        cuda_shapes=CUDA_BATCH_NORM_SHAPES))

        def make_act_bwd(rng, s, act=act, slope=slope):
            x, w, b, rm, rv = bn_make(rng, s, True, True)
            y, mean, invstd = reference.batch_norm_forward(x, w, b, rm, rv, True, activation=act, negative_slope=slope)
            dy = normal(rng, *s, scale=bn_values(s) ** -0.5)
            return dy, x, y, w, b, mean, invstd

        def run_act_bwd(mod, dy, x, y, w, b, mean, invstd, act=act, slope=slope):
            return mod.batch_norm_backward(dy, x, w, mean, invstd, True, y=y, bias=b, activation=act,
                                           negative_slope=slope)

        def run_act_bwd_cuda(tf, dy, x, y, w, b, mean, invstd, act=act, slope=slope):
            return _C.cuda_batch_norm_backward(dy, x, w, mean, invstd, True, y=y, bias=b, activation=act,
                                               negative_slope=slope)
        cases.append(Op(f"batch_norm_backward_{act}", make_act_bwd, run_act_bwd, BATCH_NORM_SHAPES, k=bn_values,
                        covers="batch_norm_backward", cuda=run_act_bwd_cuda, cuda_shapes=CUDA_BATCH_NORM_SHAPES))

    for axes, (weight, bias) in itertools.product([1, 2], [(True, True), (False, False), (True, False)]):
        def normalized(x, axes=axes):
            return x.shape[-1] if axes == 1 else x.shape[-axes:]  # an int for one axis, as torch allows

        def ln_make(rng, s, axes=axes, weight=weight, bias=bias):
            ns = s[len(s) - axes:]
            return (normal(rng, *s, scale=2.0) + 3.0, normal(rng, *ns) if weight else None,
                    normal(rng, *ns) if bias else None)

        def lengths(s, axes=axes):  # (D, M)
            return max(1, int(np.prod(s[len(s) - axes:]))), max(1, int(np.prod(s[:len(s) - axes])))

        def make_bwd(rng, s, axes=axes, ln_make=ln_make, lengths=lengths, normalized=normalized):
            x, w, _ = ln_make(rng, s)
            _, mean, rstd = reference.layer_norm_forward(x, normalized(x), w)
            ns = s[len(s) - axes:]
            dy = normal(rng, *s, scale=lengths(s)[1] ** -0.5)
            return dy, x, w, mean, rstd, normal(rng, *ns), normal(rng, *ns)

        def run_bwd(mod, dy, x, w, mean, rstd, dw, db, normalized=normalized):
            fresh = mod.layer_norm_backward(dy, x, normalized(x), w, mean, rstd)
            return fresh + mod.layer_norm_backward(dy, x, normalized(x), w, mean, rstd, need_grad_x=False,
                                                   grad_weight=dw, grad_bias=db)

        def normalized_dims(x, axes=axes):  # the _C entries take a sequence only
            return x.shape[len(x.shape) - axes:]

        def run_fwd_cuda(tf, x, w, b, normalized_dims=normalized_dims):
            return _C.cuda_layer_norm_forward(x, normalized_dims(x), w, b, 1e-5)

        def run_bwd_cuda(tf, dy, x, w, mean, rstd, dw, db, normalized_dims=normalized_dims):
            fresh = _C.cuda_layer_norm_backward(dy, x, normalized_dims(x), w, mean, rstd)
            return fresh + _C.cuda_layer_norm_backward(dy, x, normalized_dims(x), w, mean, rstd, need_grad_x=False,
                                                       grad_weight=dw, grad_bias=db)
        tag = f"{axes}axes_{'weight' if weight else 'noweight'}_{'bias' if bias else 'nobias'}"
        cases += [
            Op(f"layer_norm_forward_{tag}", ln_make,
               lambda mod, x, w, b, normalized=normalized: mod.layer_norm_forward(x, normalized(x), w, b, 1e-5),
               LAYER_NORM_SHAPES[axes], k=lambda s, lengths=lengths: lengths(s)[0], covers="layer_norm_forward",
               cuda=run_fwd_cuda, cuda_shapes=CUDA_LAYER_NORM_SHAPES[axes]),
            Op(f"layer_norm_backward_{tag}", make_bwd, run_bwd, LAYER_NORM_SHAPES[axes],
               k=lambda s, lengths=lengths: (lengths(s)[0],) + (lengths(s)[1],) * 2 + (1,) + (lengths(s)[1],) * 2,
               covers="layer_norm_backward", cuda=run_bwd_cuda, cuda_shapes=CUDA_LAYER_NORM_SHAPES[axes]),
        ]
    return cases


# recurrent layers. (B, T, I, H): odd sizes, H not a multiple of 8, B = 1 and T = 1, a batch of two strips (B > 12,
# the second of one row) and an empty batch. Each step sums over I + H inputs and carries the state on, so the
# forward's outputs reduce over T (I + H); the backward's weight gradients also sum over every row and step.
RECURRENT_SHAPES = [(3, 5, 7, 9), (1, 1, 4, 5), (13, 4, 5, 3), (0, 3, 2, 4)]
# the CUDA twin's too: a batch of more than one 128-row GEMM tile and more rows * units than a block of the cell
# kernels, over 9 steps (three cuts at bptt 3); and gates wider than one GEMM tile (G*H > 128) from more inputs
# than its k-block, over 12 steps (cuda/ops/recurrent_cuda.h)
CUDA_RECURRENT_SHAPES = RECURRENT_SHAPES + [(300, 9, 5, 37), (5, 12, 130, 40)]
RECURRENT_CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]


def recurrent_tf32_atol(cell, nonlinearity, args):
    """The TF32 forward's error, to first order, carried through the steps. Step t's products are within
    tf32_atol's bound: x_t w_ih^T within (2^-10 + I 2^-23) |x_t| |w_ih|^T, and h_{t-1} w_hh^T, whose h_{t-1}
    already carries an error e_h, within (2^-10 + H 2^-23) (|h_{t-1}| + e_h) |w_hh|^T + e_h |w_hh|^T. A cell passes
    a pre-activation's error on times its nonlinearity's largest slope (sigmoid 1/4, tanh and relu 1), and a
    product a b errs by at most |da| |b| + (|a| + |da|) |db|, both at the float64 reference's values. Returns the
    bound at its largest for (y, h_n, c_n), doubled for the second-order terms, plus float32's own atol."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = args
    B, T, I = x.shape
    H = w_hh.shape[1]
    _, _, _, (hs, acts, cs) = reference.recurrent_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, nonlinearity)
    abs_ih, abs_hh = np.abs(w_ih).T, np.abs(w_hh).T
    eh, ec, ey = np.zeros((B, H)), np.zeros((B, H)), 0.0
    for t in range(T):
        e_ih = (2.0**-10 + I * 2.0**-23) * (np.abs(x[:, t]) @ abs_ih)  # (B, G*H), gate blocks as w_ih's rows
        e_hh = (2.0**-10 + H * 2.0**-23) * ((np.abs(hs[t]) + eh) @ abs_hh) + eh @ abs_hh
        e = e_ih + e_hh
        if cell == "rnn":
            eh = e
        elif cell == "lstm":
            i, f, g, o = np.split(acts[t], 4, axis=1)
            ei, ef, eg, eo = e[:, :H] / 4, e[:, H:2 * H] / 4, e[:, 2 * H:3 * H], e[:, 3 * H:] / 4
            ec = ef * np.abs(cs[t]) + (np.abs(f) + ef) * ec + ei * np.abs(g) + (np.abs(i) + ei) * eg  # c = f c + i g
            eh = eo * np.abs(np.tanh(cs[t + 1])) + (np.abs(o) + eo) * ec  # h = o tanh(c)
        else:
            r, z, n, hn = np.split(acts[t], 4, axis=1)
            er, ez = e[:, :H] / 4, e[:, H:2 * H] / 4
            en = e_ih[:, 2 * H:] + er * np.abs(hn) + (np.abs(r) + er) * e_hh[:, 2 * H:]  # n = tanh(a_n + r hn)
            eh = (np.abs(1 - z) + ez) * en + ez * np.abs(hs[t] - n) + (np.abs(z) + ez) * eh  # h = n + z (h - n)
        ey = max(ey, float(np.max(eh, initial=0.0)))
    f32 = 1e-6 * np.sqrt(I + H)
    return 2 * ey + f32, 2 * float(np.max(eh, initial=0.0)) + f32, 2 * float(np.max(ec, initial=0.0)) + f32


def recurrent_cases(cell, nonlinearity):
    g = {"rnn": 1, "lstm": 4, "gru": 3}[cell]

    def make(rng, s, bias, states):
        b, t, i, h = s
        return (normal(rng, b, t, i), normal(rng, b, h) if states else None,
                normal(rng, b, h) if states and cell == "lstm" else None, normal(rng, g * h, i, scale=(i + h) ** -0.5),
                normal(rng, g * h, h, scale=(i + h) ** -0.5), normal(rng, g * h, scale=0.3) if bias else None,
                normal(rng, g * h, scale=0.3) if bias else None)

    def make_bwd(rng, s, bias, states, grad_y):
        b, t, _, h = s
        # grad_y scaled so the weight gradients (sums over B*T rows) are O(1), as the sqrt(K) tolerance assumes
        return make(rng, s, bias, states) + (normal(rng, b, t, h, scale=max(b * t, 1) ** -0.5) if grad_y else None,
                                             normal(rng, b, h, scale=max(b, 1) ** -0.5),
                                             normal(rng, b, h, scale=max(b, 1) ** -0.5) if cell == "lstm" else None)

    def run_fwd(mod, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        y, h_n, c_n, _ = mod.recurrent_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, nonlinearity)
        return y, h_n, c_n  # saved is each module's own record

    def run_bwd(mod, x, h0, c0, w_ih, w_hh, b_ih, b_hh, gy, ghn, gcn, bptt_steps):
        y, _, _, saved = mod.recurrent_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, nonlinearity)
        return mod.recurrent_backward(cell, gy, ghn, gcn, x, h0, c0, w_ih, w_hh, b_hh, y, saved, nonlinearity,
                                      bptt_steps)

    def cuda_fwd(tf, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        y, h_n, c_n, _ = _C.cuda_recurrent_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, nonlinearity, tf32=tf)
        return y, h_n, c_n

    def cuda_bwd(tf, x, h0, c0, w_ih, w_hh, b_ih, b_hh, gy, ghn, gcn, bptt_steps):
        y, _, _, saved = _C.cuda_recurrent_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, nonlinearity, tf32=tf)
        return _C.cuda_recurrent_backward(cell, gy, ghn, gcn, x, h0, c0, w_ih, w_hh, b_hh, y, saved, nonlinearity,
                                          bptt_steps, tf32=tf)

    def tf32_fwd(args, s):
        return recurrent_tf32_atol(cell, nonlinearity, args)

    def k_fwd(s):  # each step's sum over I + H
        return s[2] + s[3]

    def k_bwd(s):  # grad_x, grad_h0, grad_c0: each step's sum over its G*H gates; the weights' also over the rows
        b, t, i, h = s
        return (g * h,) * 3 + (max(b * t, 1) * g * h,) * 4

    tag = f"{cell}_{nonlinearity}"
    fwd = dict(k=k_fwd, covers="recurrent_forward", cuda=cuda_fwd, cuda_shapes=CUDA_RECURRENT_SHAPES, tf32=tf32_fwd)
    bwd = dict(k=k_bwd, covers="recurrent_backward", cuda=cuda_bwd, cuda_shapes=CUDA_RECURRENT_SHAPES)
    return [
        Op(f"recurrent_forward_{tag}_bias_states", lambda rng, s: make(rng, s, True, True), run_fwd, RECURRENT_SHAPES,
           **fwd),
        Op(f"recurrent_forward_{tag}_plain", lambda rng, s: make(rng, s, False, False), run_fwd, RECURRENT_SHAPES,
           **fwd),
        Op(f"recurrent_backward_{tag}_bptt0", lambda rng, s: make_bwd(rng, s, True, True, True) + (0,), run_bwd,
           RECURRENT_SHAPES, **bwd),
        # truncated every 3 steps, without biases or initial states; then with only the final state's gradient
        Op(f"recurrent_backward_{tag}_bptt3", lambda rng, s: make_bwd(rng, s, False, False, True) + (3,), run_bwd,
           RECURRENT_SHAPES, **bwd),
        Op(f"recurrent_backward_{tag}_bptt3_final_state", lambda rng, s: make_bwd(rng, s, True, True, False) + (3,),
           run_bwd, RECURRENT_SHAPES, **bwd),
    ]


REGISTRY: list[Op] = (
    [matmul_case(ta, tb, c) for ta, tb, c in itertools.product([False, True], [False, True], [False, True])]
    + [matmul_case(ta, tb, False, "C_reference") for ta, tb in itertools.product([False, True], repeat=2)]
    + [op for act, slope in ACTS for op in activation_case(act, slope)]
    + [Op("softmax_forward", lambda rng, s: (normal(rng, *s, scale=3.0),), lambda m, x: m.softmax_forward(x), ROW_SHAPES,
          covers="softmax_forward"),
       Op("softmax_backward", lambda rng, s: (normal(rng, *s), reference.softmax_forward(normal(rng, *s))),
          lambda m, dy, y: m.softmax_backward(dy, y), ROW_SHAPES, k=lambda s: s[1], covers="softmax_backward"),
       Op("log_softmax_forward", lambda rng, s: (normal(rng, *s, scale=3.0),), lambda m, x: m.log_softmax_forward(x),
          ROW_SHAPES, k=lambda s: s[1], covers="log_softmax_forward"),
       Op("log_softmax_backward", lambda rng, s: (normal(rng, *s), reference.log_softmax_forward(normal(rng, *s))),
          lambda m, dy, y: m.log_softmax_backward(dy, y), ROW_SHAPES, k=lambda s: s[1], covers="log_softmax_backward")]
    + [op for act, slope in ACTS for bias in (True, False) for op in linear_cases(act, slope, bias)]
    + [op for act, slope, bias in CONV_ACTS for op in conv_cases(act, slope, bias)]
    + [op for act, slope, bias in [("identity", 0.01, True), ("gelu_tanh", 0.01, False)]
       for op in conv_cases(act, slope, bias, "C_reference")]
    + pool_cases()
    + loss_cases()
    + optimizer_cases()
    + norm_cases()
    + [op for cell, nonlinearity in RECURRENT_CELLS for op in recurrent_cases(cell, nonlinearity)]
)


# ---------------------------------------------------------------------------------------------
# one check for every op on every device


def cast(value, dtype):
    if isinstance(value, (list, tuple)):
        return type(value)(cast(v, dtype) for v in value)
    if isinstance(value, np.ndarray) and value.dtype == np.float64:
        return value.astype(dtype, order="C")  # a C-contiguous copy that keeps a 0-d array 0-d
    return value


def upcast(value):
    if isinstance(value, (list, tuple)):
        return type(value)(upcast(v) for v in value)
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value.astype(np.float64)  # always a copy
    return value


def run_on(device, op, args):
    if device.kind == "cpu":
        return outputs(op.run(functional, *args))
    return outputs(op.cuda(device.tf32, *args))


def check_case(op, shape, device):
    # A stable seed per case: hash() of a str changes from process to process (PYTHONHASHSEED).
    rng = np.random.default_rng(zlib.crc32(f"{op.name}{shape}".encode()))
    dtype = device.dtype
    args = cast(op.make(rng, shape), dtype)  # values representable in dtype, so both sides see the same inputs
    reference_args = upcast(args)  # copies, taken before in-place ops update args
    tf32 = op.tf32(reference_args, shape) if device.tf32 else None
    native = run_on(device, op, args)
    expected = outputs(op.run(reference, *reference_args))
    if device.kind == "cuda":
        expected = expected[:len(native)]  # a twin may return a prefix of the outputs (no accumulating form)
    assert native and len(native) == len(expected)
    ks = (op.cuda_k or op.k)(shape) if device.kind == "cuda" else op.k(shape)
    for i, (got, want) in enumerate(zip(native, expected)):
        label = f"{op.name}{shape}[{i}]"
        if want is None:
            assert got is None, label
            continue
        if isinstance(want, np.ndarray) and want.dtype.kind == "i":  # indices: exactly the reference's
            assert isinstance(got, np.ndarray) and got.dtype == want.dtype, f"{label}: dtype {getattr(got, 'dtype', None)}"
            np.testing.assert_array_equal(got, want, err_msg=label)
            continue
        if isinstance(want, float):
            assert isinstance(got, float), label
            got, want = np.array(got), np.array(want)
        else:
            assert isinstance(got, np.ndarray) and got.dtype == dtype, f"{label}: dtype {getattr(got, 'dtype', None)}"
        if tf32 is not None:
            errors = testing.assert_parity(got, want, rtol=1e-5, atol=tf32[i], name=f"tf32 {label}")
        else:
            k = ks[i] if isinstance(ks, tuple) else ks
            errors = testing.assert_parity(got, want, dtype=dtype, reduction_length=k, name=label)
        key = np.dtype(dtype).name if device.kind == "cpu" else device.name
        worst = WORST.setdefault(key, {"max_abs_err": 0.0, "tolerance_used": 0.0, "where": ""})
        if errors["tolerance_used"] > worst["tolerance_used"]:
            worst.update(tolerance_used=errors["tolerance_used"], where=label)
        worst["max_abs_err"] = max(worst["max_abs_err"], errors["max_abs_err"])


def set_device(device):
    """Selects the CPU level of device; returns a function that restores the default."""
    if device.kind != "cpu":
        return lambda: None
    default = fuseprop.cpu_level()
    fuseprop.set_cpu_level(device.level)
    return lambda: fuseprop.set_cpu_level(default)


def cuda_marks(device):
    if device.kind != "cuda":
        return []
    return [pytest.mark.cuda, pytest.mark.skipif(not cuda.is_available(), reason="no CUDA device")]
