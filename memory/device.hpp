#pragma once
/// Host/GPU-aware copies and device queries. The CUDA implementation (device_cuda.cpp) is
/// compiled when CMake finds the CUDA toolkit; otherwise device_host.cpp answers
/// errc::not_supported for any cuda:N location. memory/CMakeLists.txt is the one place that
/// chooses between them.

#include <cstddef>

#include <caf/error.hpp>

#include "memory/location.hpp"

namespace kvferry::memory {

/// True when this build has CUDA support (it may still find no GPU at run time).
[[nodiscard]] bool built_with_cuda() noexcept;

/// Number of usable GPUs (0 without CUDA, without a driver, or without a device).
[[nodiscard]] int cuda_device_count() noexcept;

/// Copies `n` bytes between host and/or device memory.
[[nodiscard]] caf::error copy_bytes(void* dst, const location& dst_where, const void* src,
                                    const location& src_where, size_t n) noexcept;

/// Checks that memory at `where` can be used by this process (GPU present for cuda:N).
[[nodiscard]] caf::error check_location_usable(const location& where);

} // namespace kvferry::memory
