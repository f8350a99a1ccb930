// The only file that knows Python. Each entry point validates its arguments once (type, dtype,
// ndim, shape, C-contiguity, alignment, writeability, overlap, values where they matter), allocates
// its outputs, releases the GIL and forwards raw pointers to a kernel. Nothing is converted
// implicitly: an array in the wrong form is an error that names the argument, what was expected
// and what came, and nothing is written before every check has passed.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "ops/activations.h"
#include "plan/batches.h"
#include "core/cpu_features.h"
#include "core/fma_peak.h"
#include "ops/linear.h"
#include "ops/losses.h"
#include "gemm/matmul.h"
#include "plan/network.h"
#include "ops/optim.h"
#include "core/threads.h"
#if FUSEPROP_CUDA_COMPILED
#include "cuda/ops/activations_cuda.h"
#include "cuda/core/device.h"
#include "cuda/plan/fused_mlp.h"
#include "cuda/ops/gather_cuda.h"
#include "cuda/ops/losses_cuda.h"
#include "cuda/ops/matmul_cuda.h"
#include "cuda/core/memory.h"
#include "cuda/ops/optim_cuda.h"
#include "cuda/plan/train_plan.h"
#include "python/dlpack_abi.h"
#endif

namespace py = pybind11;
using namespace fuseprop;

namespace {

enum class DType { f32, f64 };

template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += cat(i ? ", " : "", a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string dims_str(const std::vector<int64_t>& dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) s += cat(i ? ", " : "", dims[i]);
  return s + (dims.size() == 1 ? ",)" : ")");
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// An ndarray, never a silent conversion of a list or another object into a temporary.
py::array as_array(const py::handle& obj, const char* name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(cat(name, " must be a numpy.ndarray, got ", py::str(py::type::of(obj).attr("__name__")).cast<std::string>()));
  return py::reinterpret_borrow<py::array>(obj);
}

DType float_dtype(const py::array& a, const char* name) {
  if (a.dtype().equal(py::dtype::of<float>())) return DType::f32;
  if (a.dtype().equal(py::dtype::of<double>())) return DType::f64;
  throw py::type_error(cat(name, " must have dtype float32 or float64 (native byte order), got ", dtype_str(a)));
}

void check_dtype(const py::array& a, const char* name, DType expected, const char* like) {
  if (float_dtype(a, name) != expected)
    throw py::type_error(cat(name, " must have the same dtype as ", like, " (", expected == DType::f32 ? "float32" : "float64",
                             "), got ", dtype_str(a)));
}

void check_ndim(const py::array& a, const char* name, py::ssize_t ndim) {
  if (a.ndim() != ndim)
    throw py::value_error(cat(name, " must be ", ndim, "-D, got a ", a.ndim(), "-D array of shape ", shape_str(a)));
}

void check_layout(const py::array& a, const char* name) {
  const int flags = py::detail::array_proxy(a.ptr())->flags;
  if (!(flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_))
    throw py::value_error(cat(name, " must be C-contiguous (row-major, unit stride); got a strided or transposed view of shape ",
                              shape_str(a), ": pass np.ascontiguousarray(", name, ")"));
  if (!(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(cat(name, " must be aligned to its dtype; got an unaligned buffer"));
}

void check_writeable(const py::array& a, const char* name) {
  if (!a.writeable()) throw py::value_error(cat(name, " is written in place, so it must be writeable; got a read-only array"));
}

void check_shape(const py::array& a, const char* name, const std::vector<int64_t>& dims) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(dims.size());
  for (size_t i = 0; ok && i < dims.size(); ++i) ok = a.shape(i) == dims[i];
  if (!ok) throw py::value_error(cat(name, " must have shape ", dims_str(dims), ", got ", shape_str(a)));
}

void check_same_shape(const py::array& a, const char* name, const py::array& like, const char* like_name) {
  bool ok = a.ndim() == like.ndim();
  for (py::ssize_t i = 0; ok && i < a.ndim(); ++i) ok = a.shape(i) == like.shape(i);
  if (!ok)
    throw py::value_error(cat(name, " must have the same shape as ", like_name, " ", shape_str(like), ", got ", shape_str(a)));
}

// An array that an entry point reads: ndarray, float dtype, C-contiguous and aligned.
py::array float_input(const py::handle& obj, const char* name, DType* dtype_out = nullptr) {
  py::array a = as_array(obj, name);
  const DType dt = float_dtype(a, name);
  check_layout(a, name);
  if (dtype_out) *dtype_out = dt;
  return a;
}
py::array float_input_like(const py::handle& obj, const char* name, DType dt, const char* like) {
  py::array a = as_array(obj, name);
  check_dtype(a, name, dt, like);
  check_layout(a, name);
  return a;
}
// An array that an entry point updates in place: also writeable.
py::array float_inout_like(const py::handle& obj, const char* name, DType dt, const char* like) {
  py::array a = float_input_like(obj, name, dt, like);
  check_writeable(a, name);
  return a;
}

// Outputs updated in place must not share memory with another argument: the kernels read their
// inputs while they write, so an overlap would silently corrupt the result.
void check_no_overlap(const py::array& out, const char* out_name, const py::array& in, const char* in_name) {
  const auto lo1 = reinterpret_cast<uintptr_t>(out.data()), hi1 = lo1 + out.nbytes();
  const auto lo2 = reinterpret_cast<uintptr_t>(in.data()), hi2 = lo2 + in.nbytes();
  if (out.nbytes() > 0 && in.nbytes() > 0 && lo1 < hi2 && lo2 < hi1)
    throw py::value_error(cat(out_name, " is written in place and must not share memory with ", in_name));
}

void check_finite_scalar(double v, const char* name) {
  if (!std::isfinite(v)) throw py::value_error(cat(name, " must be finite, got ", v));
}
void check_range(double v, const char* name, double lo, double hi, bool hi_inclusive) {
  check_finite_scalar(v, name);
  if (v < lo || (hi_inclusive ? v > hi : v >= hi))
    throw py::value_error(cat(name, " must be in [", lo, ", ", hi, hi_inclusive ? "]" : ")", ", got ", v));
}

Activation parse_activation(const std::string& name) {
  static const std::pair<const char*, Activation> table[] = {
      {"identity", Activation::identity}, {"relu", Activation::relu}, {"leaky_relu", Activation::leaky_relu},
      {"sigmoid", Activation::sigmoid},   {"tanh", Activation::tanh}, {"gelu", Activation::gelu},
      {"gelu_tanh", Activation::gelu_tanh}};
  for (const auto& [n, a] : table)
    if (name == n) return a;
  throw py::value_error(cat("activation must be one of identity, relu, leaky_relu, sigmoid, tanh, gelu, gelu_tanh; got '", name, "'"));
}

// "mean" -> true, "sum" -> false
bool parse_reduction(const std::string& reduction) {
  if (reduction == "mean") return true;
  if (reduction == "sum") return false;
  throw py::value_error(cat("reduction must be 'mean' or 'sum', got '", reduction, "'"));
}

template <typename T>
py::array_t<T> empty(const std::vector<int64_t>& dims) {
  // Every size is already the extent of an existing array, but products of two of them may not be.
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / int64_t(sizeof(T)) / d)
      throw py::value_error(cat("output of shape ", dims_str(dims), " is too large to allocate"));
    n *= d;
  }
  return py::array_t<T>(std::vector<py::ssize_t>(dims.begin(), dims.end()));
}

template <typename T>
T* ptr(const py::array& a) { return static_cast<T*>(const_cast<void*>(a.data())); }
template <typename T>
T* ptr_or_null(const std::optional<py::array>& a) { return a ? ptr<T>(*a) : nullptr; }

// Runs body(T{}) with T = float or double.
template <typename F>
auto dispatch(DType dt, F&& body) {
  if (dt == DType::f32) return body(float{});
  return body(double{});
}

// ---------------------------------------------------------------- matmul
// a: op(a) (M,K), b: op(b) (K,N), both 2-D -> {M, N, K}; ValueError when the inner dimensions differ
std::tuple<int64_t, int64_t, int64_t> checked_matmul_shapes(const py::array& a, const py::array& b, bool trans_a,
                                                            bool trans_b) {
  check_ndim(a, "a", 2);
  check_ndim(b, "b", 2);
  const int64_t M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
  const int64_t Kb = trans_b ? b.shape(1) : b.shape(0), N = trans_b ? b.shape(0) : b.shape(1);
  if (K != Kb)
    throw py::value_error(cat("matmul: inner dimensions differ: op(a) is (", M, ", ", K, ") and op(b) is (", Kb, ", ", N, ")"));
  return {M, N, K};
}

// a: op(a) (M,K); b: op(b) (K,N); c: (M,N) or None
template <bool Reference>
py::array matmul_entry(const py::handle& a_obj, const py::handle& b_obj, bool trans_a, bool trans_b, const py::handle& c_obj,
                       double alpha, double beta) {
  DType dt;
  py::array a = float_input(a_obj, "a", &dt);
  py::array b = float_input_like(b_obj, "b", dt, "a");
  int64_t M, N, K;  // plain variables, not a structured binding: C++17 lambdas cannot capture one
  std::tie(M, N, K) = checked_matmul_shapes(a, b, trans_a, trans_b);
  check_finite_scalar(alpha, "alpha");
  check_finite_scalar(beta, "beta");
  return dispatch(dt, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array c;
    if (c_obj.is_none()) {
      if (beta != 0) throw py::value_error("beta must be 0 when c is not given");
      c = empty<T>({M, N});
    } else {
      c = float_inout_like(c_obj, "c", dt, "a");
      check_shape(c, "c", {M, N});
      check_no_overlap(c, "c", a, "a");
      check_no_overlap(c, "c", b, "b");
    }
    py::gil_scoped_release nogil;
    auto kernel = Reference ? matmul_reference<T> : matmul<T>;
    kernel(ptr<T>(c), ptr<T>(a), ptr<T>(b), M, N, K, a.shape(1), b.shape(1), N, trans_a, trans_b, T(alpha), T(beta));
    return c;
  });
}

// ---------------------------------------------------------------- activations
// x, y: any shape, elementwise
py::array activation_forward_entry(const py::handle& x_obj, const std::string& activation, double slope) {
  DType dt;
  py::array x = float_input(x_obj, "x", &dt);
  const Activation act = parse_activation(activation);
  check_finite_scalar(slope, "negative_slope");
  return dispatch(dt, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array y(x.dtype(), std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
    py::gil_scoped_release nogil;
    activation_forward<T>(ptr<T>(y), ptr<T>(x), x.size(), act, T(slope));
    return y;
  });
}

// dy, x, y: same shape; returns dx
py::array activation_backward_entry(const py::handle& dy_obj, const py::handle& x_obj, const py::handle& y_obj,
                                    const std::string& activation, double slope) {
  DType dt;
  py::array dy = float_input(dy_obj, "grad_y", &dt);
  py::array x = float_input_like(x_obj, "x", dt, "grad_y");
  py::array y = float_input_like(y_obj, "y", dt, "grad_y");
  check_same_shape(x, "x", dy, "grad_y");
  check_same_shape(y, "y", dy, "grad_y");
  const Activation act = parse_activation(activation);
  check_finite_scalar(slope, "negative_slope");
  return dispatch(dt, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array dx(dy.dtype(), std::vector<py::ssize_t>(dy.shape(), dy.shape() + dy.ndim()));
    py::gil_scoped_release nogil;
    activation_backward<T>(ptr<T>(dx), ptr<T>(dy), ptr<T>(x), ptr<T>(y), dy.size(), act, T(slope));
    return dx;
  });
}

// x (B,C) -> y (B,C), row-wise
template <bool Log>
py::array softmax_forward_entry(const py::handle& x_obj) {
  DType dt;
  py::array x = float_input(x_obj, "x", &dt);
  check_ndim(x, "x", 2);
  return dispatch(dt, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array y = empty<T>({x.shape(0), x.shape(1)});
    py::gil_scoped_release nogil;
    (Log ? log_softmax_forward<T> : softmax_forward<T>)(ptr<T>(y), ptr<T>(x), x.shape(0), x.shape(1));
    return y;
  });
}

// dy, y (B,C) -> dx (B,C)
template <bool Log>
py::array softmax_backward_entry(const py::handle& dy_obj, const py::handle& y_obj) {
  DType dt;
  py::array dy = float_input(dy_obj, "grad_y", &dt);
  py::array y = float_input_like(y_obj, "y", dt, "grad_y");
  check_ndim(dy, "grad_y", 2);
  check_same_shape(y, "y", dy, "grad_y");
  return dispatch(dt, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array dx = empty<T>({dy.shape(0), dy.shape(1)});
    py::gil_scoped_release nogil;
    (Log ? log_softmax_backward<T> : softmax_backward<T>)(ptr<T>(dx), ptr<T>(dy), ptr<T>(y), dy.shape(0), dy.shape(1));
    return dx;
  });
}

// ---------------------------------------------------------------- linear
// The checks of a linear forward, shared by the CPU and CUDA entries: x (B,IN), weight (OUT,IN), bias (OUT) or None.
struct LinearForwardArgs {
  DType dt;
  py::array x, w;
  std::optional<py::array> b;
  Activation act;
  int64_t B, IN, OUT;
};
LinearForwardArgs checked_linear_forward_args(const py::handle& x_obj, const py::handle& w_obj, const py::handle& b_obj,
                                              const std::string& activation, double slope) {
  LinearForwardArgs r;
  r.x = float_input(x_obj, "x", &r.dt);
  r.w = float_input_like(w_obj, "weight", r.dt, "x");
  check_ndim(r.x, "x", 2);
  check_ndim(r.w, "weight", 2);
  r.B = r.x.shape(0), r.IN = r.x.shape(1), r.OUT = r.w.shape(0);
  if (r.w.shape(1) != r.IN)
    throw py::value_error(cat("weight must have shape (out_features, ", r.IN, ") to match x of shape ", shape_str(r.x), ", got ", shape_str(r.w)));
  if (!b_obj.is_none()) {
    r.b = float_input_like(b_obj, "bias", r.dt, "x");
    check_shape(*r.b, "bias", {r.OUT});
  }
  r.act = parse_activation(activation);
  check_finite_scalar(slope, "negative_slope");
  return r;
}

// x (B,IN), weight (OUT,IN), bias (OUT) or None -> (y, z) both (B,OUT)
py::tuple linear_forward_entry(const py::handle& x_obj, const py::handle& w_obj, const py::handle& b_obj,
                               const std::string& activation, double slope) {
  const LinearForwardArgs r = checked_linear_forward_args(x_obj, w_obj, b_obj, activation, slope);
  return dispatch(r.dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array y = empty<T>({r.B, r.OUT}), z = empty<T>({r.B, r.OUT});
    {
      py::gil_scoped_release nogil;
      linear_forward<T>(ptr<T>(y), ptr<T>(z), ptr<T>(r.x), ptr<T>(r.w), ptr_or_null<T>(r.b), r.B, r.IN, r.OUT, r.act, T(slope));
    }
    return py::make_tuple(y, z);
  });
}

// The checks of a linear backward's inputs, shared by the CPU and CUDA entries: grad_y, z, y (B,OUT);
// x (B,IN); weight (OUT,IN). The identity's derivative needs neither z nor y, so they may be None for it.
struct LinearBackwardArgs {
  DType dt;
  py::array dy, x, w, z, y;
  Activation act;
  int64_t B, IN, OUT;
};
LinearBackwardArgs checked_linear_backward_args(const py::handle& dy_obj, const py::handle& x_obj, const py::handle& w_obj,
                                                const py::handle& z_obj, const py::handle& y_obj,
                                                const std::string& activation, double slope) {
  LinearBackwardArgs r;
  r.dy = float_input(dy_obj, "grad_y", &r.dt);
  r.x = float_input_like(x_obj, "x", r.dt, "grad_y");
  r.w = float_input_like(w_obj, "weight", r.dt, "grad_y");
  check_ndim(r.x, "x", 2);
  check_ndim(r.w, "weight", 2);
  r.B = r.x.shape(0), r.IN = r.x.shape(1), r.OUT = r.w.shape(0);
  check_shape(r.w, "weight", {r.OUT, r.IN});
  check_shape(r.dy, "grad_y", {r.B, r.OUT});
  r.act = parse_activation(activation);
  const bool need_zy = r.act != Activation::identity || !z_obj.is_none() || !y_obj.is_none();
  r.z = need_zy ? float_input_like(z_obj, "z", r.dt, "grad_y") : r.dy;
  r.y = need_zy ? float_input_like(y_obj, "y", r.dt, "grad_y") : r.dy;
  check_shape(r.z, "z", {r.B, r.OUT});
  check_shape(r.y, "y", {r.B, r.OUT});
  check_finite_scalar(slope, "negative_slope");
  return r;
}

