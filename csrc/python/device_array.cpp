// _C.DeviceArray: construction, host copies, row views, and its Python class; cuda_empty,
// cuda_to_device, cuda_synchronize and the host-memory arrays the DLPack tests use.
#include "python/device_array.h"

#include <algorithm>
#include <cstring>

#include "cuda/core/device.h"
#include "python/bind.h"

namespace fuseprop::bindings {

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

ElemType parse_elem_type(const py::handle& dtype) {
  const py::dtype dt = py::dtype::from_args(py::reinterpret_borrow<py::object>(dtype));
  if (dt.equal(py::dtype::of<float>())) return ElemType::f32;
  if (dt.equal(py::dtype::of<int64_t>())) return ElemType::i64;
  throw py::type_error(cat("dtype must be float32 or int64, got ", py::str(dt).cast<std::string>()));
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

}  // namespace

bool is_device_array(const py::handle& obj) { return py::isinstance<DeviceArray>(obj); }

ElemType elem_type_of(const py::array& a, const char* name) {
  if (a.dtype().equal(py::dtype::of<float>())) return ElemType::f32;
  if (a.dtype().equal(py::dtype::of<int64_t>())) return ElemType::i64;
  throw py::type_error(cat(name, " must have dtype float32 or int64 (the CUDA backend's types), got ", dtype_str(a),
                           ": convert it first, e.g. x.astype(np.float32)"));
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

const DeviceArray& cuda_array_arg(const py::handle& obj, const char* name, ElemType type) {
  if (!is_device_array(obj))
    throw py::type_error(cat(name, " must be a fuseprop DeviceArray, got ", py::str(py::type::of(obj).attr("__name__")).cast<std::string>()));
  const DeviceArray& a = obj.cast<const DeviceArray&>();
  if (!a.on_cuda()) throw py::value_error(cat(name, " must be on a CUDA device, got one on ", a.device()));
  if (a.type != type) throw py::type_error(cat(name, " must have dtype ", elem_name(type), ", got ", elem_name(a.type)));
  return a;
}

void bind_device_array(py::module_& m) {
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
  m.def("_host_array", &host_array_for_tests, "a"_a, "a DeviceArray in host memory (a copy of a): tests the DLPack export without a GPU");
  m.def("cuda_synchronize", [] {
    require_device();
    py::gil_scoped_release nogil;
    cuda::synchronize();
  });
}

}  // namespace fuseprop::bindings
