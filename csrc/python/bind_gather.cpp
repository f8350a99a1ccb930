// cuda_gather_rows: a mini-batch gathered on the device from DeviceArrays (fit on a device-resident dataset).
#include <memory>
#include <vector>

#include "python/bind.h"
#include "python/checks.h"
#include "python/device_array.h"
#include "cuda/core/memory.h"
#include "cuda/ops/gather_cuda.h"


namespace fuseprop::bindings {

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

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

}  // namespace

void bind_gather(py::module_& m) {
  m.def("cuda_gather_rows", &gather_rows_entry, "src"_a, "index"_a, "src[index] along the first axis, on the device; src a DeviceArray or a tuple of them (one index upload)");
}

}  // namespace fuseprop::bindings
