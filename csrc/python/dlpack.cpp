// DLPack: DeviceArray.__dlpack__ (versioned or legacy capsule, as the consumer asks) and the zero-copy
// import behind cuda_from_dlpack.
#include "python/dlpack.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "cuda/core/device.h"
#include "python/bind.h"

namespace fuseprop::bindings {

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

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

}  // namespace

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

void bind_dlpack(py::module_& m) {
  m.def("cuda_from_dlpack", [](const py::handle& obj) { return import_dlpack(obj, false); }, "obj"_a,
        "a DeviceArray viewing a CUDA DLPack array's memory (no copy); the producer's memory stays alive with it");
  m.def("_dlpack_import_any", [](const py::handle& obj) { return import_dlpack(obj, true); }, "obj"_a,
        "as cuda_from_dlpack, but also takes CPU DLPack arrays (tests the import without a GPU)");
}

}  // namespace fuseprop::bindings
