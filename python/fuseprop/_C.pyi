"""Type stubs for fuseprop's compiled module (csrc/python/, defined in module.cpp).

Arrays: numpy.ndarray of float32 or float64 (one dtype per call), C-contiguous, aligned; arrays
updated in place must be writeable and must not overlap the inputs. Labels: int64.
"""
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

__version__: str
compiler: str
arch: str
cuda_compiled: bool

IntPair = Union[int, Tuple[int, int]]  # a window argument: both sides, or (height, width)

# a: op(a) (M,K); b: op(b) (K,N); c: (M,N) written in place when given
def matmul(a: np.ndarray, b: np.ndarray, trans_a: bool = False, trans_b: bool = False, c: Optional[np.ndarray] = None,
           alpha: float = 1.0, beta: float = 0.0) -> np.ndarray: ...
def matmul_reference(a: np.ndarray, b: np.ndarray, trans_a: bool = False, trans_b: bool = False,
                     c: Optional[np.ndarray] = None, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray: ...
# x, y: any shape, elementwise
def activation_forward(x: np.ndarray, activation: str, negative_slope: float = 0.01) -> np.ndarray: ...
def activation_backward(grad_y: np.ndarray, x: np.ndarray, y: np.ndarray, activation: str,
                        negative_slope: float = 0.01) -> np.ndarray: ...
# x, y: (B,C), over each row
def softmax_forward(x: np.ndarray) -> np.ndarray: ...
def softmax_backward(grad_y: np.ndarray, y: np.ndarray) -> np.ndarray: ...
def log_softmax_forward(x: np.ndarray) -> np.ndarray: ...
def log_softmax_backward(grad_y: np.ndarray, y: np.ndarray) -> np.ndarray: ...
# x (B,IN), weight (OUT,IN), bias (OUT,) -> (y, z) (B,OUT)
def linear_forward(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None, activation: str = "identity",
                   negative_slope: float = 0.01) -> Tuple[np.ndarray, np.ndarray]: ...
# -> (grad_x (B,IN) | None, grad_weight (OUT,IN), grad_bias (OUT,) | None); given grads accumulate in place
def linear_backward(grad_y: np.ndarray, x: np.ndarray, weight: np.ndarray, z: Optional[np.ndarray],
                    y: Optional[np.ndarray], activation: str = "identity", negative_slope: float = 0.01,
                    has_bias: bool = True, need_grad_x: bool = True, grad_weight: Optional[np.ndarray] = None,
                    grad_bias: Optional[np.ndarray] = None
                    ) -> Tuple[Optional[np.ndarray], np.ndarray, Optional[np.ndarray]]: ...
# x (N,C,H,W), weight (O,C,kh,kw), bias (O,) -> (y, z) (N,O,Ho,Wo); stride, padding, dilation: int or (h, w)
def conv2d_forward(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None, stride: IntPair = (1, 1),
                   padding: IntPair = (0, 0), dilation: IntPair = (1, 1), activation: str = "identity",
                   negative_slope: float = 0.01) -> Tuple[np.ndarray, np.ndarray]: ...
# -> (grad_x (N,C,H,W) | None, grad_weight (O,C,kh,kw), grad_bias (O,) | None); given grads accumulate in place
def conv2d_backward(grad_y: np.ndarray, x: np.ndarray, weight: np.ndarray, z: Optional[np.ndarray],
                    y: Optional[np.ndarray], stride: IntPair = (1, 1), padding: IntPair = (0, 0),
                    dilation: IntPair = (1, 1), activation: str = "identity", negative_slope: float = 0.01,
                    has_bias: bool = True, need_grad_x: bool = True, grad_weight: Optional[np.ndarray] = None,
                    grad_bias: Optional[np.ndarray] = None
                    ) -> Tuple[Optional[np.ndarray], np.ndarray, Optional[np.ndarray]]: ...
# the scalar loops the two above are checked against: the same arguments and results
def conv2d_forward_reference(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None,
                             stride: IntPair = (1, 1), padding: IntPair = (0, 0), dilation: IntPair = (1, 1),
                             activation: str = "identity", negative_slope: float = 0.01) -> Tuple[np.ndarray, np.ndarray]: ...
def conv2d_backward_reference(grad_y: np.ndarray, x: np.ndarray, weight: np.ndarray, z: Optional[np.ndarray],
                              y: Optional[np.ndarray], stride: IntPair = (1, 1), padding: IntPair = (0, 0),
                              dilation: IntPair = (1, 1), activation: str = "identity", negative_slope: float = 0.01,
                              has_bias: bool = True, need_grad_x: bool = True, grad_weight: Optional[np.ndarray] = None,
                              grad_bias: Optional[np.ndarray] = None
                              ) -> Tuple[Optional[np.ndarray], np.ndarray, Optional[np.ndarray]]: ...
def _set_conv2d_chunk(n: int) -> None: ...  # samples per GEMM forced to n (0: chosen by shape; tests, benchmarks)
# x (N,C,H,W) -> (y (N,C,Ho,Wo), indices int64 (N,C,Ho,Wo): h*W + w of each max in its input plane); stride None: kernel_size
def max_pool2d_forward(x: np.ndarray, kernel_size: IntPair, stride: Optional[IntPair] = None,
                       padding: IntPair = 0) -> Tuple[np.ndarray, np.ndarray]: ...
# grad_y, indices (N,C,Ho,Wo); input_size (H, W) -> grad_x (N,C,H,W)
def max_pool2d_backward(grad_y: np.ndarray, indices: np.ndarray, input_size: Tuple[int, int]) -> np.ndarray: ...
def avg_pool2d_forward(x: np.ndarray, kernel_size: IntPair, stride: Optional[IntPair] = None, padding: IntPair = 0,
                       count_include_pad: bool = True) -> np.ndarray: ...
def avg_pool2d_backward(grad_y: np.ndarray, input_size: Tuple[int, int], kernel_size: IntPair,
                        stride: Optional[IntPair] = None, padding: IntPair = 0,
                        count_include_pad: bool = True) -> np.ndarray: ...
# logits (B,C), labels (B,) int64 -> (loss, grad_logits)
def cross_entropy_loss(logits: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0,
                       reduction: str = "mean") -> Tuple[float, np.ndarray]: ...
def mse_loss(pred: np.ndarray, target: np.ndarray, reduction: str = "mean") -> Tuple[float, np.ndarray]: ...
def bce_with_logits_loss(logits: np.ndarray, target: np.ndarray, reduction: str = "mean") -> Tuple[float, np.ndarray]: ...
# in place on param and state
def sgd_step(param: np.ndarray, grad: np.ndarray, momentum_buffer: Optional[np.ndarray] = None, *, lr: float,
             momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
             step: int = 1) -> None: ...
def adam_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray, *, step: int,
              lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
              decoupled_weight_decay: bool = False) -> None: ...