// grad_y, z, y (B,OUT); x (B,IN); weight (OUT,IN) -> (grad_x | None, grad_weight, grad_bias | None)
// grad_weight / grad_bias, when given, are accumulated into in place.
py::tuple linear_backward_entry(const py::handle& dy_obj, const py::handle& x_obj, const py::handle& w_obj,
                                const py::handle& z_obj, const py::handle& y_obj, const std::string& activation,
                                double slope, bool has_bias, bool need_grad_x, const py::handle& dw_obj,
                                const py::handle& db_obj) {
  LinearBackwardArgs r = checked_linear_backward_args(dy_obj, x_obj, w_obj, z_obj, y_obj, activation, slope);
  const DType dt = r.dt;
  py::array &dy = r.dy, &x = r.x, &w = r.w, &z = r.z, &y = r.y;
  const Activation act = r.act;
  const int64_t B = r.B, IN = r.IN, OUT = r.OUT;
  if (!has_bias && !db_obj.is_none()) throw py::value_error("grad_bias was given but has_bias is False");
  return dispatch(dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array dw, db;
    if (dw_obj.is_none()) {
      dw = empty<T>({OUT, IN});
      std::fill_n(ptr<T>(dw), OUT * IN, T(0));
    } else {
      dw = float_inout_like(dw_obj, "grad_weight", dt, "grad_y");
      check_shape(dw, "grad_weight", {OUT, IN});
      for (auto [in, name] : {std::pair{&dy, "grad_y"}, {&x, "x"}, {&w, "weight"}, {&z, "z"}, {&y, "y"}})
        check_no_overlap(dw, "grad_weight", *in, name);
    }
    if (has_bias) {
      if (db_obj.is_none()) {
        db = empty<T>({OUT});
        std::fill_n(ptr<T>(db), OUT, T(0));
      } else {
        db = float_inout_like(db_obj, "grad_bias", dt, "grad_y");
        check_shape(db, "grad_bias", {OUT});
        for (auto [in, name] : {std::pair{&dy, "grad_y"}, {&x, "x"}, {&w, "weight"}, {&z, "z"}, {&y, "y"}, {&dw, "grad_weight"}})
          check_no_overlap(db, "grad_bias", *in, name);
      }
    }
    py::array dx = need_grad_x ? py::array(empty<T>({B, IN})) : py::array();
    std::vector<T> workspace(act == Activation::identity ? 0 : static_cast<size_t>(B * OUT));
    {
      py::gil_scoped_release nogil;
      linear_backward<T>(need_grad_x ? ptr<T>(dx) : nullptr, ptr<T>(dw), has_bias ? ptr<T>(db) : nullptr,
                         workspace.data(), ptr<T>(dy), ptr<T>(x), ptr<T>(w), ptr<T>(z), ptr<T>(y), B, IN, OUT, act,
                         T(slope));
    }
    return py::make_tuple(need_grad_x ? py::object(dx) : py::none(), dw, has_bias ? py::object(db) : py::none());
  });
}

// ---------------------------------------------------------------- losses
// labels: int64, C-contiguous, shape (B,), every value in [0, C)
py::array checked_labels(const py::handle& obj, int64_t B, int64_t C) {
  py::array labels = as_array(obj, "labels");
  if (!labels.dtype().equal(py::dtype::of<int64_t>()))
    throw py::type_error(cat("labels must be class indices with dtype int64, got ", dtype_str(labels)));
  check_layout(labels, "labels");
  check_shape(labels, "labels", {B});
  const int64_t* l = static_cast<const int64_t*>(labels.data());
  for (int64_t i = 0; i < B; ++i)
    if (l[i] < 0 || l[i] >= C)
      throw py::value_error(cat("labels must be in [0, ", C, ") for logits with ", C, " classes; labels[", i, "] is ", l[i]));
  return labels;
}

// The checks of a cross-entropy loss, shared by the CPU and CUDA entries: logits (B,C), labels (B).
struct CrossEntropyArgs {
  DType dt;
  py::array logits, labels;
  bool mean;
  int64_t B, C;
};
CrossEntropyArgs checked_cross_entropy_args(const py::handle& logits_obj, const py::handle& labels_obj,
                                            double label_smoothing, const std::string& reduction) {
  CrossEntropyArgs r;
  r.logits = float_input(logits_obj, "logits", &r.dt);
  check_ndim(r.logits, "logits", 2);
  r.B = r.logits.shape(0), r.C = r.logits.shape(1);
  if (r.C == 0) throw py::value_error("logits must have at least one class (shape (B, C) with C >= 1), got shape " + shape_str(r.logits));
  r.labels = checked_labels(labels_obj, r.B, r.C);
  check_range(label_smoothing, "label_smoothing", 0.0, 1.0, true);
  r.mean = parse_reduction(reduction);
  if (r.mean && r.B == 0) throw py::value_error("cross_entropy_loss: an empty batch has no mean loss (logits has shape " + shape_str(r.logits) + ")");
  return r;
}

// logits (B,C), labels (B) -> (loss, grad_logits (B,C))
py::tuple cross_entropy_entry(const py::handle& logits_obj, const py::handle& labels_obj, double label_smoothing,
                              const std::string& reduction) {
  const CrossEntropyArgs r = checked_cross_entropy_args(logits_obj, labels_obj, label_smoothing, reduction);
  return dispatch(r.dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array grad = empty<T>({r.B, r.C});
    double total;
    {
      py::gil_scoped_release nogil;
      const T scale = r.mean ? T(1.0 / double(r.B)) : T(1);
      total = cross_entropy_forward_backward<T>(ptr<T>(grad), ptr<T>(r.logits), static_cast<const int64_t*>(r.labels.data()),
                                                r.B, r.C, T(label_smoothing), scale);
    }
    return py::make_tuple(r.mean ? total / double(r.B) : total, grad);
  });
}

// pred, target: same shape -> (loss, grad_pred); elementwise losses share this entry
template <double (*KernelF)(float*, const float*, const float*, int64_t, float),
          double (*KernelD)(double*, const double*, const double*, int64_t, double)>
py::tuple elementwise_loss_entry(const char* op, const char* pred_name, const py::handle& pred_obj,
                                 const py::handle& target_obj, const std::string& reduction) {
  DType dt;
  py::array pred = float_input(pred_obj, pred_name, &dt);
  py::array target = float_input_like(target_obj, "target", dt, pred_name);
  check_same_shape(target, "target", pred, pred_name);
  const bool mean = parse_reduction(reduction);
  const int64_t n = pred.size();
  if (mean && n == 0) throw py::value_error(cat(op, ": an empty batch has no mean loss (", pred_name, " has shape ", shape_str(pred), ")"));
  return dispatch(dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array grad(pred.dtype(), std::vector<py::ssize_t>(pred.shape(), pred.shape() + pred.ndim()));
    double total;
    {
      py::gil_scoped_release nogil;
      const T scale = mean ? T(1.0 / double(n)) : T(1);
      if constexpr (std::is_same_v<T, float>) total = KernelF(ptr<T>(grad), ptr<T>(pred), ptr<T>(target), n, scale);
      else total = KernelD(ptr<T>(grad), ptr<T>(pred), ptr<T>(target), n, scale);
    }
    return py::make_tuple(mean ? total / double(n) : total, grad);
  });
}

// ---------------------------------------------------------------- optimizers
// The checks of one SGD step, shared by the CPU and CUDA entries: param, grad, momentum_buffer (when
// momentum != 0) of one shape and dtype; param and momentum_buffer updated in place.
struct SgdArrays {
  DType dt;
  py::array param, grad;
  std::optional<py::array> buf;
};
SgdArrays checked_sgd_args(const py::handle& param_obj, const py::handle& grad_obj, const py::handle& buf_obj, double lr,
                           double momentum, double dampening, bool nesterov, double weight_decay, int64_t step) {
  SgdArrays r;
  r.param = float_input(param_obj, "param", &r.dt);
  check_writeable(r.param, "param");
  r.grad = float_input_like(grad_obj, "grad", r.dt, "param");
  check_same_shape(r.grad, "grad", r.param, "param");
  check_no_overlap(r.param, "param", r.grad, "grad");
  check_range(lr, "lr", 0.0, INFINITY, false);
  check_range(momentum, "momentum", 0.0, INFINITY, false);
  check_range(dampening, "dampening", 0.0, INFINITY, false);
  check_range(weight_decay, "weight_decay", 0.0, INFINITY, false);
  if (step < 1) throw py::value_error(cat("step must be >= 1 (it counts this update), got ", step));
  if (nesterov && (momentum <= 0 || dampening != 0))
    throw py::value_error("nesterov momentum requires momentum > 0 and dampening == 0");
  if (momentum != 0) {
    if (buf_obj.is_none()) throw py::value_error("momentum_buffer is required when momentum != 0");
    r.buf = float_inout_like(buf_obj, "momentum_buffer", r.dt, "param");
    check_same_shape(*r.buf, "momentum_buffer", r.param, "param");
    check_no_overlap(*r.buf, "momentum_buffer", r.param, "param");
    check_no_overlap(*r.buf, "momentum_buffer", r.grad, "grad");
  }
  return r;
}

void sgd_step_entry(const py::handle& param_obj, const py::handle& grad_obj, const py::handle& buf_obj, double lr,
                    double momentum, double dampening, bool nesterov, double weight_decay, int64_t step) {
  const SgdArrays r = checked_sgd_args(param_obj, grad_obj, buf_obj, lr, momentum, dampening, nesterov, weight_decay, step);
  dispatch(r.dt, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release nogil;
    sgd_step<T>(ptr<T>(r.param), ptr_or_null<T>(r.buf), ptr<T>(r.grad), r.param.size(), T(lr), T(momentum), T(dampening),
                nesterov, T(weight_decay), step == 1);
  });
}

// The checks of one Adam step, shared by the CPU and CUDA entries: param, grad, exp_avg, exp_avg_sq of
// one shape and dtype, no two sharing memory; all but grad updated in place.
struct AdamArrays {
  DType dt;
  py::array param, grad, m, v;
};
AdamArrays checked_adam_args(const py::handle& param_obj, const py::handle& grad_obj, const py::handle& m_obj,
                             const py::handle& v_obj, int64_t step, double lr, double beta1, double beta2, double eps,
                             double weight_decay) {
  AdamArrays r;
  r.param = float_input(param_obj, "param", &r.dt);
  check_writeable(r.param, "param");
  r.grad = float_input_like(grad_obj, "grad", r.dt, "param");
  r.m = float_inout_like(m_obj, "exp_avg", r.dt, "param");
  r.v = float_inout_like(v_obj, "exp_avg_sq", r.dt, "param");
  check_same_shape(r.grad, "grad", r.param, "param");
  check_same_shape(r.m, "exp_avg", r.param, "param");
  check_same_shape(r.v, "exp_avg_sq", r.param, "param");
  const std::pair<const py::array*, const char*> args[] = {{&r.param, "param"}, {&r.grad, "grad"}, {&r.m, "exp_avg"}, {&r.v, "exp_avg_sq"}};
  for (size_t i = 0; i < 4; ++i)
    for (size_t j = i + 1; j < 4; ++j) check_no_overlap(*args[i].first, args[i].second, *args[j].first, args[j].second);
  if (step < 1) throw py::value_error(cat("step must be >= 1 (it counts this update), got ", step));
  check_range(lr, "lr", 0.0, INFINITY, false);
  check_range(beta1, "beta1", 0.0, 1.0, false);
  check_range(beta2, "beta2", 0.0, 1.0, false);
  check_range(eps, "eps", 0.0, INFINITY, false);
  check_range(weight_decay, "weight_decay", 0.0, INFINITY, false);
  return r;
}

void adam_step_entry(const py::handle& param_obj, const py::handle& grad_obj, const py::handle& m_obj, const py::handle& v_obj,
                     int64_t step, double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled) {
  const AdamArrays r = checked_adam_args(param_obj, grad_obj, m_obj, v_obj, step, lr, beta1, beta2, eps, weight_decay);
  dispatch(r.dt, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release nogil;
    adam_step<T>(ptr<T>(r.param), ptr<T>(r.m), ptr<T>(r.v), ptr<T>(r.grad), r.param.size(), T(lr), T(beta1), T(beta2),
                 T(eps), T(weight_decay), decoupled, step);
  });
}

// ---------------------------------------------------------------- the whole training step
// ---------------------------------------------------------------- what the CPU and CUDA train plans share

template <typename Kind, size_t N>
Kind lookup_kind(const std::pair<const char*, Kind> (&table)[N], const std::string& name, const char* what) {
  std::string names;
  for (const auto& [n, k] : table) {
    if (name == n) return k;
    names += cat(names.empty() ? "" : ", ", "'", n, "'");
  }
  throw py::value_error(cat(what, " must be one of ", names, "; got '", name, "'"));
}

[[noreturn]] void throw_floating_point(const std::string& message) {
  PyErr_SetString(PyExc_FloatingPointError, message.c_str());
  throw py::error_already_set();
}

double hyper_number(const py::handle& h, const char* name, int64_t group) {
  const double v = PyFloat_AsDouble(h.ptr());
  if (v == -1.0 && PyErr_Occurred()) throw py::error_already_set();
  if (!std::isfinite(v)) throw py::value_error(cat("param group ", group, ": ", name, " must be finite, got ", v));
  return v;
}

// hyper: one tuple per param group, (lr, momentum, dampening, nesterov, weight_decay) for SGD,
// (lr, beta1, beta2, eps, weight_decay) for Adam / AdamW; every value checked.
std::vector<OptimizerHyper> parse_hyper(const py::sequence& hyper, int64_t groups, bool sgd) {
  if (int64_t(py::len(hyper)) != groups) throw py::value_error(cat("hyper must have one tuple per param group (", groups, "), got ", py::len(hyper)));
  std::vector<OptimizerHyper> out(static_cast<size_t>(groups));
  for (int64_t g = 0; g < groups; ++g) {
    const py::sequence t = hyper[size_t(g)].cast<py::sequence>();
    if (py::len(t) != 5) throw py::value_error(cat("hyper[", g, "] must have 5 entries, got ", py::len(t)));
    OptimizerHyper& h = out[size_t(g)];
    auto at_least_zero = [&](size_t i, const char* name, double hi = INFINITY) {
      const double v = hyper_number(t[i], name, g);
      if (v < 0 || v >= hi) throw py::value_error(cat("param group ", g, ": ", name, " must be in [0, ", hi, "), got ", v));
      return v;
    };
    h.lr = at_least_zero(0, "lr");
    h.weight_decay = at_least_zero(4, "weight_decay");
    if (sgd) {
      h.momentum = at_least_zero(1, "momentum");
      h.dampening = at_least_zero(2, "dampening");
      const int nesterov = PyObject_IsTrue(t[3].ptr());
      if (nesterov < 0) throw py::error_already_set();
      h.nesterov = nesterov == 1;
      if (h.nesterov && (h.momentum <= 0 || h.dampening != 0))
        throw py::value_error(cat("param group ", g, ": nesterov momentum requires momentum > 0 and dampening == 0"));
    } else {
      h.beta1 = at_least_zero(1, "beta1", 1.0);
      h.beta2 = at_least_zero(2, "beta2", 1.0);
      h.eps = at_least_zero(3, "eps");
    }
  }
  return out;
}

