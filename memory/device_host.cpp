// Build without CUDA: host memory only.
#include <cstring>

#include "config/error.hpp"
#include "memory/device.hpp"

namespace kvferry::memory {

bool built_with_cuda() noexcept {
  return false;
}

int cuda_device_count() noexcept {
  return 0;
}

caf::error copy_bytes(void* dst, const location& dst_where, const void* src,
                      const location& src_where, size_t n) noexcept {
  if (dst_where.is_device() || src_where.is_device())
    return make_error(errc::not_supported, "copy involving " + to_string(dst_where) + " / "
                                             + to_string(src_where)
                                             + ": this build has no CUDA support");
  std::memcpy(dst, src, n);
  return {};
}

caf::error check_location_usable(const location& where) {
  if (where.is_device())
    return make_error(errc::not_supported, "memory location " + to_string(where)
                                             + " needs a build with CUDA support");
  return {};
}

} // namespace kvferry::memory