# batch and layer normalisation (bind_norm.cpp)
# x (N, C, *spatial); weight, bias, running_mean, running_var (C,) or None -> (y, save_mean (C,), save_invstd (C,));
# training: batch statistics, running_* updated in place; otherwise the running statistics (required);
# y = activation(the normalised x), in the same pass
def batch_norm_forward(x: np.ndarray, weight: Optional[np.ndarray], bias: Optional[np.ndarray],
                       running_mean: Optional[np.ndarray], running_var: Optional[np.ndarray], training: bool,
                       momentum: float = 0.1, eps: float = 1e-5, activation: str = "identity",
      negative_slope: float = 0.01) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
# -> (grad_x | None, grad_weight (C,) | None, grad_bias (C,) | None); given grads accumulate in place;
# with an activation, y (the forward's output) and bias (the forward's) give its derivative
def batch_norm_backward(grad_y: np.ndarray, x: np.ndarray, weight: Optional[np.ndarray], save_mean: np.ndarray,
                        save_invstd: np.ndarray, training: bool, need_grad_x: bool = True,
                        grad_weight: Optional[np.ndarray] = None, grad_bias: Optional[np.ndarray] = None, y: Optional[np.ndarray] = None,
      bias: Optional[np.ndarray] = None, activation: str = "identity", negative_slope: float = 0.01
                        ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]: ...