// steps: one count per parameter (SGD: 1 on the momentum buffer's first update, else 2; Adam: this
// update's number, from 1). Every count is checked before any slot is written.
template <typename T>
void apply_hyper(std::vector<ParamSlot<T>>& slots, const py::sequence& steps, const std::vector<std::string>& names,
                 const std::vector<int64_t>& slot_group, const std::vector<OptimizerHyper>& group_hyper, bool sgd) {
  if (py::len(steps) != names.size()) throw py::value_error(cat("steps must have one count per parameter (", names.size(), "), got ", py::len(steps)));
  std::vector<int64_t> counts;
  for (size_t s = 0; s < slots.size(); ++s) {
    const int64_t step = steps[s].cast<int64_t>();
    if (step < 1) throw py::value_error(cat("steps[", s, "] (", names[s], ") must be >= 1, got ", step));
    const OptimizerHyper& h = group_hyper[size_t(slot_group[s])];
    if (sgd && h.momentum != 0 && !slots[s].state_a)
      throw py::value_error(cat(names[s], " has no momentum_buffer, but its group's momentum is ", h.momentum));
    counts.push_back(step);
  }
  for (size_t s = 0; s < slots.size(); ++s) {
    slots[s].hyper = group_hyper[size_t(slot_group[s])];
    slots[s].step = counts[s];
  }
}

struct PlanKinds {
  LossKind loss;
  OptimizerKind optimizer;
  bool mean;  // reduction "mean" (else "sum")
};

// The settings a TrainPlan (CPU or CUDA) is built with, each checked.
PlanKinds parse_plan_kinds(const py::sequence& layers, const std::string& loss, const std::string& optimizer,
                           double label_smoothing, const std::string& reduction, int64_t groups) {
  static const std::pair<const char*, LossKind> loss_kinds[] = {
      {"cross_entropy", LossKind::cross_entropy}, {"mse", LossKind::mse}, {"bce_with_logits", LossKind::bce_with_logits}};
  static const std::pair<const char*, OptimizerKind> optimizer_kinds[] = {
      {"sgd", OptimizerKind::sgd}, {"adam", OptimizerKind::adam}, {"adamw", OptimizerKind::adamw}};
  PlanKinds k{lookup_kind(loss_kinds, loss, "loss"), lookup_kind(optimizer_kinds, optimizer, "optimizer"), true};
  check_range(label_smoothing, "label_smoothing", 0.0, 1.0, true);
  k.mean = parse_reduction(reduction);
  if (groups < 1) throw py::value_error(cat("groups must be >= 1, got ", groups));
  if (py::len(layers) == 0) throw py::value_error("a TrainPlan needs at least one layer");
  return k;
}

struct LayerEntry {
  Activation act;
  double slope;
  bool has_bias;
};

// One entry of a TrainPlan's layers: (activation, negative_slope, has_bias).
LayerEntry parse_layer_entry(const py::handle& item) {
  const py::tuple layer = py::reinterpret_borrow<py::object>(item).cast<py::tuple>();
  if (layer.size() != 3) throw py::value_error("each layers entry must be (activation, negative_slope, has_bias)");
  LayerEntry e{parse_activation(layer[0].cast<std::string>()), layer[1].cast<double>(), layer[2].cast<bool>()};
  check_finite_scalar(e.slope, "negative_slope");
  return e;
}

// A refused or overflowed step as Sequential.train_step reports it; nothing for StepStatus::ok.
void raise_for_status(const StepResult& result, const std::vector<std::string>& names) {
  switch (result.status) {
    case StepStatus::ok:
      return;
    case StepStatus::loss_not_finite:
      throw_floating_point(cat("the loss is ", py::repr(py::float_(result.loss)).cast<std::string>(),
                               "; the weights were not updated"));
    case StepStatus::grad_not_finite:
      throw_floating_point(cat("the gradient of ", names[result.slot], " is not finite; the weights were not updated"));
    case StepStatus::param_not_finite:
      throw_floating_point(cat("the optimizer update made ", names[result.slot], " non-finite (is the learning rate too "
                               "large?); the weights were overwritten: reload them from a checkpoint"));
  }
}

// A TrainPlan over a model's own arrays. The constructor checks every array once (dtype, layout,
// writeability, shapes chaining layer to layer, no two sharing memory) and keeps a reference to each,
// so the pointers the plan holds stay valid as long as it lives. step() checks the batch, the
// targets, the hyper-parameters and the step counts before anything is written, then runs forward,
// loss, backward and update in one native call without the GIL.
class TrainPlanEntry {
 public:
  // layers [(activation, negative_slope, has_bias)], one per Linear layer, in order.
  // params [(name, data, grad, state_a, state_b, group)] in the model's order: each layer's weight
  //   (OUT,IN), then its bias (OUT,) when it has one. state_a: SGD's momentum_buffer (None without
  //   momentum) or Adam's exp_avg; state_b: Adam's exp_avg_sq (None for SGD); group in [0, groups).
  TrainPlanEntry(const py::sequence& layers, const py::sequence& params, const std::string& loss,
                 const std::string& optimizer, double label_smoothing, const std::string& reduction, int64_t groups)
      : groups_(groups) {
    const PlanKinds kinds = parse_plan_kinds(layers, loss, optimizer, label_smoothing, reduction, groups);
    loss_ = kinds.loss;
    optimizer_ = kinds.optimizer;
    const bool mean = kinds.mean;

    // Each parameter: data, grad and state of one float dtype and data's shape, writeable, C-contiguous.
    const bool adam = optimizer_ != OptimizerKind::sgd;
    std::vector<py::array> data, grad;
    std::vector<std::optional<py::array>> state_a, state_b;
    std::vector<std::pair<py::array, std::string>> written;  // for the overlap check
    for (const py::handle item : params) {
      const py::tuple entry = py::reinterpret_borrow<py::object>(item).cast<py::tuple>();
      if (entry.size() != 6) throw py::value_error("each params entry must be (name, data, grad, state_a, state_b, group)");
      const std::string name = entry[0].cast<std::string>(), grad_name = name + ".grad";
      if (data.empty()) dtype_ = float_dtype(as_array(entry[1], name.c_str()), name.c_str());
      data.push_back(float_inout_like(entry[1], name.c_str(), dtype_, "the first parameter"));
      grad.push_back(float_inout_like(entry[2], grad_name.c_str(), dtype_, "the first parameter"));
      check_same_shape(grad.back(), grad_name.c_str(), data.back(), name.c_str());
      written.emplace_back(data.back(), name);
      written.emplace_back(grad.back(), grad_name);
      auto state = [&](const py::handle obj, const char* key, bool required) -> std::optional<py::array> {
        const std::string state_name = cat("state '", key, "' of ", name);
        if (obj.is_none()) {
          if (required) throw py::value_error(cat(state_name, " is required"));
          return std::nullopt;
        }
        py::array a = float_inout_like(obj, state_name.c_str(), dtype_, "the parameters");
        check_same_shape(a, state_name.c_str(), data.back(), name.c_str());
        written.emplace_back(a, state_name);
        return a;
      };
      state_a.push_back(state(entry[3], adam ? "exp_avg" : "momentum_buffer", adam));
      if (!adam && !entry[4].is_none()) throw py::value_error(cat("SGD keeps one state array per parameter: state_b of ", name, " must be None"));
      state_b.push_back(state(entry[4], "exp_avg_sq", adam));
      const int64_t group = entry[5].cast<int64_t>();
      if (group < 0 || group >= groups) throw py::value_error(cat("the group of ", name, " must be in [0, ", groups, "), got ", group));
      names_.push_back(name);
      slot_group_.push_back(group);
      for (int k = 1; k <= 4; ++k) keep_alive_.push_back(entry[k]);
    }
    for (size_t i = 0; i < written.size(); ++i)
      for (size_t j = i + 1; j < written.size(); ++j)
        check_no_overlap(written[i].first, written[i].second.c_str(), written[j].first, written[j].second.c_str());

    // Each layer takes the next weight (OUT,IN) whose IN is the OUT before, then its bias (OUT,).
    struct LayerSpec { Activation act; double slope; size_t weight; std::optional<size_t> bias; };
    std::vector<LayerSpec> specs;
    size_t next = 0;
    for (const py::handle item : layers) {
      const LayerEntry layer = parse_layer_entry(item);
      LayerSpec spec{layer.act, layer.slope, next, std::nullopt};
      const bool has_bias = layer.has_bias;
      if (next + (has_bias ? 2 : 1) > data.size())
        throw py::value_error(cat("params has ", data.size(), " entries, fewer than the layers' weights and biases"));
      const py::array& w = data[next++];
      check_ndim(w, names_[spec.weight].c_str(), 2);
      if (w.shape(0) < 1 || w.shape(1) < 1)
        throw py::value_error(cat(names_[spec.weight], " must have at least one row and one column, got shape ", shape_str(w)));
      if (!specs.empty() && w.shape(1) != out_features_)
        throw py::value_error(cat(names_[spec.weight], " has shape ", shape_str(w), ": its in_features must be ",
                                  out_features_, ", the out_features of the layer before"));
      if (specs.empty()) in_features_ = w.shape(1);
      out_features_ = w.shape(0);
      if (has_bias) {
        spec.bias = next++;
        check_shape(data[*spec.bias], names_[*spec.bias].c_str(), {out_features_});
      }
      specs.push_back(spec);
    }
    if (next != data.size()) throw py::value_error(cat("params has ", data.size(), " entries; the layers take ", next));

    dispatch(dtype_, [&](auto tag) {
      using T = decltype(tag);
      std::vector<ParamSlot<T>> slots;
      for (size_t s = 0; s < data.size(); ++s)
        slots.push_back({ptr<T>(data[s]), ptr<T>(grad[s]), ptr_or_null<T>(state_a[s]), ptr_or_null<T>(state_b[s]),
                         int64_t(data[s].size()), OptimizerHyper{}, 1});
      std::vector<DenseLayer<T>> dense;
      for (const LayerSpec& l : specs) {
        const ParamSlot<T>& w = slots[l.weight];
        dense.push_back({w.param, l.bias ? slots[*l.bias].param : nullptr, w.grad, l.bias ? slots[*l.bias].grad : nullptr,
                         data[l.weight].shape(1), data[l.weight].shape(0), l.act, T(l.slope)});
      }
      plan<T>() = std::make_unique<TrainPlan<T>>(std::move(dense), std::move(slots),
                                                 LossSpec{loss_, label_smoothing, mean}, optimizer_);
    });
  }

  // x (B,IN); target: labels (B,) int64 in [0, OUT) for cross-entropy, else (B,OUT) of x's dtype.
  // hyper: one tuple per param group, (lr, momentum, dampening, nesterov, weight_decay) for SGD,
  // (lr, beta1, beta2, eps, weight_decay) for Adam / AdamW. steps: one count per parameter (SGD: 1 on
  // the momentum buffer's first update, else 2; Adam: this update's number, from 1).
  // Returns the loss; raises FloatingPointError as Sequential.train_step does.
  double step(const py::handle& x_obj, const py::handle& target_obj, const py::sequence& hyper, const py::sequence& steps,
              double max_grad_norm) {
    if (!(max_grad_norm >= 0)) throw py::value_error(cat("max_grad_norm must be >= 0 (0: no clipping), got ", max_grad_norm));
    if (busy_) throw std::runtime_error("TrainPlan.step is already running in another thread");
    py::array x = as_array(x_obj, "x");
    check_dtype(x, "x", dtype_, "the parameters");
    check_layout(x, "x");
    check_ndim(x, "x", 2);
    const int64_t B = x.shape(0);
    if (B == 0) throw py::value_error(cat("train_step needs a non-empty batch, got x of shape ", shape_str(x)));
    if (x.shape(1) != in_features_)
      throw py::value_error(cat("x must have ", in_features_, " features in its last dimension, got shape ", shape_str(x)));
    py::array target;
    if (loss_ == LossKind::cross_entropy) {
      target = checked_labels(target_obj, B, out_features_);
    } else {
      target = float_input_like(target_obj, "target", dtype_, "x");
      if (target.ndim() != 2 || target.shape(0) != B || target.shape(1) != out_features_)
        throw py::value_error(cat("target must have the same shape as ", loss_ == LossKind::mse ? "pred" : "logits",
                                  " (", B, ", ", out_features_, "), got ", shape_str(target)));
    }
    const std::vector<OptimizerHyper> group_hyper = parse_hyper(hyper, groups_, optimizer_ == OptimizerKind::sgd);
    dispatch(dtype_, [&](auto tag) {
      apply_hyper(plan<decltype(tag)>()->params(), steps, names_, slot_group_, group_hyper, optimizer_ == OptimizerKind::sgd);
    });
    return dispatch(dtype_, [&](auto tag) -> double {
      using T = decltype(tag);
      TrainPlan<T>& p = *plan<T>();
      if (B > std::numeric_limits<int64_t>::max() / int64_t(sizeof(T)) / p.row_elements())
        throw py::value_error(cat("a batch of ", B, " rows needs a workspace too large to allocate"));
      const bool labels = loss_ == LossKind::cross_entropy;
      StepResult result;
      busy_ = true;
      updated_ = false;
      try {
        py::gil_scoped_release nogil;
        result = p.step(ptr<T>(x), labels ? ptr<int64_t>(target) : nullptr, labels ? nullptr : ptr<T>(target), B,
                        max_grad_norm);
      } catch (...) {
        busy_ = false;
        throw;
      }
      busy_ = false;
      updated_ = result.status == StepStatus::ok || result.status == StepStatus::param_not_finite;
      correct_ = result.correct;
      grad_norm_ = result.grad_norm;
      raise_for_status(result, names_);
      return result.loss;
    });
  }

