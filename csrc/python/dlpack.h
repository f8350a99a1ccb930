// DLPack export and import of DeviceArrays (compiled only with the CUDA backend); the ABI structs are in
// python/dlpack_abi.h. The export is DeviceArray.__dlpack__ (device_dlpack, declared in device_array.h).
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "python/device_array.h"

namespace fuseprop::bindings {

// A DeviceArray viewing obj's memory (zero copy); the producer's deleter runs when the last view of it
// goes. obj must be a CUDA DLPack array on the current device, or (allow_cpu, for the tests) a CPU one.
std::shared_ptr<DeviceArray> import_dlpack(const py::handle& obj, bool allow_cpu);

}  // namespace fuseprop::bindings
