#include "python/checks.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#if FUSEPROP_CUDA_COMPILED
#include "cuda/core/device.h"
#endif

namespace fuseprop::bindings {

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

py::array float_input(const py::handle& obj, const char* name, DType* dtype_out) {
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
py::array float_inout_like(const py::handle& obj, const char* name, DType dt, const char* like) {
  py::array a = float_input_like(obj, name, dt, like);
  check_writeable(a, name);
  return a;
}

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

bool parse_reduction(const std::string& reduction) {
  if (reduction == "mean") return true;
  if (reduction == "sum") return false;
  throw py::value_error(cat("reduction must be 'mean' or 'sum', got '", reduction, "'"));
}

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

std::string type_name(const py::handle& obj) { return py::str(py::type::of(obj).attr("__name__")).cast<std::string>(); }

#if FUSEPROP_CUDA_COMPILED
// The float32 check comes first, so a float64 array is a TypeError before the shared checks run.
void require_f32(const py::handle& obj, const char* name) {
  const py::array a = as_array(obj, name);
  if (!a.dtype().equal(py::dtype::of<float>()))
    throw py::type_error(cat(name, " must have dtype float32 (the CUDA backend is float32 only), got ", dtype_str(a)));
}

void require_device() {
  const cuda::DeviceQuery q = cuda::query_devices();
  if (q.count == 0) throw std::runtime_error("no CUDA device: " + q.status);
}

cuda::DeviceBuffer to_device(const py::array& a) {
  cuda::DeviceBuffer d(size_t(a.nbytes()));
  d.copy_from_host(a.data());
  return d;
}
#endif

}  // namespace fuseprop::bindings