  // Many steps in one call (fit's epochs): batch after batch gathered from the whole training set.
  // x (N,IN) of the parameters' dtype; target: labels (N,) int64 for cross-entropy, else (N,OUT) of x's
  // dtype. order: None (batch b is rows b*batch_size .. of x, in place) or (M,) int64 row indices in
  // [0, N): batch b is order[b*batch_size : (b+1)*batch_size] (the last one may be shorter). Runs
  // batches first_batch .. first_batch+n_batches-1, which must exist. hyper, steps: as step(), for the
  // first of them; later steps count on (Adam +1 per update, SGD 2 after a momentum buffer's first).
  // lrs: None, or (n_batches, groups) float64, finite and >= 0: batch first_batch+j's lr per group.
  // Everything is checked (the labels and indices the batches use included) before the first step.
  // Returns (losses (n_batches,) float64, correct (n_batches,) int64), one entry per batch. A refused
  // step raises as step() does, after batches_done batches; updated, correct and grad_norm are the last
  // step's, as after step().
  py::tuple run_batches(const py::handle& x_obj, const py::handle& target_obj, const py::handle& order_obj,
                        int64_t batch_size, int64_t first_batch, int64_t n_batches, const py::sequence& hyper,
                        const py::sequence& steps, double max_grad_norm, const py::handle& lrs_obj) {
    if (busy_) throw std::runtime_error("TrainPlan.step is already running in another thread");
    batches_done_ = 0;
    if (!(max_grad_norm >= 0)) throw py::value_error(cat("max_grad_norm must be >= 0 (0: no clipping), got ", max_grad_norm));
    py::array x = as_array(x_obj, "x");
    check_dtype(x, "x", dtype_, "the parameters");
    check_layout(x, "x");
    check_ndim(x, "x", 2);
    if (x.shape(1) != in_features_)
      throw py::value_error(cat("x must have ", in_features_, " features in its last dimension, got shape ", shape_str(x)));
    const int64_t N = x.shape(0);
    const bool labels = loss_ == LossKind::cross_entropy;
    py::array target;
    if (labels) {
      target = as_array(target_obj, "labels");
      if (!target.dtype().equal(py::dtype::of<int64_t>()))
        throw py::type_error(cat("labels must be class indices with dtype int64, got ", dtype_str(target)));
      check_layout(target, "labels");
      check_shape(target, "labels", {N});
    } else {
      target = float_input_like(target_obj, "target", dtype_, "x");
      check_shape(target, "target", {N, out_features_});
    }
    std::optional<py::array> order;
    if (!order_obj.is_none()) {
      order = as_array(order_obj, "order");
      if (!order->dtype().equal(py::dtype::of<int64_t>()))
        throw py::type_error(cat("order must hold row indices with dtype int64, got ", dtype_str(*order)));
      check_layout(*order, "order");
      check_ndim(*order, "order", 1);
    }
    if (batch_size < 1) throw py::value_error(cat("batch_size must be >= 1, got ", batch_size));
    const int64_t rows = order ? order->shape(0) : N, batches = rows / batch_size + (rows % batch_size != 0);
    if (first_batch < 0 || n_batches < 0 || first_batch > batches || n_batches > batches - first_batch)
      throw py::value_error(cat("batches ", first_batch, " .. ", first_batch, " + ", n_batches, " do not exist: ", rows,
                                " rows make ", batches, " batches of ", batch_size));
    std::optional<py::array> lrs;
    if (!lrs_obj.is_none()) {
      lrs = as_array(lrs_obj, "lrs");
      if (!lrs->dtype().equal(py::dtype::of<double>())) throw py::type_error(cat("lrs must have dtype float64, got ", dtype_str(*lrs)));
      check_layout(*lrs, "lrs");
      check_shape(*lrs, "lrs", {n_batches, groups_});
      const double* v = ptr<double>(*lrs);
      for (int64_t i = 0; i < n_batches * groups_; ++i)
        if (!(std::isfinite(v[i]) && v[i] >= 0))
          throw py::value_error(cat("lrs[", i / groups_, ", ", i % groups_, "] (the lr of param group ", i % groups_,
                                    " in batch ", first_batch + i / groups_, ") must be finite and >= 0, got ", v[i]));
    }
    // The rows these batches use: their indices, then their labels.
    const int64_t begin = first_batch * batch_size, end = first_batch + n_batches == batches ? rows : (first_batch + n_batches) * batch_size;
    const int64_t* index = order ? ptr<int64_t>(*order) : nullptr;
    for (int64_t i = begin; index && i < end; ++i)
      if (index[i] < 0 || index[i] >= N)
        throw py::value_error(cat("order[", i, "] is ", index[i], ": row indices must be in [0, ", N, ") for x of shape ", shape_str(x)));
    if (labels) {
      const int64_t* l = ptr<int64_t>(target);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t r = index ? index[i] : i;
        if (l[r] < 0 || l[r] >= out_features_)
          throw py::value_error(cat("labels must be in [0, ", out_features_, ") for logits with ", out_features_,
                                    " classes; labels[", r, "] is ", l[r]));
      }
    }
    const int64_t B = std::min(batch_size, rows);
    if (B > std::numeric_limits<int64_t>::max() / int64_t(sizeof(double)) / std::max({row_elements(), in_features_, out_features_}))
      throw py::value_error(cat("a batch of ", B, " rows needs a workspace too large to allocate"));
    const std::vector<OptimizerHyper> group_hyper = parse_hyper(hyper, groups_, optimizer_ == OptimizerKind::sgd);
    dispatch(dtype_, [&](auto tag) {
      apply_hyper(plan<decltype(tag)>()->params(), steps, names_, slot_group_, group_hyper, optimizer_ == OptimizerKind::sgd);
    });

    py::array_t<double> losses = empty<double>({n_batches});
    py::array_t<int64_t> correct = empty<int64_t>({n_batches});
    if (n_batches == 0) return py::make_tuple(losses, correct);
    const BatchRun run = dispatch(dtype_, [&](auto tag) -> BatchRun {
      using T = decltype(tag);
      const BatchSource<T> src{ptr<T>(x), labels ? ptr<int64_t>(target) : nullptr, labels ? nullptr : ptr<T>(target),
                               index, rows, batch_size, in_features_, out_features_};
      BatchBuffers<T>& buf = buffers<T>();
      batches_reserve(buf, src);
      busy_ = true;
      updated_ = false;
      try {
        py::gil_scoped_release nogil;
        const BatchRun r = fuseprop::run_batches(*plan<T>(), buf, ptr<double>(losses), ptr<int64_t>(correct), src,
                                                 first_batch, n_batches, lrs ? ptr<double>(*lrs) : nullptr,
                                                 slot_group_.data(), groups_, optimizer_, max_grad_norm);
        busy_ = false;
        return r;
      } catch (...) {
        busy_ = false;
        throw;
      }
    });
    batches_done_ = run.done;
    updated_ = run.last.status == StepStatus::ok || run.last.status == StepStatus::param_not_finite;
    correct_ = run.last.correct;
    grad_norm_ = run.last.grad_norm;
    raise_for_status(run.last, names_);
    return py::make_tuple(losses, correct);
  }

  // A new (B,OUT) array: the gradient of the last step's loss with respect to the model's output.
  py::array loss_grad() const {
    if (busy_) throw std::runtime_error("TrainPlan.step is running in another thread");
    return dispatch(dtype_, [&](auto tag) -> py::array {
      using T = decltype(tag);
      const TrainPlan<T>& p = *plan<T>();
      if (p.steps() == 0) throw std::runtime_error("TrainPlan.loss_grad: no step has run yet");
      py::array out = empty<T>({p.last_batch(), out_features_});
      std::copy_n(p.loss_grad(), p.last_batch() * out_features_, ptr<T>(out));
      return out;
    });
  }

  int64_t allocations() const { return dispatch(dtype_, [&](auto tag) { return plan<decltype(tag)>()->allocations(); }); }
  int64_t capacity() const { return dispatch(dtype_, [&](auto tag) { return plan<decltype(tag)>()->capacity(); }); }
  int64_t steps() const { return dispatch(dtype_, [&](auto tag) { return plan<decltype(tag)>()->steps(); }); }
  bool updated() const { return updated_; }
  int64_t correct() const { return correct_; }
  double grad_norm() const { return grad_norm_; }
  int64_t batches_done() const { return batches_done_; }

 private:
  template <typename T>
  std::unique_ptr<TrainPlan<T>>& plan() {
    if constexpr (std::is_same_v<T, float>) return f32_; else return f64_;
  }
  template <typename T>
  const std::unique_ptr<TrainPlan<T>>& plan() const {
    if constexpr (std::is_same_v<T, float>) return f32_; else return f64_;
  }

  template <typename T>
  BatchBuffers<T>& buffers() {
    if constexpr (std::is_same_v<T, float>) return f32_batches_; else return f64_batches_;
  }
  int64_t row_elements() const { return dispatch(dtype_, [&](auto tag) { return plan<decltype(tag)>()->row_elements(); }); }

  std::unique_ptr<TrainPlan<float>> f32_;
  std::unique_ptr<TrainPlan<double>> f64_;
  BatchBuffers<float> f32_batches_;       // run_batches gathers each batch here
  BatchBuffers<double> f64_batches_;
  int64_t batches_done_ = 0;              // the last run_batches' batches whose step returned ok
  DType dtype_ = DType::f32;
  LossKind loss_ = LossKind::cross_entropy;
  OptimizerKind optimizer_ = OptimizerKind::sgd;
  int64_t groups_ = 1, in_features_ = 0, out_features_ = 0;
  std::vector<std::string> names_;        // per parameter, for messages
  std::vector<int64_t> slot_group_;       // per parameter, its param group
  std::vector<py::object> keep_alive_;    // every array the plan points into
  bool busy_ = false;                     // a step() runs (without the GIL): a second one must not start
  bool updated_ = false;                  // the last step() wrote the update (it may have raised after it)
  double grad_norm_ = 0;                  // the last clipped step's global gradient norm, before clipping
  int64_t correct_ = 0;                   // cross-entropy: the last step's rows predicted right (argmax == label)
};

std::string compiler_string() {
#if defined(__clang__)
  return cat("clang ", __clang_major__, ".", __clang_minor__, ".", __clang_patchlevel__);
#elif defined(__GNUC__)
  return cat("gcc ", __GNUC__, ".", __GNUC_MINOR__, ".", __GNUC_PATCHLEVEL__);
#elif defined(_MSC_VER)
  return cat("msvc ", _MSC_VER);
#else
  return "unknown";
#endif
}

std::string arch_string() {
#if defined(__x86_64__) || defined(_M_X64)
  return "x86_64";
#elif defined(__aarch64__) || defined(_M_ARM64)
  return "aarch64";
#else
  return "other";
#endif
}

#if FUSEPROP_CUDA_COMPILED
// ---------------------------------------------------------------- CUDA: one op on the device, host arrays in and out
// Each entry checks its arguments exactly as the CPU entry does (the same checkers), then asks for a
// device, copies the inputs over, runs one op and copies the results back. They exist to test the
// CUDA kernels op by op against the reference; the copies make them no faster than the CPU. float32 only.

// The float32 check comes first, so a float64 array is a TypeError before the shared checks run.
void require_f32(const py::handle& obj, const char* name) {
  const py::array a = as_array(obj, name);
  if (!a.dtype().equal(py::dtype::of<float>()))
    throw py::type_error(cat(name, " must have dtype float32 (the CUDA backend is float32 only), got ", dtype_str(a)));
}

// RuntimeError "no CUDA device: <the runtime's reason>" (as fuseprop.cuda.status()) unless a device can be used.
void require_device() {
  const cuda::DeviceQuery q = cuda::query_devices();
  if (q.count == 0) throw std::runtime_error("no CUDA device: " + q.status);
}

cuda::DeviceBuffer to_device(const py::array& a) {
  cuda::DeviceBuffer d(size_t(a.nbytes()));
  d.copy_from_host(a.data());
  return d;
}

// a: op(a) (M,K); b: op(b) (K,N) -> (M,N)
py::array cuda_matmul_entry(const py::handle& a_obj, const py::handle& b_obj, bool trans_a, bool trans_b, bool tf32) {
  require_f32(a_obj, "a");
  py::array a = float_input(a_obj, "a");
  py::array b = float_input_like(b_obj, "b", DType::f32, "a");
  int64_t M, N, K;  // plain variables, not a structured binding: C++17 lambdas cannot capture one
  std::tie(M, N, K) = checked_matmul_shapes(a, b, trans_a, trans_b);
  py::array c = empty<float>({M, N});
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer da = to_device(a), db = to_device(b), dc(size_t(c.nbytes()));
    cuda::matmul(dc.as<float>(), da.as<float>(), db.as<float>(), M, N, K, a.shape(1), b.shape(1), N, trans_a, trans_b,
                 1.f, 0.f, tf32);
    dc.copy_to_host(ptr<void>(c));
  }
  return c;
}

// x (B,IN), weight (OUT,IN), bias (OUT) or None -> (y, z) both (B,OUT)
py::tuple cuda_linear_forward_entry(const py::handle& x_obj, const py::handle& w_obj, const py::handle& b_obj,
                                    const std::string& activation, double slope, bool tf32) {
  require_f32(x_obj, "x");
  const LinearForwardArgs r = checked_linear_forward_args(x_obj, w_obj, b_obj, activation, slope);
  py::array y = empty<float>({r.B, r.OUT}), z = empty<float>({r.B, r.OUT});
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer dx = to_device(r.x), dw = to_device(r.w), db = r.b ? to_device(*r.b) : cuda::DeviceBuffer();
    const cuda::DeviceBuffer dy(size_t(y.nbytes())), dz(size_t(z.nbytes()));
    cuda::linear_forward(dy.as<float>(), dz.as<float>(), dx.as<float>(), dw.as<float>(), r.b ? db.as<float>() : nullptr,
                         r.B, r.IN, r.OUT, r.act, float(slope), tf32);
    dy.copy_to_host(ptr<void>(y));
    dz.copy_to_host(ptr<void>(z));
  }
  return py::make_tuple(y, z);
}

// grad_y, z, y (B,OUT); x (B,IN); weight (OUT,IN) -> (grad_x (B,IN), grad_weight (OUT,IN), grad_bias (OUT) | None)
py::tuple cuda_linear_backward_entry(const py::handle& dy_obj, const py::handle& x_obj, const py::handle& w_obj,
                                     const py::handle& z_obj, const py::handle& y_obj, const std::string& activation,
                                     double slope, bool has_bias, bool tf32) {
  require_f32(dy_obj, "grad_y");
  const LinearBackwardArgs r = checked_linear_backward_args(dy_obj, x_obj, w_obj, z_obj, y_obj, activation, slope);
  py::array dx = empty<float>({r.B, r.IN}), dw = empty<float>({r.OUT, r.IN}), db = empty<float>({has_bias ? r.OUT : 0});
  std::fill_n(ptr<float>(dw), r.OUT * r.IN, 0.f);  // the kernels accumulate into dw and db
  std::fill_n(ptr<float>(db), db.size(), 0.f);
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_dy = to_device(r.dy), d_x = to_device(r.x), d_w = to_device(r.w), d_z = to_device(r.z),
                             d_y = to_device(r.y), d_dw = to_device(dw), d_db = to_device(db);
    const cuda::DeviceBuffer d_dx(size_t(dx.nbytes())),
        workspace(r.act == Activation::identity ? 0 : size_t(r.dy.nbytes()));
    cuda::linear_backward(d_dx.as<float>(), d_dw.as<float>(), has_bias ? d_db.as<float>() : nullptr,
                          workspace.as<float>(), d_dy.as<float>(), d_x.as<float>(), d_w.as<float>(), d_z.as<float>(),
                          d_y.as<float>(), r.B, r.IN, r.OUT, r.act, float(slope), tf32);
    d_dx.copy_to_host(ptr<void>(dx));
    d_dw.copy_to_host(ptr<void>(dw));
    d_db.copy_to_host(ptr<void>(db));
  }
  return py::make_tuple(dx, dw, has_bias ? py::object(db) : py::none());
}

// x: any shape, elementwise -> y
py::array cuda_activation_forward_entry(const py::handle& x_obj, const std::string& activation, double slope) {
  require_f32(x_obj, "x");
  py::array x = float_input(x_obj, "x");
  const Activation act = parse_activation(activation);
  check_finite_scalar(slope, "negative_slope");
  py::array y(x.dtype(), std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer dx = to_device(x), dy(size_t(y.nbytes()));
    cuda::activation_forward(dy.as<float>(), dx.as<float>(), x.size(), act, float(slope));
    dy.copy_to_host(ptr<void>(y));
  }
  return y;
}

// grad_y, x, y: same shape -> grad_x
py::array cuda_activation_backward_entry(const py::handle& dy_obj, const py::handle& x_obj, const py::handle& y_obj,
                                         const std::string& activation, double slope) {
  require_f32(dy_obj, "grad_y");
  py::array dy = float_input(dy_obj, "grad_y");
  py::array x = float_input_like(x_obj, "x", DType::f32, "grad_y");
  py::array y = float_input_like(y_obj, "y", DType::f32, "grad_y");
  check_same_shape(x, "x", dy, "grad_y");
  check_same_shape(y, "y", dy, "grad_y");
  const Activation act = parse_activation(activation);
  check_finite_scalar(slope, "negative_slope");
  py::array dx(dy.dtype(), std::vector<py::ssize_t>(dy.shape(), dy.shape() + dy.ndim()));
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_dy = to_device(dy), d_x = to_device(x), d_y = to_device(y), d_dx(size_t(dx.nbytes()));
    cuda::activation_backward(d_dx.as<float>(), d_dy.as<float>(), d_x.as<float>(), d_y.as<float>(), dy.size(), act,
                              float(slope));
    d_dx.copy_to_host(ptr<void>(dx));
  }
  return dx;
}