# x (*, normalized_shape); weight, bias (normalized_shape) or None -> (y, mean, rstd (x.shape[:-k]))
def layer_norm_forward(x: np.ndarray, normalized_shape: Sequence[int], weight: Optional[np.ndarray] = None,
                       bias: Optional[np.ndarray] = None, eps: float = 1e-5) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def layer_norm_backward(grad_y: np.ndarray, x: np.ndarray, normalized_shape: Sequence[int], weight: Optional[np.ndarray],
                        mean: np.ndarray, rstd: np.ndarray, need_grad_x: bool = True,
                        grad_weight: Optional[np.ndarray] = None, grad_bias: Optional[np.ndarray] = None
                        ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]: ...

# recurrent layers (bind_recurrent.cpp), one layer, one direction, batch-first: cell "rnn" | "lstm" | "gru";
# x (B,T,I), T >= 1; h0, c0 (B,H) or None (c0: lstm only); w_ih (G*H,I), w_hh (G*H,H), b_ih, b_hh (G*H,) or both None
# -> (y (B,T,H), h_n (B,H), c_n (B,H) | None, saved: the backward's record, 1-D)
def recurrent_forward(cell: str, x: np.ndarray, h0: Optional[np.ndarray], c0: Optional[np.ndarray], w_ih: np.ndarray,
                      w_hh: np.ndarray, b_ih: Optional[np.ndarray], b_hh: Optional[np.ndarray],
                      nonlinearity: str = "tanh") -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], np.ndarray]: ...
# grad_y (B,T,H), grad_h_n, grad_c_n (B,H) or None; y, saved: the forward's; bptt_steps 0 (full) or k (truncated)
# -> (grad_x, grad_h0, grad_c0 | None, grad_w_ih, grad_w_hh, grad_b_ih | None, grad_b_hh | None), new arrays
def recurrent_backward(cell: str, grad_y: Optional[np.ndarray], grad_h_n: Optional[np.ndarray],
                       grad_c_n: Optional[np.ndarray], x: np.ndarray, h0: Optional[np.ndarray], c0: Optional[np.ndarray],
                       w_ih: np.ndarray, w_hh: np.ndarray, b_hh: Optional[np.ndarray], y: np.ndarray, saved: np.ndarray,
                       nonlinearity: str = "tanh", bptt_steps: int = 0
                       ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], np.ndarray, np.ndarray,
                                  Optional[np.ndarray], Optional[np.ndarray]]: ...

# The whole training step of a chain of Linear(+activation) layers, on the model's own arrays (kept alive).
# layers: [(activation, negative_slope, has_bias)] per Linear; params: [(name, data, grad, state_a, state_b,
# group)] per parameter, each layer's weight (OUT,IN) then its bias (OUT,); state_a: SGD momentum_buffer or
# None, Adam exp_avg; state_b: Adam exp_avg_sq or None. loss: "cross_entropy" | "mse" | "bce_with_logits";
# optimizer: "sgd" | "adam" | "adamw".
class TrainPlan:
    def __init__(self, layers: Sequence[tuple], params: Sequence[tuple], *, loss: str, optimizer: str,
                 label_smoothing: float = 0.0, reduction: str = "mean", groups: int = 1) -> None: ...
    # x (B,IN); target: labels (B,) int64, or (B,OUT) floats; hyper: per group (lr, momentum, dampening,
    # nesterov, weight_decay) for SGD, (lr, beta1, beta2, eps, weight_decay) for Adam; steps: per parameter.
    # max_grad_norm > 0 clips all gradients together to that L2 norm before the update (0: no clipping).
    # Returns the loss; FloatingPointError as Sequential.train_step.
    def step(self, x: np.ndarray, target: np.ndarray, hyper: Sequence[tuple], steps: Sequence[int],
             max_grad_norm: float = 0.0) -> float: ...
    # Many steps in one call (fit's epochs): batches first_batch .. first_batch+n_batches-1 of x (N,IN) and
    # target (labels (N,) int64 or (N,OUT)), batch b being rows order[b*batch_size : (b+1)*batch_size] gathered
    # (order (M,) int64 in [0, N)), or rows b*batch_size .. of x in place (order None). hyper, steps: as step(),
    # for the first batch (the counts move on after each update). lrs: None or (n_batches, groups) float64,
    # each batch's lr per group. Everything is checked before the first step. Returns (losses, correct),
    # (n_batches,) float64 and int64; a refused step raises as step() does, after batches_done batches.
    def run_batches(self, x: np.ndarray, target: np.ndarray, order: Optional[np.ndarray], batch_size: int,
                    first_batch: int, n_batches: int, hyper: Sequence[tuple], steps: Sequence[int],
                    max_grad_norm: float = 0.0, lrs: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]: ...
    @property
    def batches_done(self) -> int: ...  # the last run_batches' batches whose step completed
    # (B,OUT): the gradient of the last step's loss with respect to the model's output (a new array)
    def loss_grad(self) -> np.ndarray: ...
    @property
    def allocations(self) -> int: ...  # workspace allocations so far
    @property
    def capacity(self) -> int: ...  # batch rows the workspace holds
    @property
    def steps(self) -> int: ...
    @property
    def updated(self) -> bool: ...  # the last step wrote the update
    @property
    def correct(self) -> int: ...  # cross-entropy: rows of the last step whose argmax is the label; BCE: elements whose logit sign gives the target
    @property
    def grad_norm(self) -> float: ...  # the last clipped step's global gradient norm, before clipping

