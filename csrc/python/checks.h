// The checks every entry point runs on its arguments, and the helpers that name what was wrong: dtype,
// ndim, shape, C-contiguity, alignment, writeability, overlap, finite and in-range scalars. An array in
// the wrong form is an error that names the argument, what was expected and what came; nothing is
// converted implicitly, and nothing is written before every check has passed.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // every binding file converts vectors, pairs and tuples

#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "core/common.h"
#if FUSEPROP_CUDA_COMPILED
#include "cuda/core/memory.h"
#endif

namespace fuseprop::bindings {

namespace py = pybind11;

enum class DType { f32, f64 };

template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

std::string shape_str(const py::array& a);
std::string dims_str(const std::vector<int64_t>& dims);
std::string dtype_str(const py::array& a);
std::string type_name(const py::handle& obj);

// An ndarray, never a silent conversion of a list or another object into a temporary.
py::array as_array(const py::handle& obj, const char* name);
DType float_dtype(const py::array& a, const char* name);
void check_dtype(const py::array& a, const char* name, DType expected, const char* like);
void check_ndim(const py::array& a, const char* name, py::ssize_t ndim);
void check_layout(const py::array& a, const char* name);
void check_writeable(const py::array& a, const char* name);
void check_shape(const py::array& a, const char* name, const std::vector<int64_t>& dims);
void check_same_shape(const py::array& a, const char* name, const py::array& like, const char* like_name);

// An array that an entry point reads: ndarray, float dtype, C-contiguous and aligned.
py::array float_input(const py::handle& obj, const char* name, DType* dtype_out = nullptr);
py::array float_input_like(const py::handle& obj, const char* name, DType dt, const char* like);
// An array that an entry point updates in place: also writeable.
py::array float_inout_like(const py::handle& obj, const char* name, DType dt, const char* like);

// Outputs updated in place must not share memory with another argument: the kernels read their
// inputs while they write, so an overlap would silently corrupt the result.
void check_no_overlap(const py::array& out, const char* out_name, const py::array& in, const char* in_name);

void check_finite_scalar(double v, const char* name);
void check_range(double v, const char* name, double lo, double hi, bool hi_inclusive);

Activation parse_activation(const std::string& name);
// "mean" -> true, "sum" -> false
bool parse_reduction(const std::string& reduction);

// labels: int64, C-contiguous, shape (B,), every value in [0, C)
py::array checked_labels(const py::handle& obj, int64_t B, int64_t C);

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

#if FUSEPROP_CUDA_COMPILED
// The CUDA entries: a float32 check that comes before the shared checks, the device check, and a
// host array's copy on the device.
void require_f32(const py::handle& obj, const char* name);
// RuntimeError "no CUDA device: <the runtime's reason>" (as fuseprop.cuda.status()) unless a device can be used.
void require_device();
cuda::DeviceBuffer to_device(const py::array& a);
#endif

}  // namespace fuseprop::bindings