// logits (B,C), labels (B) -> (loss, grad_logits (B,C))
py::tuple cuda_cross_entropy_entry(const py::handle& logits_obj, const py::handle& labels_obj, double label_smoothing,
                                   const std::string& reduction) {
  require_f32(logits_obj, "logits");
  const CrossEntropyArgs r = checked_cross_entropy_args(logits_obj, labels_obj, label_smoothing, reduction);
  py::array grad = empty<float>({r.B, r.C});
  require_device();
  double total = 0;
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_logits = to_device(r.logits), d_labels = to_device(r.labels), d_grad(size_t(grad.nbytes())),
                             d_rows(size_t(r.B) * sizeof(double)), d_total(sizeof(double));
    const float scale = r.mean ? float(1.0 / double(r.B)) : 1.f;
    cuda::cross_entropy_forward_backward(d_total.as<double>(), d_grad.as<float>(), d_rows.as<double>(),
                                         d_logits.as<float>(), d_labels.as<int64_t>(), r.B, r.C, float(label_smoothing),
                                         scale);
    d_grad.copy_to_host(ptr<void>(grad));
    d_total.copy_to_host(&total);
  }
  return py::make_tuple(r.mean ? total / double(r.B) : total, grad);
}

// param, grad, momentum_buffer: same shape; param and momentum_buffer updated in place
void cuda_sgd_step_entry(const py::handle& param_obj, const py::handle& grad_obj, const py::handle& buf_obj, double lr,
                         double momentum, double dampening, bool nesterov, double weight_decay, int64_t step) {
  require_f32(param_obj, "param");
  const SgdArrays r = checked_sgd_args(param_obj, grad_obj, buf_obj, lr, momentum, dampening, nesterov, weight_decay, step);
  require_device();
  py::gil_scoped_release nogil;
  const cuda::DeviceBuffer d_param = to_device(r.param), d_grad = to_device(r.grad),
                           d_buf = r.buf ? to_device(*r.buf) : cuda::DeviceBuffer();
  cuda::sgd_step(d_param.as<float>(), r.buf ? d_buf.as<float>() : nullptr, d_grad.as<float>(), r.param.size(), float(lr),
                 float(momentum), float(dampening), nesterov, float(weight_decay), step == 1);
  d_param.copy_to_host(ptr<void>(r.param));
  if (r.buf) d_buf.copy_to_host(ptr<void>(*r.buf));
}

// param, grad, exp_avg, exp_avg_sq: same shape; all but grad updated in place
void cuda_adam_step_entry(const py::handle& param_obj, const py::handle& grad_obj, const py::handle& m_obj,
                          const py::handle& v_obj, int64_t step, double lr, double beta1, double beta2, double eps,
                          double weight_decay, bool decoupled) {
  require_f32(param_obj, "param");
  const AdamArrays r = checked_adam_args(param_obj, grad_obj, m_obj, v_obj, step, lr, beta1, beta2, eps, weight_decay);
  require_device();
  py::gil_scoped_release nogil;
  const cuda::DeviceBuffer d_param = to_device(r.param), d_grad = to_device(r.grad), d_m = to_device(r.m),
                           d_v = to_device(r.v);
  cuda::adam_step(d_param.as<float>(), d_m.as<float>(), d_v.as<float>(), d_grad.as<float>(), r.param.size(), float(lr),
                  float(beta1), float(beta2), float(eps), float(weight_decay), decoupled, step);
  d_param.copy_to_host(ptr<void>(r.param));
  d_m.copy_to_host(ptr<void>(r.m));
  d_v.copy_to_host(ptr<void>(r.v));
}

// ---------------------------------------------------------------- CUDA: the fused MLP (cuda/fused_mlp.h)
// The checks of a fused MLP pass: x (B,IN) float32 with B >= 1 and IN >= 1; weights[l] (OUT_l, IN_l) with IN_0 = IN
// and IN_l = OUT_{l-1}; biases[l] (OUT_l,) or None; activations[l] a name, the last one "identity"; and what the
// fused kernel needs besides (1 to 8 layers, each at most 128 wide), each failure a ValueError saying why.
struct FusedMlpArgs {
  py::array x;
  std::vector<py::array> w;
  std::vector<std::optional<py::array>> b;
  std::vector<cuda::FusedLayer> layers;  // the device pointers are filled in later
  int64_t B;
};
FusedMlpArgs checked_fused_mlp_args(const py::handle& x_obj, const py::sequence& weights, const py::sequence& biases,
                                    const py::sequence& activations, double slope) {
  FusedMlpArgs r;
  require_f32(x_obj, "x");
  r.x = float_input(x_obj, "x");
  check_ndim(r.x, "x", 2);
  r.B = r.x.shape(0);
  if (r.B == 0) throw py::value_error("x must have at least one row (a non-empty batch), got shape " + shape_str(r.x));
  if (r.x.shape(1) == 0) throw py::value_error("x must have at least one feature, got shape " + shape_str(r.x));
  check_finite_scalar(slope, "negative_slope");
  const size_t n = py::len(weights);
  if (py::len(biases) != n || py::len(activations) != n)
    throw py::value_error(cat("weights, biases and activations must have one entry per layer; got ", n, ", ",
                              py::len(biases), " and ", py::len(activations)));
  if (n < 1 || n > size_t(cuda::kFusedMlpMaxLayers))
    throw py::value_error(cat("the fused MLP takes 1 to ", cuda::kFusedMlpMaxLayers, " layers, got ", n));
  int64_t in = r.x.shape(1);
  for (size_t l = 0; l < n; ++l) {
    const std::string wn = cat("weights[", l, "]"), bn = cat("biases[", l, "]");
    require_f32(weights[l], wn.c_str());
    py::array w = float_input(weights[l], wn.c_str());
    check_ndim(w, wn.c_str(), 2);
    if (w.shape(1) != in)
      throw py::value_error(cat(wn, " must have shape (out_features, ", in, ") to take ", l ? "the layer before's output" : "x",
                                ", got ", shape_str(w)));
    const int64_t out = w.shape(0);
    if (out < 1 || out > cuda::kFusedMlpMaxWidth)
      throw py::value_error(cat("the fused MLP takes layers 1 to ", cuda::kFusedMlpMaxWidth, " wide; ", wn, " has shape ",
                                shape_str(w)));
    std::optional<py::array> b;
    if (!biases[l].is_none()) {
      require_f32(biases[l], bn.c_str());
      b = float_input(biases[l], bn.c_str());
      check_shape(*b, bn.c_str(), {out});
    }
    const Activation act = parse_activation(activations[l].cast<std::string>());
    if (l + 1 == n && act != Activation::identity)
      throw py::value_error(cat("the fused MLP's last layer gives the logits, so its activation must be 'identity', got '",
                                activations[l].cast<std::string>(), "'"));
    r.layers.push_back({nullptr, nullptr, nullptr, nullptr, in, out, act, float(slope)});
    r.w.push_back(w);
    r.b.push_back(b);
    in = out;
  }
  if (!cuda::fused_mlp_supported(r.layers.data(), int(n)))  // the checks above are its conditions
    throw py::value_error("the fused MLP does not take this network");
  return r;
}

// The layers' parameters on the device, and their gradients' buffers; fills r.layers' pointers.
struct FusedMlpDevice {
  std::vector<cuda::DeviceBuffer> w, b, dw, db;
  FusedMlpDevice(FusedMlpArgs& r, bool grads) {
    for (size_t l = 0; l < r.layers.size(); ++l) {
      cuda::FusedLayer& L = r.layers[l];
      w.push_back(to_device(r.w[l]));
      b.push_back(r.b[l] ? to_device(*r.b[l]) : cuda::DeviceBuffer());
      dw.emplace_back(grads ? size_t(r.w[l].nbytes()) : 0);
      db.emplace_back(grads && r.b[l] ? size_t(r.b[l]->nbytes()) : 0);
      L.w = w.back().as<float>(), L.b = b.back().as<float>(), L.dw = dw.back().as<float>(), L.db = db.back().as<float>();
    }
  }
};

// x (B,IN), labels (B) in [0, C), weights / biases / activations per layer ->
// (loss, correct, [grad_weight (OUT_l, IN_l)], [grad_bias (OUT_l,) or None]); the gradients are the batch's own.
py::tuple cuda_fused_mlp_forward_backward_entry(const py::handle& x_obj, const py::handle& labels_obj,
                                                const py::sequence& weights, const py::sequence& biases,
                                                const py::sequence& activations, double slope, double label_smoothing,
                                                const std::string& reduction, bool tf32) {
  FusedMlpArgs r = checked_fused_mlp_args(x_obj, weights, biases, activations, slope);
  const int64_t C = r.layers.back().out;
  const py::array labels = checked_labels(labels_obj, r.B, C);
  check_range(label_smoothing, "label_smoothing", 0.0, 1.0, true);
  const bool mean = parse_reduction(reduction);
  std::vector<py::array> dw, db;
  for (size_t l = 0; l < r.layers.size(); ++l) {
    dw.push_back(empty<float>({r.layers[l].out, r.layers[l].in}));
    db.push_back(r.b[l] ? py::array(empty<float>({r.layers[l].out})) : py::array());
  }
  require_device();
  double total = 0;
  int64_t correct = 0;
  {
    py::gil_scoped_release nogil;
    FusedMlpDevice dev(r, true);
    const cuda::DeviceBuffer d_x = to_device(r.x), d_labels = to_device(labels), d_total(sizeof(double)),
                             d_correct(sizeof(int64_t));
    const int n = int(r.layers.size());
    const cuda::DeviceBuffer workspace(cuda::fused_mlp_workspace_bytes(r.layers.data(), n, r.B));
    cuda::fused_mlp_forward_backward(d_total.as<double>(), d_correct.as<int64_t>(), r.layers.data(), n, d_x.as<float>(),
                                     d_labels.as<int64_t>(), r.B, float(label_smoothing),
                                     mean ? float(1.0 / double(r.B)) : 1.f, workspace.as<void>(), tf32);
    d_total.copy_to_host(&total);
    d_correct.copy_to_host(&correct);
    for (size_t l = 0; l < r.layers.size(); ++l) {
      dev.dw[l].copy_to_host(ptr<void>(dw[l]));
      if (r.b[l]) dev.db[l].copy_to_host(ptr<void>(db[l]));
    }
  }
  py::list dws, dbs;
  for (size_t l = 0; l < r.layers.size(); ++l) {
    dws.append(dw[l]);
    dbs.append(r.b[l] ? py::object(db[l]) : py::none());
  }
  return py::make_tuple(mean ? total / double(r.B) : total, correct, dws, dbs);
}

// x (B,IN), weights / biases / activations per layer -> logits (B, C)
py::array cuda_fused_mlp_forward_entry(const py::handle& x_obj, const py::sequence& weights, const py::sequence& biases,
                                       const py::sequence& activations, double slope, bool tf32) {
  FusedMlpArgs r = checked_fused_mlp_args(x_obj, weights, biases, activations, slope);
  py::array logits = empty<float>({r.B, r.layers.back().out});
  require_device();
  {
    py::gil_scoped_release nogil;
    FusedMlpDevice dev(r, false);
    const int n = int(r.layers.size());
    const cuda::DeviceBuffer d_x = to_device(r.x), d_logits(size_t(logits.nbytes())),
                             workspace(cuda::fused_mlp_workspace_bytes(r.layers.data(), n, r.B));
    cuda::fused_mlp_forward(d_logits.as<float>(), r.layers.data(), n, d_x.as<float>(), r.B, workspace.as<void>(), tf32);
    d_logits.copy_to_host(ptr<void>(logits));
  }
  return logits;
}
#endif

#if FUSEPROP_CUDA_COMPILED
// ---------------------------------------------------------------- CUDA: device arrays, DLPack, the device train plan
// A DeviceArray is a C-contiguous float32 or int64 array that another object's memory backs: device
// memory fuseprop allocated, a DLPack tensor another library lent (PyTorch, CuPy, JAX: kept alive, and
// its deleter called, when the last view goes), or, only to test the DLPack code without a GPU, host memory.

enum class ElemType { f32, i64 };

size_t elem_size(ElemType t) { return t == ElemType::f32 ? 4 : 8; }
const char* elem_name(ElemType t) { return t == ElemType::f32 ? "float32" : "int64"; }

struct Storage {
  int32_t device_type = dlpack::kDLCUDA;
  int32_t device_id = 0;
  cuda::DeviceBuffer device;                            // fuseprop's own device memory
  std::vector<unsigned char> host;                       // the host-memory test arrays
  dlpack::DLManagedTensor* legacy = nullptr;             // a tensor lent through DLPack ...
  dlpack::DLManagedTensorVersioned* versioned = nullptr; // ... (one of the two)
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
    if (legacy && legacy->deleter) legacy->deleter(legacy);
    if (versioned && versioned->deleter) versioned->deleter(versioned);
  }
};

struct DeviceArray {
  std::shared_ptr<Storage> storage;
  unsigned char* data = nullptr;
  std::vector<int64_t> shape;
  ElemType type = ElemType::f32;
  bool readonly = false;

  int64_t size() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  size_t nbytes() const { return size_t(size()) * elem_size(type); }
  bool on_cuda() const { return storage->device_type == dlpack::kDLCUDA; }
  std::string device() const { return on_cuda() ? cat("cuda:", storage->device_id) : std::string("cpu"); }
  template <typename T>
  T* as() const { return reinterpret_cast<T*>(data); }
};

bool is_device_array(const py::handle& obj) { return py::isinstance<DeviceArray>(obj); }

ElemType elem_type_of(const py::array& a, const char* name) {
  if (a.dtype().equal(py::dtype::of<float>())) return ElemType::f32;
  if (a.dtype().equal(py::dtype::of<int64_t>())) return ElemType::i64;
  throw py::type_error(cat(name, " must have dtype float32 or int64 (the CUDA backend's types), got ", dtype_str(a),
                           ": convert it first, e.g. x.astype(np.float32)"));
}

ElemType parse_elem_type(const py::handle& dtype) {
  const py::dtype dt = py::dtype::from_args(py::reinterpret_borrow<py::object>(dtype));
  if (dt.equal(py::dtype::of<float>())) return ElemType::f32;
  if (dt.equal(py::dtype::of<int64_t>())) return ElemType::i64;
  throw py::type_error(cat("dtype must be float32 or int64, got ", py::str(dt).cast<std::string>()));
}

std::shared_ptr<DeviceArray> device_empty(const std::vector<int64_t>& shape, ElemType type) {
  for (int64_t d : shape)
    if (d < 0) throw py::value_error(cat("shape must not have negative dimensions, got ", dims_str(shape)));
  auto a = std::make_shared<DeviceArray>();
  a->storage = std::make_shared<Storage>();
  a->storage->device_id = cuda::current_device();
  a->shape = shape;
  a->type = type;
  a->storage->device = cuda::DeviceBuffer(a->nbytes());
  a->data = a->storage->device.as<unsigned char>();
  return a;
}

// A host ndarray of float32 or int64, copied to the device through pinned staging.
std::shared_ptr<DeviceArray> device_from_numpy(const py::handle& obj, const char* name) {
  const py::array a = as_array(obj, name);
  const ElemType type = elem_type_of(a, name);
  check_layout(a, name);
  require_device();
  auto d = device_empty(std::vector<int64_t>(a.shape(), a.shape() + a.ndim()), type);
  py::gil_scoped_release nogil;
  cuda::copy_to_device_staged(d->data, a.data(), d->nbytes());
  return d;
}

// The host-memory DeviceArray (a copy of a), for the DLPack tests that run without a GPU.
std::shared_ptr<DeviceArray> host_array_for_tests(const py::handle& obj) {
  const py::array a = as_array(obj, "a");
  const ElemType type = elem_type_of(a, "a");
  check_layout(a, "a");
  auto d = std::make_shared<DeviceArray>();
  d->storage = std::make_shared<Storage>();
  d->storage->device_type = dlpack::kDLCPU;
  d->shape.assign(a.shape(), a.shape() + a.ndim());
  d->type = type;
  d->storage->host.resize(std::max<size_t>(d->nbytes(), 1));
  std::memcpy(d->storage->host.data(), a.data(), d->nbytes());
  d->data = d->storage->host.data();
  return d;
}

py::array device_to_numpy(const DeviceArray& a) {
  py::array out = a.type == ElemType::f32 ? py::array(py::dtype::of<float>(), a.shape) : py::array(py::dtype::of<int64_t>(), a.shape);
  if (a.on_cuda()) {
    py::gil_scoped_release nogil;
    cuda::copy_to_host(const_cast<void*>(out.data()), a.data, a.nbytes());
  } else if (a.nbytes()) {
    std::memcpy(const_cast<void*>(out.data()), a.data, a.nbytes());
  }
  return out;
}

