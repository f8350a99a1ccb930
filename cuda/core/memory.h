// Device memory as the bindings see it: plain C++ (no CUDA types). A DeviceBuffer owns one
// cudaMalloc allocation (never managed memory) and frees it when it goes; copies are synchronous.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fuseprop::cuda {

// Throws std::runtime_error "<call>: <the runtime's message>" unless code is cudaSuccess (0).
void check(int code, const char* call);
#define FUSEPROP_CUDA_CHECK(call) ::fuseprop::cuda::check(static_cast<int>(call), #call)

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);  // zero bytes allocates nothing (data() is null)
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T>
  T* as() const { return static_cast<T*>(data_); }
  size_t bytes() const { return bytes_; }

  void copy_from_host(const void* src);   // bytes() bytes
  void copy_to_host(void* dst) const;     // bytes() bytes

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Copies between raw pointers; all on the default stream, after the work already queued there.
// Host to device through pinned staging buffers (chunks of 8 MiB, two in flight): the host array may be
// pageable; the call returns once the data is on the device, so the host array can change afterwards.
void copy_to_device_staged(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);        // waits for the device
void copy_device_to_device(void* dst, const void* src, size_t bytes);  // queued, no wait
void fill_zero(void* dst, size_t bytes);                             // queued, no wait
void synchronize();      // waits for everything queued on the device
int current_device();    // the device the kernels run on (cudaGetDevice)

}  // namespace fuseprop::cuda
