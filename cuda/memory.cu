#include "memory.h"

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace fuseprop::cuda {

void check(int code, const char* call) {
  if (code == cudaSuccess) return;
  const cudaError_t err = static_cast<cudaError_t>(code);
  throw std::runtime_error(std::string(call) + ": " + cudaGetErrorString(err));
}

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) FUSEPROP_CUDA_CHECK(cudaMalloc(&data_, bytes));
}

DeviceBuffer::~DeviceBuffer() {
  if (data_) cudaFree(data_);  // a destructor must not throw; a failed free leaks nothing we can reclaim
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::copy_from_host(const void* src) {
  if (bytes_ > 0) FUSEPROP_CUDA_CHECK(cudaMemcpy(data_, src, bytes_, cudaMemcpyHostToDevice));
}

void DeviceBuffer::copy_to_host(void* dst) const {
  if (bytes_ > 0) FUSEPROP_CUDA_CHECK(cudaMemcpy(dst, data_, bytes_, cudaMemcpyDeviceToHost));
}

}  // namespace fuseprop::cuda