void check_writable_device(const DeviceArray& a, const char* name) {
  if (a.readonly) throw py::value_error(cat(name, " is written in place, so it must be writeable; got a read-only DLPack array"));
}

// a.copy_(src): src an ndarray or a DeviceArray of a's shape and dtype, copied into a's memory.
void device_copy_from(DeviceArray& a, const py::handle& src) {
  check_writable_device(a, "the array");
  if (is_device_array(src)) {
    const DeviceArray& s = src.cast<const DeviceArray&>();
    if (s.type != a.type) throw py::type_error(cat("src must have dtype ", elem_name(a.type), ", got ", elem_name(s.type)));
    if (s.shape != a.shape) throw py::value_error(cat("src must have shape ", dims_str(a.shape), ", got ", dims_str(s.shape)));
    if (s.on_cuda() != a.on_cuda()) throw py::value_error(cat("src is on ", s.device(), ", the array on ", a.device()));
    if (a.on_cuda()) cuda::copy_device_to_device(a.data, s.data, a.nbytes());
    else if (a.nbytes()) std::memmove(a.data, s.data, a.nbytes());
    return;
  }
  const py::array h = as_array(src, "src");
  if (elem_type_of(h, "src") != a.type) throw py::type_error(cat("src must have dtype ", elem_name(a.type), ", got ", dtype_str(h)));
  check_layout(h, "src");
  const std::vector<int64_t> shape(h.shape(), h.shape() + h.ndim());
  if (shape != a.shape) throw py::value_error(cat("src must have shape ", dims_str(a.shape), ", got ", shape_str(h)));
  if (a.on_cuda()) {
    py::gil_scoped_release nogil;
    cuda::copy_to_device_staged(a.data, h.data(), a.nbytes());
  } else if (a.nbytes()) {
    std::memcpy(a.data, h.data(), a.nbytes());
  }
}

// ---- DLPack export: the capsule owns a context that keeps the storage alive until the consumer's deleter.
template <typename Managed>
struct ExportContext {
  std::shared_ptr<Storage> storage;
  std::vector<int64_t> shape;
  Managed managed{};
};

dlpack::DLTensor describe(const DeviceArray& a, int64_t* shape) {
  dlpack::DLTensor t{};
  t.data = a.data;
  t.device = {a.storage->device_type, a.storage->device_type == dlpack::kDLCPU ? 0 : a.storage->device_id};
  t.ndim = int32_t(a.shape.size());
  t.dtype = a.type == ElemType::f32 ? dlpack::DLDataType{dlpack::kDLFloat, 32, 1} : dlpack::DLDataType{dlpack::kDLInt, 64, 1};
  t.shape = shape;
  t.strides = nullptr;  // compact row-major
  t.byte_offset = 0;
  return t;
}

template <typename Managed>
void capsule_destructor(PyObject* capsule, const char* name) {
  // A capsule the consumer took is renamed "used_..."; only an unused one still owns the tensor.
  if (!PyCapsule_IsValid(capsule, name)) return;
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  auto* m = static_cast<Managed*>(PyCapsule_GetPointer(capsule, name));
  if (m && m->deleter) m->deleter(m);
  PyErr_Restore(type, value, traceback);
}

py::capsule export_dlpack(const DeviceArray& a, bool versioned) {
  if (versioned) {
    using Ctx = ExportContext<dlpack::DLManagedTensorVersioned>;
    auto* ctx = new Ctx{a.storage, a.shape, {}};
    auto& m = ctx->managed;
    m.version = {dlpack::kVersionMajor, dlpack::kVersionMinor};
    m.manager_ctx = ctx;
    m.deleter = [](dlpack::DLManagedTensorVersioned* self) { delete static_cast<Ctx*>(self->manager_ctx); };
    m.flags = a.readonly ? dlpack::kFlagReadOnly : 0;
    m.dl_tensor = describe(a, ctx->shape.data());
    PyObject* cap = PyCapsule_New(&m, "dltensor_versioned", [](PyObject* c) {
      capsule_destructor<dlpack::DLManagedTensorVersioned>(c, "dltensor_versioned");
    });
    if (!cap) {
      delete ctx;
      throw py::error_already_set();
    }
    return py::reinterpret_steal<py::capsule>(cap);
  }
  using Ctx = ExportContext<dlpack::DLManagedTensor>;
  auto* ctx = new Ctx{a.storage, a.shape, {}};
  auto& m = ctx->managed;
  m.manager_ctx = ctx;
  m.deleter = [](dlpack::DLManagedTensor* self) { delete static_cast<Ctx*>(self->manager_ctx); };
  m.dl_tensor = describe(a, ctx->shape.data());
  PyObject* cap = PyCapsule_New(&m, "dltensor", [](PyObject* c) { capsule_destructor<dlpack::DLManagedTensor>(c, "dltensor"); });
  if (!cap) {
    delete ctx;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::capsule>(cap);
}

// a.__dlpack__(stream=None, max_version=None, dl_device=None, copy=None), as the Python array API says.
py::capsule device_dlpack(const DeviceArray& a, const py::object& stream, const py::object& max_version,
                          const py::object& dl_device, const py::object& copy) {
  if (!dl_device.is_none()) {
    const auto dev = dl_device.cast<std::pair<int32_t, int32_t>>();
    const int32_t id = a.on_cuda() ? a.storage->device_id : 0;
    if (dev.first != a.storage->device_type || dev.second != id) {
      PyErr_SetString(PyExc_BufferError, cat("this array is on ", a.device(), "; it cannot be exported to DLPack device (",
                                             dev.first, ", ", dev.second, ") without a copy to that device").c_str());
      throw py::error_already_set();
    }
  }
  if (a.on_cuda()) {
    // Our kernels run on the legacy default stream. Waiting for the device makes the data ready for
    // whatever stream the consumer names; stream -1 asks for no synchronisation at all.
    if (stream.is_none() || stream.cast<int64_t>() != -1) {
      py::gil_scoped_release nogil;
      cuda::synchronize();
    }
  } else if (!stream.is_none()) {
    throw py::value_error(cat("stream must be None for an array on the CPU, got ", py::repr(stream).cast<std::string>()));
  }
  const bool versioned = !max_version.is_none() && max_version.cast<std::pair<int, int>>().first >= 1;
  if (!copy.is_none() && copy.cast<bool>()) {
    // A copy the consumer owns alone.
    auto c = a.on_cuda() ? device_empty(a.shape, a.type) : host_array_for_tests(device_to_numpy(a));
    if (a.on_cuda()) {
      cuda::copy_device_to_device(c->data, a.data, a.nbytes());
      py::gil_scoped_release nogil;
      cuda::synchronize();
    }
    return export_dlpack(*c, versioned);
  }
  return export_dlpack(a, versioned);
}

// ---- DLPack import: zero copy; the producer's deleter runs when the last view of the memory goes.
std::shared_ptr<DeviceArray> import_dlpack(const py::handle& obj, bool allow_cpu) {
  if (!py::hasattr(obj, "__dlpack__") || !py::hasattr(obj, "__dlpack_device__"))
    throw py::type_error(cat("expected an array with __dlpack__ and __dlpack_device__ (a DLPack array), got ",
                             py::str(py::type::of(obj).attr("__name__")).cast<std::string>()));
  const auto dev = obj.attr("__dlpack_device__")().cast<std::pair<int32_t, int32_t>>();
  const bool cuda_array = dev.first == dlpack::kDLCUDA;
  if (!cuda_array && !(allow_cpu && dev.first == dlpack::kDLCPU))
    throw py::value_error(cat("expected a CUDA array (DLPack device type ", int(dlpack::kDLCUDA), "), got device type ", dev.first,
                              dev.first == dlpack::kDLCPU ? " (CPU): pass it as a NumPy array instead" : ""));
  if (cuda_array) {
    require_device();
    if (dev.second != cuda::current_device())
      throw py::value_error(cat("the array is on cuda:", dev.second, "; fuseprop runs on cuda:", cuda::current_device()));
  }
  // Stream 1 is the legacy default stream, the one our kernels use: the producer makes the data ready there.
  using namespace pybind11::literals;
  const py::object stream = cuda_array ? py::object(py::int_(1)) : py::object(py::none());
  py::object cap;
  try {
    cap = obj.attr("__dlpack__")("stream"_a = stream, "max_version"_a = py::make_tuple(1, 0));
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_TypeError)) throw;
    cap = obj.attr("__dlpack__")("stream"_a = stream);  // a producer older than DLPack 1.0
  }
  PyObject* c = cap.ptr();
  auto a = std::make_shared<DeviceArray>();
  a->storage = std::make_shared<Storage>();
  const dlpack::DLTensor* t = nullptr;
  const bool versioned = PyCapsule_IsValid(c, "dltensor_versioned");
  dlpack::DLManagedTensorVersioned* mv = nullptr;
  dlpack::DLManagedTensor* ml = nullptr;
  if (versioned) {
    mv = static_cast<dlpack::DLManagedTensorVersioned*>(PyCapsule_GetPointer(c, "dltensor_versioned"));
    if (mv->version.major != dlpack::kVersionMajor)
      throw py::value_error(cat("the array speaks DLPack ", mv->version.major, ".", mv->version.minor, "; fuseprop reads 1.x"));
    t = &mv->dl_tensor;
    a->readonly = (mv->flags & dlpack::kFlagReadOnly) != 0;
  } else if (PyCapsule_IsValid(c, "dltensor")) {
    ml = static_cast<dlpack::DLManagedTensor*>(PyCapsule_GetPointer(c, "dltensor"));
    t = &ml->dl_tensor;
  } else {
    throw py::type_error("__dlpack__ returned something other than an unused DLPack capsule");
  }
  // Until the capsule is renamed below, it still owns the tensor: a refused one is freed with it.
  if (t->device.device_type != dev.first || t->device.device_id != dev.second)
    throw py::value_error("the DLPack capsule's device differs from __dlpack_device__");
  const dlpack::DLDataType dt = t->dtype;
  if (dt.lanes == 1 && dt.code == dlpack::kDLFloat && dt.bits == 32) a->type = ElemType::f32;
  else if (dt.lanes == 1 && dt.code == dlpack::kDLInt && dt.bits == 64) a->type = ElemType::i64;
  else throw py::type_error(cat("expected a float32 or int64 array, got DLPack dtype (code ", int(dt.code), ", bits ", int(dt.bits),
                                ", lanes ", dt.lanes, "): convert it first"));
  if (t->ndim < 0) throw py::value_error("the DLPack tensor has a negative ndim");
  a->shape.assign(t->shape, t->shape + t->ndim);
  if (t->strides) {  // compact row-major is required; a dimension of size 1 may have any stride
    int64_t expected = 1;
    for (int32_t i = t->ndim - 1; i >= 0; --i) {
      if (a->shape[size_t(i)] != 1 && t->strides[i] != expected)
        throw py::value_error(cat("the array must be C-contiguous (row-major, unit stride); got shape ", dims_str(a->shape),
                                  " with strides ", dims_str(std::vector<int64_t>(t->strides, t->strides + t->ndim)),
                                  ": make it contiguous first (e.g. .contiguous())"));
      expected *= a->shape[size_t(i)];
    }
  }
  a->data = static_cast<unsigned char*>(t->data) + t->byte_offset;
  if (reinterpret_cast<uintptr_t>(a->data) % elem_size(a->type) != 0) throw py::value_error("the array's data is not aligned to its dtype");
  a->storage->device_type = dev.first;
  a->storage->device_id = dev.second;
  // Take it: from here the storage calls the deleter.
  if (PyCapsule_SetName(c, versioned ? "used_dltensor_versioned" : "used_dltensor") != 0) throw py::error_already_set();
  if (versioned) a->storage->versioned = mv;
  else a->storage->legacy = ml;
  return a;
}

// ---- the device train plan over DeviceArrays

const DeviceArray& cuda_array_arg(const py::handle& obj, const char* name, ElemType type) {
  if (!is_device_array(obj))
    throw py::type_error(cat(name, " must be a fuseprop DeviceArray, got ", py::str(py::type::of(obj).attr("__name__")).cast<std::string>()));
  const DeviceArray& a = obj.cast<const DeviceArray&>();
  if (!a.on_cuda()) throw py::value_error(cat(name, " must be on a CUDA device, got one on ", a.device()));
  if (a.type != type) throw py::type_error(cat(name, " must have dtype ", elem_name(type), ", got ", elem_name(a.type)));
  return a;
}

class CudaTrainPlanEntry {
 public:
  // As TrainPlan (above), with DeviceArrays for data, grad and state; float32 only.
  CudaTrainPlanEntry(const py::sequence& layers, const py::sequence& params, const std::string& loss,
                     const std::string& optimizer, double label_smoothing, const std::string& reduction, int64_t groups,
                     bool tf32, bool fused)
      : groups_(groups) {
    const PlanKinds kinds = parse_plan_kinds(layers, loss, optimizer, label_smoothing, reduction, groups);
    loss_ = kinds.loss;
    optimizer_ = kinds.optimizer;
    const bool mean = kinds.mean;
    const bool adam = optimizer_ != OptimizerKind::sgd;
    std::vector<ParamSlot<float>> slots;
    std::vector<std::vector<int64_t>> shapes;
    std::vector<std::pair<const unsigned char*, size_t>> spans;  // for the overlap check
    std::vector<std::string> span_names;
    for (const py::handle item : params) {
      const py::tuple entry = py::reinterpret_borrow<py::object>(item).cast<py::tuple>();
      if (entry.size() != 6) throw py::value_error("each params entry must be (name, data, grad, state_a, state_b, group)");
      const std::string name = entry[0].cast<std::string>(), grad_name = name + ".grad";
      const DeviceArray& data = cuda_array_arg(entry[1], name.c_str(), ElemType::f32);
      const DeviceArray& grad = cuda_array_arg(entry[2], grad_name.c_str(), ElemType::f32);
      auto same_shape = [&](const DeviceArray& a, const std::string& what) {
        check_writable_device(a, what.c_str());
        if (a.shape != data.shape)
          throw py::value_error(cat(what, " must have the same shape as ", name, " ", dims_str(data.shape), ", got ", dims_str(a.shape)));
        spans.emplace_back(a.data, a.nbytes());
        span_names.push_back(what);
      };
      same_shape(data, name);
      same_shape(grad, grad_name);
      auto state = [&](const py::handle obj, const char* key, bool required) -> float* {
        const std::string state_name = cat("state '", key, "' of ", name);
        if (obj.is_none()) {
          if (required) throw py::value_error(cat(state_name, " is required"));
          return nullptr;
        }
        const DeviceArray& s = cuda_array_arg(obj, state_name.c_str(), ElemType::f32);
        same_shape(s, state_name);
        return s.as<float>();
      };
      float* a = state(entry[3], adam ? "exp_avg" : "momentum_buffer", adam);
      if (!adam && !entry[4].is_none()) throw py::value_error(cat("SGD keeps one state array per parameter: state_b of ", name, " must be None"));
      float* b = state(entry[4], "exp_avg_sq", adam);
      const int64_t group = entry[5].cast<int64_t>();
      if (group < 0 || group >= groups) throw py::value_error(cat("the group of ", name, " must be in [0, ", groups, "), got ", group));
      slots.push_back({data.as<float>(), grad.as<float>(), a, b, data.size(), OptimizerHyper{}, 1});
      shapes.push_back(data.shape);
      names_.push_back(name);
      slot_group_.push_back(group);
      for (int k = 1; k <= 4; ++k) keep_alive_.push_back(entry[k]);
    }
    for (size_t i = 0; i < spans.size(); ++i)
      for (size_t j = i + 1; j < spans.size(); ++j) {
        const auto [p, n] = spans[i];
        const auto [q, m] = spans[j];
        if (n && m && p < q + m && q < p + n)
          throw py::value_error(cat(span_names[i], " and ", span_names[j], " share memory; each must have its own"));
      }
    std::vector<DenseLayer<float>> dense;
    size_t next = 0;
    for (const py::handle item : layers) {
      const auto [act, slope, has_bias] = parse_layer_entry(item);
      if (next + (has_bias ? 2 : 1) > slots.size())
        throw py::value_error(cat("params has ", slots.size(), " entries, fewer than the layers' weights and biases"));
      const size_t w = next++;
      const auto& ws = shapes[w];
      if (ws.size() != 2 || ws[0] < 1 || ws[1] < 1)
        throw py::value_error(cat(names_[w], " must be 2-D with at least one row and one column, got shape ", dims_str(ws)));
      if (!dense.empty() && ws[1] != out_features_)
        throw py::value_error(cat(names_[w], " has shape ", dims_str(ws), ": its in_features must be ", out_features_,
                                  ", the out_features of the layer before"));
      if (dense.empty()) in_features_ = ws[1];
      out_features_ = ws[0];
      float *b = nullptr, *db = nullptr;
      if (has_bias) {
        const size_t bi = next++;
        if (shapes[bi] != std::vector<int64_t>{out_features_})
          throw py::value_error(cat(names_[bi], " must have shape (", out_features_, ",), got ", dims_str(shapes[bi])));
        b = slots[bi].param, db = slots[bi].grad;
      }
      dense.push_back({slots[w].param, b, slots[w].grad, db, ws[1], ws[0], act, float(slope)});
    }
    if (next != slots.size()) throw py::value_error(cat("params has ", slots.size(), " entries; the layers take ", next));
    require_device();
    plan_ = std::make_unique<cuda::TrainPlan>(std::move(dense), std::move(slots), LossSpec{loss_, label_smoothing, mean},
                                              optimizer_, tf32, fused);
  }

