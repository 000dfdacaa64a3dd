#pragma once
/// Where the data_plane fuzz target's segment lives. Fixed addresses, so an input (a seed, a crash
/// reproducer, a corpus entry) addresses the same registered memory in every run, and PROT_NONE
/// guard pages around each buffer turn any stray access into a crash.
///
///   reserve_base                 4 MiB reserved, PROT_NONE except:
///   + 1 MiB   host buffer        1 MiB read-write, registered as "cpu:0"
///   + 3 MiB   device buffer      64 KiB read-write, registered as "cuda:0" (never touched: this
///                                build has no CUDA, so copies to or from it fail)
/// The address lies in what AddressSanitizer leaves to the application on x86-64 Linux.

#include <cstddef>
#include <cstdint>

namespace kvferry::fuzz {

inline constexpr uint64_t reserve_base = 0x500000000000ULL;
inline constexpr size_t reserve_length = 4 << 20;
inline constexpr uint64_t host_base = reserve_base + (1 << 20);
inline constexpr size_t host_length = 1 << 20;
inline constexpr uint64_t device_base = reserve_base + (3 << 20);
inline constexpr size_t device_length = 64 << 10;
/// The segment's incarnation.
inline constexpr uint64_t incarnation = 7;

} // namespace kvferry::fuzz
