// The DLPack ABI (https://dmlc.github.io/dlpack/latest/c_api.html), the structs only: the layout every
// producer and consumer (PyTorch, CuPy, JAX, NumPy) agrees on. Written from the specification so the
// build needs no extra header; field order and types must match it exactly. Version 1.0 adds
// DLManagedTensorVersioned (capsule "dltensor_versioned"); the legacy DLManagedTensor ("dltensor") is
// what a consumer gets when it does not ask for a version.
#pragma once

#include <cstdint>

namespace fuseprop::dlpack {

enum DeviceType : int32_t { kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13 };
enum DataTypeCode : uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4 };

struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};

struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null means compact row-major
  uint64_t byte_offset;
};

struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};

constexpr uint32_t kVersionMajor = 1, kVersionMinor = 0;
constexpr uint64_t kFlagReadOnly = 1ull << 0;

struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  uint64_t flags;
  DLTensor dl_tensor;
};

}  // namespace fuseprop::dlpack