  // x: (B, IN) float32, a DeviceArray on the GPU or an ndarray (staged over); target: labels (B,) int64
  // for cross-entropy, else (B, OUT) float32, either kind. Returns the loss; raises as TrainPlan.step.
  double step(const py::handle& x_obj, const py::handle& target_obj, const py::sequence& hyper, const py::sequence& steps,
              double max_grad_norm) {
    if (!(max_grad_norm >= 0)) throw py::value_error(cat("max_grad_norm must be >= 0 (0: no clipping), got ", max_grad_norm));
    if (busy_) throw std::runtime_error("TrainPlan.step is already running in another thread");
    const float* x = static_cast<const float*>(input(x_obj, "x", x_stage_, ElemType::f32, {-1, in_features_}));
    const int64_t B = batch_;
    const bool labels = loss_ == LossKind::cross_entropy;
    const void* target = labels ? input(target_obj, "labels", t_stage_, ElemType::i64, {B})
                                : input(target_obj, "target", t_stage_, ElemType::f32, {B, out_features_});
    const bool sgd = optimizer_ == OptimizerKind::sgd;
    apply_hyper(plan_->params(), steps, names_, slot_group_, parse_hyper(hyper, groups_, sgd), sgd);
    StepResult result;
    busy_ = true;
    updated_ = false;
    try {
      py::gil_scoped_release nogil;
      result = plan_->step(x, labels ? static_cast<const int64_t*>(target) : nullptr,
                           labels ? nullptr : static_cast<const float*>(target), B, max_grad_norm);
    } catch (...) {
      busy_ = false;
      throw;
    }
    busy_ = false;
    if (plan_->bad_label() != ~0ull) {
      int64_t v = 0;
      cuda::copy_to_host(&v, static_cast<const int64_t*>(target) + plan_->bad_label(), sizeof v);
      throw py::value_error(cat("labels must be in [0, ", out_features_, ") for logits with ", out_features_, " classes; labels[",
                                plan_->bad_label(), "] is ", v, " (the weights were not updated)"));
    }
    updated_ = result.status == StepStatus::ok || result.status == StepStatus::param_not_finite;
    correct_ = result.correct;
    grad_norm_ = result.grad_norm;
    raise_for_status(result, names_);
    return result.loss;
  }

  // x (B, IN) -> a new DeviceArray (B, OUT): the network's output.
  std::shared_ptr<DeviceArray> forward(const py::handle& x_obj) {
    if (busy_) throw std::runtime_error("TrainPlan.step is running in another thread");
    const float* x = static_cast<const float*>(input(x_obj, "x", x_stage_, ElemType::f32, {-1, in_features_}));
    auto out = device_empty({batch_, out_features_}, ElemType::f32);
    py::gil_scoped_release nogil;
    plan_->forward(out->as<float>(), x, batch_);
    return out;
  }

  int64_t allocations() const { return plan_->allocations(); }
  int64_t capacity() const { return plan_->capacity(); }
  int64_t steps() const { return plan_->steps(); }
  bool fused() const { return plan_->fused(); }
  bool updated() const { return updated_; }
  int64_t correct() const { return correct_; }
  double grad_norm() const { return grad_norm_; }

 private:
  // A device pointer to obj's data: a CUDA DeviceArray as it is, an ndarray staged into `stage`.
  // dims: the expected shape, -1 for the batch (which sets batch_, and must not be 0).
  const void* input(const py::handle& obj, const char* name, cuda::DeviceBuffer& stage, ElemType type,
                    std::vector<int64_t> dims) {
    std::vector<int64_t> shape;
    const void* host = nullptr;
    const DeviceArray* dev = nullptr;
    if (is_device_array(obj)) {
      dev = &cuda_array_arg(obj, name, type);
      shape = dev->shape;
    } else {
      const py::array a = as_array(obj, name);
      if (elem_type_of(a, name) != type)
        throw py::type_error(cat(name, " must have dtype ", elem_name(type), ", got ", dtype_str(a)));
      check_layout(a, name);
      shape.assign(a.shape(), a.shape() + a.ndim());
      host = a.data();
      stage_keep_ = a;
    }
    if (dims[0] == -1) {
      if (shape.size() != dims.size() || shape[1] != dims[1])
        throw py::value_error(cat(name, " must have shape (B, ", dims[1], "), got ", dims_str(shape)));
      if (shape[0] == 0) throw py::value_error(cat("train_step needs a non-empty batch, got ", name, " of shape ", dims_str(shape)));
      batch_ = dims[0] = shape[0];
    }
    if (shape != dims) throw py::value_error(cat(name, " must have shape ", dims_str(dims), ", got ", dims_str(shape)));
    if (type == ElemType::i64 && host) {  // labels from the host are checked here, before they go over
      const int64_t* l = static_cast<const int64_t*>(host);
      for (int64_t i = 0; i < dims[0]; ++i)
        if (l[i] < 0 || l[i] >= out_features_)
          throw py::value_error(cat("labels must be in [0, ", out_features_, ") for logits with ", out_features_,
                                    " classes; labels[", i, "] is ", l[i]));
    }
    if (dev) return dev->data;
    size_t bytes = 1;
    for (int64_t d : dims) bytes *= size_t(d);
    bytes *= elem_size(type);
    require_device();
    if (stage.bytes() < bytes) stage = cuda::DeviceBuffer(bytes);
    py::gil_scoped_release nogil;
    cuda::copy_to_device_staged(stage.as<void>(), host, bytes);
    return stage.as<void>();
  }

  std::unique_ptr<cuda::TrainPlan> plan_;
  LossKind loss_ = LossKind::cross_entropy;
  OptimizerKind optimizer_ = OptimizerKind::sgd;
  int64_t groups_ = 1, in_features_ = 0, out_features_ = 0, batch_ = 0;
  std::vector<std::string> names_;
  std::vector<int64_t> slot_group_;
  std::vector<py::object> keep_alive_;  // every DeviceArray the plan points into
  cuda::DeviceBuffer x_stage_, t_stage_;  // host batches land here
  py::object stage_keep_;
  bool busy_ = false, updated_ = false;
  double grad_norm_ = 0;
  int64_t correct_ = 0;
};

// rows of each src (N, D...) picked by one index (B,) int64 in [0, N) (a host array, checked, sent over once)
// -> a new DeviceArray (B, D...) per src: a DeviceArray for a DeviceArray, a tuple for a tuple (x and y of a batch).
py::object gather_rows_entry(const py::handle& srcs_obj, const py::handle& index_obj) {
  const bool single = is_device_array(srcs_obj);
  std::vector<const DeviceArray*> srcs;
  if (single) {
    srcs.push_back(&srcs_obj.cast<const DeviceArray&>());
  } else {
    if (!py::isinstance<py::tuple>(srcs_obj)) throw py::type_error("src must be a DeviceArray or a tuple of DeviceArrays");
    for (const py::handle h : srcs_obj.cast<py::tuple>()) {
      if (!is_device_array(h)) throw py::type_error("src must be a DeviceArray or a tuple of DeviceArrays");
      srcs.push_back(&h.cast<const DeviceArray&>());
    }
  }
  for (const DeviceArray* src : srcs) {
    if (!src->on_cuda()) throw py::value_error(cat("src must be on a CUDA device, got one on ", src->device()));
    if (src->shape.empty()) throw py::value_error("src must have at least one dimension (rows), got a 0-d array");
    if (src->shape[0] != srcs[0]->shape[0])
      throw py::value_error(cat("every src must have the same number of rows, got ", srcs[0]->shape[0], " and ", src->shape[0]));
  }
  const py::array index = as_array(index_obj, "index");
  if (!index.dtype().equal(py::dtype::of<int64_t>())) throw py::type_error(cat("index must have dtype int64, got ", dtype_str(index)));
  check_layout(index, "index");
  check_ndim(index, "index", 1);
  const int64_t B = index.shape(0), N = srcs.empty() ? 0 : srcs[0]->shape[0];
  const int64_t* idx = static_cast<const int64_t*>(index.data());
  for (int64_t i = 0; i < B; ++i)
    if (idx[i] < 0 || idx[i] >= N) throw py::value_error(cat("index must be in [0, ", N, "); index[", i, "] is ", idx[i]));
  std::vector<std::shared_ptr<DeviceArray>> outs;
  for (const DeviceArray* src : srcs) {
    std::vector<int64_t> shape = src->shape;
    shape[0] = B;
    outs.push_back(device_empty(shape, src->type));
  }
  {
    py::gil_scoped_release nogil;
    cuda::DeviceBuffer d_index(size_t(B) * sizeof(int64_t));
    cuda::copy_to_device_staged(d_index.as<void>(), idx, d_index.bytes());
    for (size_t s = 0; s < srcs.size(); ++s) {
      const DeviceArray& src = *srcs[s];
      const int64_t D = N ? src.size() / N : 0;
      if (src.type == ElemType::f32) cuda::gather_rows(outs[s]->as<float>(), src.as<float>(), d_index.as<int64_t>(), B, D);
      else cuda::gather_rows(outs[s]->as<int64_t>(), src.as<int64_t>(), d_index.as<int64_t>(), B, D);
    }
    cuda::synchronize();  // d_index is freed on return
  }
  if (single) return py::cast(outs[0]);
  py::tuple t(outs.size());
  for (size_t s = 0; s < outs.size(); ++s) t[s] = py::cast(outs[s]);
  return t;
}

// a[start:stop] along the first axis: a view sharing a's memory (step 1 only)
std::shared_ptr<DeviceArray> row_slice(const DeviceArray& a, const py::slice& sl) {
  if (a.shape.empty()) throw py::index_error("a 0-d array cannot be sliced");
  py::ssize_t start, stop, step, len;
  if (!sl.compute(py::ssize_t(a.shape[0]), &start, &stop, &step, &len)) throw py::error_already_set();
  if (step != 1) throw py::value_error(cat("DeviceArray slices need step 1 (a view of whole rows), got step ", step));
  auto v = std::make_shared<DeviceArray>(a);
  v->shape[0] = len;
  const size_t row = a.shape[0] ? a.nbytes() / size_t(a.shape[0]) : 0;
  v->data = a.data + size_t(start) * row;
  return v;
}
#endif

}  // namespace

