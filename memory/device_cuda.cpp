// Build with CUDA: host memory plus cuda:N device memory through the CUDA runtime.
#include <cstring>

#include <cuda_runtime_api.h>

#include "config/error.hpp"
#include "memory/device.hpp"

namespace kvferry::memory {

bool built_with_cuda() noexcept {
  return true;
}

int cuda_device_count() noexcept {
  int count = 0; // cudaGetDeviceCount leaves it unset when there is no driver.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

caf::error copy_bytes(void* dst, const location& dst_where, const void* src,
                      const location& src_where, size_t n) noexcept {
  if (!dst_where.is_device() && !src_where.is_device()) {
    std::memcpy(dst, src, n);
    return {};
  }
  // cudaMemcpyDefault infers the direction from unified virtual addressing.
  auto rc = cudaMemcpy(dst, src, n, cudaMemcpyDefault);
  if (rc != cudaSuccess) {
    cudaGetLastError();
    return make_error(errc::transport_failure,
                      "cudaMemcpy " + to_string(src_where) + " -> " + to_string(dst_where) + " of "
                        + std::to_string(n) + " bytes failed: " + cudaGetErrorString(rc));
  }
  return {};
}

caf::error check_location_usable(const location& where) {
  if (!where.is_device())
    return {};
  auto count = cuda_device_count();
  if (static_cast<int>(where.index) >= count)
    return make_error(errc::not_supported, "memory location " + to_string(where) + ": this machine has "
                                             + std::to_string(count) + " usable GPU(s)");
  return {};
}

} // namespace kvferry::memory
