#include "cuda/core/memory.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <mutex>
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

namespace fuseprop::cuda {

namespace {

constexpr size_t kStagingChunk = size_t(8) << 20;

// Two pinned chunks and an event each, shared by every upload of the process (a mutex serialises
// uploads). Allocated on the first staged upload, freed at exit by the OS with the process.
struct Staging {
  std::mutex mutex;
  void* chunk[2] = {nullptr, nullptr};
  cudaEvent_t done[2] = {};
  bool ready = false;
  void init() {
    if (ready) return;
    for (int i = 0; i < 2; ++i) {
      FUSEPROP_CUDA_CHECK(cudaMallocHost(&chunk[i], kStagingChunk));
      FUSEPROP_CUDA_CHECK(cudaEventCreateWithFlags(&done[i], cudaEventDisableTiming));
    }
    ready = true;
  }
};

Staging& staging() {
  static Staging* s = new Staging;  // never destroyed: the runtime may be gone at static destruction
  return *s;
}

}  // namespace

void copy_to_device_staged(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  Staging& s = staging();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.init();
  // Chunk i is filled on the host while chunk 1 - i is on its way: wait only before refilling a chunk.
  bool pending[2] = {false, false};
  for (size_t at = 0, i = 0; at < bytes; at += kStagingChunk, i ^= 1) {
    const size_t n = std::min(kStagingChunk, bytes - at);
    if (pending[i]) FUSEPROP_CUDA_CHECK(cudaEventSynchronize(s.done[i]));
    std::memcpy(s.chunk[i], static_cast<const char*>(src) + at, n);
    FUSEPROP_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + at, s.chunk[i], n, cudaMemcpyHostToDevice, 0));
    FUSEPROP_CUDA_CHECK(cudaEventRecord(s.done[i], 0));
    pending[i] = true;
  }
  for (int i = 0; i < 2; ++i)
    if (pending[i]) FUSEPROP_CUDA_CHECK(cudaEventSynchronize(s.done[i]));
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes > 0) FUSEPROP_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

void copy_device_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes > 0) FUSEPROP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0));
}

void fill_zero(void* dst, size_t bytes) {
  if (bytes > 0) FUSEPROP_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, 0));
}

void synchronize() { FUSEPROP_CUDA_CHECK(cudaDeviceSynchronize()); }

int current_device() {
  int d = 0;
  FUSEPROP_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

}  // namespace fuseprop::cuda