// ---- the measured multiply-add peak, which the benchmarks report their GFLOP/s against
namespace {

std::string type_name(const py::handle& obj) { return py::str(py::type::of(obj).attr("__name__")).cast<std::string>(); }

// fma_peak(threads, seconds=0.2, level=None) -> GFLOP/s; level None is the active one.
double fma_peak_entry(const py::handle& threads, const py::handle& seconds, const py::handle& level) {
  constexpr long long kMaxThreads = 1024;
  constexpr double kMaxSeconds = 60.0;
  if (py::isinstance<py::bool_>(threads) || !PyIndex_Check(threads.ptr()))
    throw py::type_error(cat("threads must be an int, got ", type_name(threads)));
  const py::int_ threads_int = py::reinterpret_steal<py::int_>(PyNumber_Index(threads.ptr()));
  if (!threads_int) throw py::error_already_set();
  int overflow = 0;
  const long long n = PyLong_AsLongLongAndOverflow(threads_int.ptr(), &overflow);
  if (overflow || n < 1 || n > kMaxThreads)
    throw py::value_error(cat("threads must be in [1, ", kMaxThreads, "], got ", py::str(threads_int).cast<std::string>()));
  // a real number (Python's or NumPy's float or int), never a bool or a string
  const bool real = !py::isinstance<py::bool_>(seconds) && PyNumber_Check(seconds.ptr()) && !PyComplex_Check(seconds.ptr());
  double s = real ? PyFloat_AsDouble(seconds.ptr()) : -1.0;
  if (!real || (s == -1.0 && PyErr_Occurred())) {
    const bool too_large = real && PyErr_ExceptionMatches(PyExc_OverflowError);  // an int beyond any double
    PyErr_Clear();
    if (!too_large) throw py::type_error(cat("seconds must be a float, got ", type_name(seconds)));
    s = std::numeric_limits<double>::infinity();
  }
  if (!(s > 0.0 && s <= kMaxSeconds))  // also refuses NaN
    throw py::value_error(cat("seconds must be in (0, ", kMaxSeconds, "], got ", s));
  CpuLevel l = cpu_level_active();
  if (!level.is_none()) {
    if (!py::isinstance<py::str>(level)) throw py::type_error(cat("level must be a str or None, got ", type_name(level)));
    const std::string name = level.cast<std::string>();
    if (!parse_cpu_level(name, &l))
      throw py::value_error(cat("level must be one of generic, avx2, avx512; got '", name, "'"));
    if (static_cast<int>(l) > static_cast<int>(cpu_level_supported()))
      throw py::value_error(cat("level: this CPU cannot run the ", name, " kernels; available: up to ",
                                cpu_level_name(cpu_level_supported())));
  }
  py::gil_scoped_release nogil;
  return fma_peak(static_cast<int>(n), s, l) / 1e9;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fuseprop native kernels (CPU). Validate, allocate, release the GIL, forward.";
  using namespace pybind11::literals;

  m.def("matmul", &matmul_entry<false>, "a"_a, "b"_a, "trans_a"_a = false, "trans_b"_a = false, "c"_a = py::none(),
        "alpha"_a = 1.0, "beta"_a = 0.0, "alpha*op(a)@op(b) + beta*c; blocked GEMM");
  m.def("matmul_reference", &matmul_entry<true>, "a"_a, "b"_a, "trans_a"_a = false, "trans_b"_a = false,
        "c"_a = py::none(), "alpha"_a = 1.0, "beta"_a = 0.0, "the scalar triple-loop GEMM the blocked one is checked against");

  m.def("activation_forward", &activation_forward_entry, "x"_a, "activation"_a, "negative_slope"_a = 0.01);
  m.def("activation_backward", &activation_backward_entry, "grad_y"_a, "x"_a, "y"_a, "activation"_a, "negative_slope"_a = 0.01);
  m.def("softmax_forward", &softmax_forward_entry<false>, "x"_a);
  m.def("softmax_backward", &softmax_backward_entry<false>, "grad_y"_a, "y"_a);
  m.def("log_softmax_forward", &softmax_forward_entry<true>, "x"_a);
  m.def("log_softmax_backward", &softmax_backward_entry<true>, "grad_y"_a, "y"_a);

  m.def("linear_forward", &linear_forward_entry, "x"_a, "weight"_a, "bias"_a = py::none(), "activation"_a = "identity",
        "negative_slope"_a = 0.01);
  m.def("linear_backward", &linear_backward_entry, "grad_y"_a, "x"_a, "weight"_a, "z"_a, "y"_a, "activation"_a = "identity",
        "negative_slope"_a = 0.01, "has_bias"_a = true, "need_grad_x"_a = true, "grad_weight"_a = py::none(),
        "grad_bias"_a = py::none());

  m.def("cross_entropy_loss", &cross_entropy_entry, "logits"_a, "labels"_a, "label_smoothing"_a = 0.0, "reduction"_a = "mean");
  m.def("mse_loss", [](const py::handle& pred, const py::handle& target, const std::string& reduction) {
          return elementwise_loss_entry<mse_forward_backward<float>, mse_forward_backward<double>>("mse_loss", "pred", pred, target, reduction);
        }, "pred"_a, "target"_a, "reduction"_a = "mean");
  m.def("bce_with_logits_loss", [](const py::handle& logits, const py::handle& target, const std::string& reduction) {
          return elementwise_loss_entry<bce_with_logits_forward_backward<float>, bce_with_logits_forward_backward<double>>(
              "bce_with_logits_loss", "logits", logits, target, reduction);
        }, "logits"_a, "target"_a, "reduction"_a = "mean");

  m.def("sgd_step", &sgd_step_entry, "param"_a, "grad"_a, "momentum_buffer"_a = py::none(), py::kw_only(), "lr"_a,
        "momentum"_a = 0.0, "dampening"_a = 0.0, "nesterov"_a = false, "weight_decay"_a = 0.0, "step"_a = 1);
  m.def("adam_step", &adam_step_entry, "param"_a, "grad"_a, "exp_avg"_a, "exp_avg_sq"_a, py::kw_only(), "step"_a,
        "lr"_a = 1e-3, "beta1"_a = 0.9, "beta2"_a = 0.999, "eps"_a = 1e-8, "weight_decay"_a = 0.0,
        "decoupled_weight_decay"_a = false);

  py::class_<TrainPlanEntry>(m, "TrainPlan",
                             "The whole training step of a chain of Linear(+activation) layers in one native call, "
                             "on the model's own arrays; the workspace grows with the batch and is reused.")
      .def(py::init<const py::sequence&, const py::sequence&, const std::string&, const std::string&, double,
                    const std::string&, int64_t>(),
           "layers"_a, "params"_a, py::kw_only(), "loss"_a, "optimizer"_a, "label_smoothing"_a = 0.0,
           "reduction"_a = "mean", "groups"_a = 1)
      .def("step", &TrainPlanEntry::step, "x"_a, "target"_a, "hyper"_a, "steps"_a, "max_grad_norm"_a = 0.0)
      .def("run_batches", &TrainPlanEntry::run_batches, "x"_a, "target"_a, "order"_a, "batch_size"_a, "first_batch"_a,
           "n_batches"_a, "hyper"_a, "steps"_a, "max_grad_norm"_a = 0.0, "lrs"_a = py::none())
      .def_property_readonly("batches_done", &TrainPlanEntry::batches_done)
      .def("loss_grad", &TrainPlanEntry::loss_grad)
      .def_property_readonly("allocations", &TrainPlanEntry::allocations)
      .def_property_readonly("capacity", &TrainPlanEntry::capacity)
      .def_property_readonly("steps", &TrainPlanEntry::steps)
      .def_property_readonly("updated", &TrainPlanEntry::updated)
      .def_property_readonly("correct", &TrainPlanEntry::correct)
      .def_property_readonly("grad_norm", &TrainPlanEntry::grad_norm);

  m.attr("__version__") = FUSEPROP_VERSION;
  m.attr("compiler") = compiler_string();
  m.attr("arch") = arch_string();
  m.attr("cuda_compiled") = bool(FUSEPROP_CUDA_COMPILED);
#if FUSEPROP_CUDA_COMPILED
  m.def("cuda_query", [] {
    const cuda::DeviceQuery q = cuda::query_devices();
    return py::dict("count"_a = q.count, "status"_a = q.status, "runtime_version"_a = q.runtime_version,
                    "driver_version"_a = q.driver_version);
  }, "device count and the runtime's status: never raises, whatever the driver");
  m.def("cuda_device_properties", [](int index) {
    const cuda::DeviceQuery q = cuda::query_devices();
    if (index < 0 || index >= q.count)
      throw py::value_error(cat("device must be in [0, ", q.count, "), got ", index, " (", q.status, ")"));
    const cuda::DeviceProperties p = cuda::device_properties(index);
    return py::dict("name"_a = p.name, "capability"_a = py::make_tuple(p.major, p.minor),
                    "total_memory"_a = p.total_memory, "multiprocessors"_a = p.multiprocessors);
  }, "index"_a);
  // Host arrays in and out, one op on the device: for parity tests (see the CUDA section above).
  m.def("cuda_matmul", &cuda_matmul_entry, "a"_a, "b"_a, "trans_a"_a = false, "trans_b"_a = false, "tf32"_a = false);
  m.def("cuda_linear_forward", &cuda_linear_forward_entry, "x"_a, "weight"_a, "bias"_a = py::none(),
        "activation"_a = "identity", "negative_slope"_a = 0.01, "tf32"_a = false);
  m.def("cuda_linear_backward", &cuda_linear_backward_entry, "grad_y"_a, "x"_a, "weight"_a, "z"_a, "y"_a,
        "activation"_a = "identity", "negative_slope"_a = 0.01, "has_bias"_a = true, "tf32"_a = false);
  m.def("cuda_activation_forward", &cuda_activation_forward_entry, "x"_a, "activation"_a, "negative_slope"_a = 0.01);
  m.def("cuda_activation_backward", &cuda_activation_backward_entry, "grad_y"_a, "x"_a, "y"_a, "activation"_a,
        "negative_slope"_a = 0.01);
  m.def("cuda_cross_entropy_loss", &cuda_cross_entropy_entry, "logits"_a, "labels"_a, "label_smoothing"_a = 0.0,
        "reduction"_a = "mean");
  m.def("cuda_sgd_step", &cuda_sgd_step_entry, "param"_a, "grad"_a, "momentum_buffer"_a = py::none(), py::kw_only(), "lr"_a,
        "momentum"_a = 0.0, "dampening"_a = 0.0, "nesterov"_a = false, "weight_decay"_a = 0.0, "step"_a = 1);
  m.def("cuda_adam_step", &cuda_adam_step_entry, "param"_a, "grad"_a, "exp_avg"_a, "exp_avg_sq"_a, py::kw_only(), "step"_a,
        "lr"_a = 1e-3, "beta1"_a = 0.9, "beta2"_a = 0.999, "eps"_a = 1e-8, "weight_decay"_a = 0.0,
        "decoupled_weight_decay"_a = false);
  m.def("cuda_fused_mlp_forward_backward", &cuda_fused_mlp_forward_backward_entry, "x"_a, "labels"_a, "weights"_a,
        "biases"_a, "activations"_a, "negative_slope"_a = 0.01, "label_smoothing"_a = 0.0, "reduction"_a = "mean",
        "tf32"_a = false, "the whole network's forward, cross-entropy and backward in one fused kernel (cuda/fused_mlp.h)");
  m.def("cuda_fused_mlp_forward", &cuda_fused_mlp_forward_entry, "x"_a, "weights"_a, "biases"_a, "activations"_a,
        "negative_slope"_a = 0.01, "tf32"_a = false, "the fused kernel's forward pass only: the logits");
  m.def("cuda_matmul_time_ms", [](int64_t M, int64_t N, int64_t K, bool tf32, int repeats) {
    if (M < 1 || N < 1 || K < 1 || repeats < 1)
      throw py::value_error(cat("M, N, K and repeats must be >= 1, got ", M, ", ", N, ", ", K, ", ", repeats));
    require_device();
    py::gil_scoped_release nogil;
    return cuda::matmul_time_ms(M, N, K, tf32, repeats);
  }, "M"_a, "N"_a, "K"_a, "tf32"_a = true, "repeats"_a = 20,
        "median device time (ms, CUDA events) of one (M,K)x(K,N) cuda_matmul on device-resident data: no host copies");

  // Device arrays, DLPack and the device train plan.
  py::class_<DeviceArray, std::shared_ptr<DeviceArray>>(m, "DeviceArray",
      "A C-contiguous float32 or int64 array in device memory (fuseprop's, or another library's through DLPack, "
      "without a copy). .numpy() copies it to the host; __dlpack__ hands it to torch/cupy/jax without a copy.")
      .def_property_readonly("shape", [](const DeviceArray& a) { return py::tuple(py::cast(a.shape)); })
      .def_property_readonly("dtype", [](const DeviceArray& a) {
        return a.type == ElemType::f32 ? py::dtype::of<float>() : py::dtype::of<int64_t>();
      })
      .def_property_readonly("ndim", [](const DeviceArray& a) { return a.shape.size(); })
      .def_property_readonly("size", &DeviceArray::size)
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def_property_readonly("device", &DeviceArray::device)
      .def_property_readonly("readonly", [](const DeviceArray& a) { return a.readonly; })
      .def_property_readonly("data_ptr", [](const DeviceArray& a) { return reinterpret_cast<uintptr_t>(a.data); })
      .def("__len__", [](const DeviceArray& a) {
        if (a.shape.empty()) throw py::type_error("len() of a 0-d DeviceArray");
        return a.shape[0];
      })
      .def("__getitem__", &row_slice, "rows"_a)
      .def("__repr__", [](const DeviceArray& a) {
        return cat("DeviceArray(shape=", dims_str(a.shape), ", dtype=", elem_name(a.type), ", device='", a.device(), "')");
      })
      .def("numpy", &device_to_numpy, "a new host ndarray with the array's values (waits for the device)")
      .def("copy_", [](DeviceArray& a, const py::handle& src) { device_copy_from(a, src); }, "src"_a,
           "copy src (an ndarray or a DeviceArray of the same shape and dtype) into this array's memory")
      .def("zero_", [](DeviceArray& a) {
        check_writable_device(a, "the array");
        if (a.on_cuda()) cuda::fill_zero(a.data, a.nbytes());
        else if (a.nbytes()) std::memset(a.data, 0, a.nbytes());
      })
      .def("__dlpack__", &device_dlpack, py::kw_only(), "stream"_a = py::none(), "max_version"_a = py::none(),
           "dl_device"_a = py::none(), "copy"_a = py::none())
      .def("__dlpack_device__", [](const DeviceArray& a) {
        return py::make_tuple(a.storage->device_type, a.on_cuda() ? a.storage->device_id : 0);
      });
  m.def("cuda_empty", [](const std::vector<int64_t>& shape, const py::handle& dtype) {
    const ElemType t = parse_elem_type(dtype);
    require_device();
    return device_empty(shape, t);
  }, "shape"_a, "dtype"_a = "float32", "an uninitialised DeviceArray");
  m.def("cuda_to_device", [](const py::handle& a) { return device_from_numpy(a, "a"); }, "a"_a,
        "a float32 or int64 C-contiguous ndarray copied to the device through pinned memory");
  m.def("cuda_from_dlpack", [](const py::handle& obj) { return import_dlpack(obj, false); }, "obj"_a,
        "a DeviceArray viewing a CUDA DLPack array's memory (no copy); the producer's memory stays alive with it");
  m.def("_dlpack_import_any", [](const py::handle& obj) { return import_dlpack(obj, true); }, "obj"_a,
        "as cuda_from_dlpack, but also takes CPU DLPack arrays (tests the import without a GPU)");
  m.def("_host_array", &host_array_for_tests, "a"_a, "a DeviceArray in host memory (a copy of a): tests the DLPack export without a GPU");
  m.def("cuda_gather_rows", &gather_rows_entry, "src"_a, "index"_a, "src[index] along the first axis, on the device; src a DeviceArray or a tuple of them (one index upload)");
  m.def("cuda_synchronize", [] {
    require_device();
    py::gil_scoped_release nogil;
    cuda::synchronize();
  });
  py::class_<CudaTrainPlanEntry>(m, "CudaTrainPlan",
                                 "TrainPlan on the GPU: the model's parameters, gradients and optimizer state are DeviceArrays")
      .def(py::init<const py::sequence&, const py::sequence&, const std::string&, const std::string&, double,
                    const std::string&, int64_t, bool, bool>(),
           "layers"_a, "params"_a, py::kw_only(), "loss"_a, "optimizer"_a, "label_smoothing"_a = 0.0,
           "reduction"_a = "mean", "groups"_a = 1, "tf32"_a = true, "fused"_a = true)
      .def("step", &CudaTrainPlanEntry::step, "x"_a, "target"_a, "hyper"_a, "steps"_a, "max_grad_norm"_a = 0.0)
      .def("forward", &CudaTrainPlanEntry::forward, "x"_a)
      .def_property_readonly("allocations", &CudaTrainPlanEntry::allocations)
      .def_property_readonly("capacity", &CudaTrainPlanEntry::capacity)
      .def_property_readonly("steps", &CudaTrainPlanEntry::steps)
      .def_property_readonly("fused", &CudaTrainPlanEntry::fused)
      .def_property_readonly("updated", &CudaTrainPlanEntry::updated)
      .def_property_readonly("correct", &CudaTrainPlanEntry::correct)
      .def_property_readonly("grad_norm", &CudaTrainPlanEntry::grad_norm);
#endif

  // ---- kernel selection and threads
  m.def("cpu_level", [] { return std::string(cpu_level_name(cpu_level_active())); },
        "the instruction set the float kernels use now: generic, avx2 or avx512");
  m.def("cpu_levels_available", [] {
    std::vector<std::string> names;
    for (CpuLevel l : cpu_levels_available()) names.emplace_back(cpu_level_name(l));
    return names;
  }, "every level this CPU can run, lowest first");
  m.def("set_cpu_level", [](const std::string& name) {
    CpuLevel level;
    if (!parse_cpu_level(name, &level))
      throw py::value_error(cat("level must be one of generic, avx2, avx512; got '", name, "'"));
    if (!set_cpu_level(level))
      throw py::value_error(cat("this CPU cannot run the ", name, " kernels; available: up to ", cpu_level_name(cpu_level_supported())));
  }, "level"_a);
  m.def("cpu_caches", [] {
    const CacheSizes& c = cpu_cache_sizes();
    return py::dict("l1d"_a = c.l1d, "l2"_a = c.l2, "l3"_a = c.l3);
  }, "the data caches the GEMM blocking is derived from, in bytes (FUSEPROP_CACHES=l1d,l2,l3 overrides)");
  m.def("gemm_blocking", [] {
    const GemmKernels<float>& k = gemm_kernels(float{});
    const GemmBlocking b = gemm_blocking(k.mr, k.nr, sizeof(float));
    return py::dict("level"_a = k.level, "mr"_a = k.mr, "nr"_a = k.nr, "mc"_a = b.mc, "kc"_a = b.kc, "nc"_a = b.nc);
  }, "the float GEMM's register tile (mr x nr) and cache blocking (mc, kc, nc) at the active level");
  m.def("get_num_threads", &num_threads);
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error(cat("num_threads must be >= 1, got ", n));
    set_num_threads(n);
  }, "n"_a);
  m.def("_set_gemm_path", [](const std::string& name) {
    static const std::pair<const char*, GemmPath> table[] = {
        {"auto", GemmPath::automatic}, {"packed", GemmPath::packed}, {"direct", GemmPath::direct}, {"dot", GemmPath::dot}};
    for (const auto& [n, p] : table)
      if (name == n) return set_gemm_path(p);
    throw py::value_error(cat("path must be auto, packed, direct or dot; got '", name, "'"));
  }, "path"_a, "force a GEMM path (tests and benchmarks); a path that cannot serve a call falls back to packed");

  m.def("fma_peak", &fma_peak_entry, "threads"_a, "seconds"_a = 0.2, "level"_a = py::none(),
        "GFLOP/s of register-only float multiply-adds on `threads` threads at once over `seconds`, with the "
        "loop of `level` (None: the active level): the measured peak the benchmarks report against");
}
