// _C.DeviceArray, the CUDA backend's array type (compiled only with the CUDA backend).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cuda/core/memory.h"
#include "python/checks.h"
#include "python/dlpack_abi.h"

namespace fuseprop::bindings {

// A DeviceArray is a C-contiguous float32 or int64 array that another object's memory backs: device
// memory fuseprop allocated, a DLPack tensor another library lent (PyTorch, CuPy, JAX: kept alive, and
// its deleter called, when the last view goes), or, only to test the DLPack code without a GPU, host memory.

enum class ElemType { f32, i64 };

inline size_t elem_size(ElemType t) { return t == ElemType::f32 ? 4 : 8; }
inline const char* elem_name(ElemType t) { return t == ElemType::f32 ? "float32" : "int64"; }

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

bool is_device_array(const py::handle& obj);
// A numpy array's element type, float32 or int64 (TypeError otherwise).
ElemType elem_type_of(const py::array& a, const char* name);
// An uninitialised DeviceArray on the current device.
std::shared_ptr<DeviceArray> device_empty(const std::vector<int64_t>& shape, ElemType type);
// The host-memory DeviceArray (a copy of a), for the DLPack tests that run without a GPU.
std::shared_ptr<DeviceArray> host_array_for_tests(const py::handle& obj);
py::array device_to_numpy(const DeviceArray& a);
void check_writable_device(const DeviceArray& a, const char* name);
// obj as a DeviceArray on a CUDA device with elements of type (TypeError or ValueError otherwise).
const DeviceArray& cuda_array_arg(const py::handle& obj, const char* name, ElemType type);

// a.__dlpack__(...) (python/dlpack.cpp)
py::capsule device_dlpack(const DeviceArray& a, const py::object& stream, const py::object& max_version,
                          const py::object& dl_device, const py::object& copy);

}  // namespace fuseprop::bindings