# kernel selection and threads
def cpu_level() -> str: ...  # "generic", "avx2" or "avx512": what the float kernels use now
def cpu_levels_available() -> list[str]: ...  # lowest first
def set_cpu_level(level: str) -> None: ...  # ValueError for an unknown or unsupported level
def cpu_caches() -> dict[str, int]: ...  # {"l1d", "l2", "l3"} in bytes: what the GEMM blocking is derived from
def gemm_blocking() -> dict: ...  # {"level", "mr", "nr", "mc", "kc", "nc"} of the float GEMM at the active level
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...  # n >= 1
def _set_gemm_path(path: str) -> None: ...  # "auto", "packed", "direct" or "dot" (tests, benchmarks)
# GFLOP/s of register-only float multiply-adds on `threads` threads at once (1..1024) for `seconds`
# (0 < seconds <= 60), with `level`'s loop (None: the active level): the benchmarks' measured peak
def fma_peak(threads: int, seconds: float = 0.2, level: Optional[str] = None) -> float: ...

# CUDA (only when cuda_compiled)
def cuda_query() -> dict: ...  # {"count", "status", "runtime_version", "driver_version"}; never raises
def cuda_device_properties(index: int) -> dict: ...  # {"name", "capability", "total_memory", "multiprocessors"}
# Host arrays in and out, one op on the device (float32 only): parity tests of the CUDA kernels.
# Arguments are checked as the CPU entries check them; then RuntimeError "no CUDA device: ..." without a GPU.
def cuda_matmul(a: np.ndarray, b: np.ndarray, trans_a: bool = False, trans_b: bool = False,
                tf32: bool = False) -> np.ndarray: ...  # op(a) (M,K) @ op(b) (K,N); tf32: tensor cores
def cuda_linear_forward(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None, activation: str = "identity",
                        negative_slope: float = 0.01, tf32: bool = False) -> Tuple[np.ndarray, np.ndarray]: ...  # (y, z)
def cuda_linear_backward(grad_y: np.ndarray, x: np.ndarray, weight: np.ndarray, z: Optional[np.ndarray], y: Optional[np.ndarray],
                         activation: str = "identity", negative_slope: float = 0.01, has_bias: bool = True,
                         tf32: bool = False) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]: ...  # (grad_x, grad_weight, grad_bias)
def cuda_activation_forward(x: np.ndarray, activation: str, negative_slope: float = 0.01) -> np.ndarray: ...
def cuda_activation_backward(grad_y: np.ndarray, x: np.ndarray, y: np.ndarray, activation: str,
                             negative_slope: float = 0.01) -> np.ndarray: ...
def cuda_cross_entropy_loss(logits: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0,
                            reduction: str = "mean") -> Tuple[float, np.ndarray]: ...
def cuda_sgd_step(param: np.ndarray, grad: np.ndarray, momentum_buffer: Optional[np.ndarray] = None, *, lr: float,
                  momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                  step: int = 1) -> None: ...
