// The CUDA runtime as the bindings see it: plain C++ (no CUDA types), so the bindings (csrc/python/) compile
// with the host compiler alone. Implemented in device.cu, linked against the static CUDA runtime, so
// importing fuseprop never needs libcudart and only a call here asks the driver anything.
#pragma once

#include <string>

namespace fuseprop::cuda {

struct DeviceQuery {
  int count = 0;        // usable devices; 0 when there is no driver or no device
  std::string status;   // "ok", or why there is no device (the runtime's own message)
  int runtime_version = 0;
  int driver_version = 0;  // 0 when there is no driver
};

DeviceQuery query_devices();

struct DeviceProperties {
  std::string name;
  int major = 0, minor = 0;          // compute capability
  long long total_memory = 0;        // bytes
  int multiprocessors = 0;
};

// Properties of device `index` (0 <= index < count); throws std::runtime_error with the runtime's message.
DeviceProperties device_properties(int index);

}  // namespace fuseprop::cuda
