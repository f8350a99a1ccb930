#include "cuda/core/device.h"

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace fuseprop::cuda {

DeviceQuery query_devices() {
  DeviceQuery q;
  cudaRuntimeGetVersion(&q.runtime_version);
  if (cudaDriverGetVersion(&q.driver_version) != cudaSuccess) q.driver_version = 0;
  const cudaError_t err = cudaGetDeviceCount(&q.count);
  if (err != cudaSuccess) {
    q.count = 0;
    q.status = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error so later calls are not poisoned by this one
  } else {
    q.status = q.count > 0 ? "ok" : "no CUDA device";
  }
  return q;
}

DeviceProperties device_properties(int index) {
  cudaDeviceProp prop;
  const cudaError_t err = cudaGetDeviceProperties(&prop, index);
  if (err != cudaSuccess) throw std::runtime_error(std::string("cudaGetDeviceProperties: ") + cudaGetErrorString(err));
  return {prop.name, prop.major, prop.minor, static_cast<long long>(prop.totalGlobalMem), prop.multiProcessorCount};
}

}  // namespace fuseprop::cuda