def cuda_adam_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray, *, step: int,
                   lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                   weight_decay: float = 0.0, decoupled_weight_decay: bool = False) -> None: ...
# conv2d, pooling and normalisation twins: the CPU entries' arguments and results (given grads accumulate in
# place, running statistics update in place); conv2d adds tf32 (its GEMMs on TF32 tensor cores)
def cuda_conv2d_forward(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None, stride: IntPair = (1, 1),
                        padding: IntPair = (0, 0), dilation: IntPair = (1, 1), activation: str = "identity",
                        negative_slope: float = 0.01, tf32: bool = False) -> Tuple[np.ndarray, np.ndarray]: ...  # (y, z)
def cuda_conv2d_backward(grad_y: np.ndarray, x: np.ndarray, weight: np.ndarray, z: Optional[np.ndarray],
                         y: Optional[np.ndarray], stride: IntPair = (1, 1), padding: IntPair = (0, 0),
                         dilation: IntPair = (1, 1), activation: str = "identity", negative_slope: float = 0.01,
                         has_bias: bool = True, need_grad_x: bool = True, grad_weight: Optional[np.ndarray] = None,
                         grad_bias: Optional[np.ndarray] = None, tf32: bool = False
                         ) -> Tuple[Optional[np.ndarray], np.ndarray, Optional[np.ndarray]]: ...
def cuda_max_pool2d_forward(x: np.ndarray, kernel_size: IntPair, stride: Optional[IntPair] = None,
                            padding: IntPair = 0) -> Tuple[np.ndarray, np.ndarray]: ...  # (y, indices int64)
def cuda_max_pool2d_backward(grad_y: np.ndarray, indices: np.ndarray, input_size: Tuple[int, int]) -> np.ndarray: ...
def cuda_avg_pool2d_forward(x: np.ndarray, kernel_size: IntPair, stride: Optional[IntPair] = None, padding: IntPair = 0,
                            count_include_pad: bool = True) -> np.ndarray: ...
def cuda_avg_pool2d_backward(grad_y: np.ndarray, input_size: Tuple[int, int], kernel_size: IntPair,
                             stride: Optional[IntPair] = None, padding: IntPair = 0,
                             count_include_pad: bool = True) -> np.ndarray: ...
def cuda_batch_norm_forward(x: np.ndarray, weight: Optional[np.ndarray], bias: Optional[np.ndarray],
                            running_mean: Optional[np.ndarray], running_var: Optional[np.ndarray], training: bool,
                            momentum: float = 0.1, eps: float = 1e-5, activation: str = "identity",
      negative_slope: float = 0.01) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def cuda_batch_norm_backward(grad_y: np.ndarray, x: np.ndarray, weight: Optional[np.ndarray], save_mean: np.ndarray,
                             save_invstd: np.ndarray, training: bool, need_grad_x: bool = True,
                             grad_weight: Optional[np.ndarray] = None, grad_bias: Optional[np.ndarray] = None, y: Optional[np.ndarray] = None,
      bias: Optional[np.ndarray] = None, activation: str = "identity", negative_slope: float = 0.01
                             ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]: ...
def cuda_layer_norm_forward(x: np.ndarray, normalized_shape: Sequence[int], weight: Optional[np.ndarray] = None,
                            bias: Optional[np.ndarray] = None, eps: float = 1e-5) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def cuda_layer_norm_backward(grad_y: np.ndarray, x: np.ndarray, normalized_shape: Sequence[int],
                             weight: Optional[np.ndarray], mean: np.ndarray, rstd: np.ndarray, need_grad_x: bool = True,
                             grad_weight: Optional[np.ndarray] = None, grad_bias: Optional[np.ndarray] = None
                             ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]: ...
# recurrent twins: the CPU entries' arguments and results, and tf32 (the GEMMs on TF32 tensor cores); saved is the
# device kernels' own record (another layout than the CPU's, cuda/ops/recurrent_cuda.h), for cuda_recurrent_backward
def cuda_recurrent_forward(cell: str, x: np.ndarray, h0: Optional[np.ndarray], c0: Optional[np.ndarray],
                           w_ih: np.ndarray, w_hh: np.ndarray, b_ih: Optional[np.ndarray], b_hh: Optional[np.ndarray],
                           nonlinearity: str = "tanh", tf32: bool = False
                           ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], np.ndarray]: ...
def cuda_recurrent_backward(cell: str, grad_y: Optional[np.ndarray], grad_h_n: Optional[np.ndarray],
                            grad_c_n: Optional[np.ndarray], x: np.ndarray, h0: Optional[np.ndarray],
                            c0: Optional[np.ndarray], w_ih: np.ndarray, w_hh: np.ndarray, b_hh: Optional[np.ndarray],
                            y: np.ndarray, saved: np.ndarray, nonlinearity: str = "tanh", bptt_steps: int = 0,
                            tf32: bool = False
                            ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], np.ndarray, np.ndarray,
                                       Optional[np.ndarray], Optional[np.ndarray]]: ...
def cuda_fused_mlp_forward_backward(x: np.ndarray, labels: np.ndarray, weights: Sequence[np.ndarray],
                                    biases: Sequence[Optional[np.ndarray]], activations: Sequence[str],
                                    negative_slope: float = 0.01, label_smoothing: float = 0.0, reduction: str = "mean",
                                    tf32: bool = False) -> Tuple[float, int, list[np.ndarray], list[Optional[np.ndarray]]]: ...
    # (loss, correct, grad_weights, grad_biases): forward, cross-entropy and backward in one fused kernel; the network
    # must be 1 to 8 layers, each at most 128 wide, the last activation "identity" (else ValueError)
def cuda_fused_mlp_forward(x: np.ndarray, weights: Sequence[np.ndarray], biases: Sequence[Optional[np.ndarray]],
                           activations: Sequence[str], negative_slope: float = 0.01, tf32: bool = False) -> np.ndarray: ...  # logits
def cuda_matmul_time_ms(M: int, N: int, K: int, tf32: bool = True, repeats: int = 20) -> float: ...  # median, device-resident, no copies

# CUDA device arrays, DLPack and the device train plan (only when cuda_compiled)
class DeviceArray:
    shape: Tuple[int, ...]
    dtype: np.dtype  # float32 or int64
    ndim: int
    size: int
    nbytes: int
    device: str  # "cuda:0" ("cpu" only for _host_array / _dlpack_import_any test arrays)
    readonly: bool
    data_ptr: int
    def __len__(self) -> int: ...
    def __getitem__(self, rows: slice) -> "DeviceArray": ...  # a view of whole rows, step 1
    def numpy(self) -> np.ndarray: ...
    def copy_(self, src: Any) -> None: ...  # an ndarray or DeviceArray of the same shape and dtype
    def zero_(self) -> None: ...
    def __dlpack__(self, *, stream: Optional[int] = None, max_version: Optional[Tuple[int, int]] = None,
                   dl_device: Optional[Tuple[int, int]] = None, copy: Optional[bool] = None) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...
def cuda_empty(shape: Sequence[int], dtype: Any = "float32") -> DeviceArray: ...
def cuda_to_device(a: np.ndarray) -> DeviceArray: ...  # staged through pinned memory
def cuda_from_dlpack(obj: Any) -> DeviceArray: ...  # a CUDA DLPack array, no copy
def _dlpack_import_any(obj: Any) -> DeviceArray: ...  # also CPU DLPack arrays (tests)
def _host_array(a: np.ndarray) -> DeviceArray: ...  # a host-memory copy (tests of the DLPack export)
def cuda_gather_rows(src: Any, index: np.ndarray) -> Any: ...  # a DeviceArray, or a tuple of them for a tuple
def cuda_synchronize() -> None: ...
class CudaTrainPlan:
    def __init__(self, layers: Sequence[Tuple[str, float, bool]], params: Sequence[tuple], *, loss: str, optimizer: str,
                 label_smoothing: float = 0.0, reduction: str = "mean", groups: int = 1, tf32: bool = True,
                 fused: bool = True) -> None: ...
    def step(self, x: Any, target: Any, hyper: Sequence[tuple], steps: Sequence[int], max_grad_norm: float = 0.0) -> float: ...
    def forward(self, x: Any) -> DeviceArray: ...
    allocations: int
    capacity: int
    steps: int
    fused: bool
    updated: bool
    correct: int
    grad_norm: float
