#pragma once
/// What a node tells its peers about one of its segments: the registered regions (with RDMA keys
/// where the transport needs them) and the endpoints its data paths listen on. CAF serializes it
/// between nodes; a descriptor from a peer is checked with `validate()` before use.

#include <cstdint>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/meta/type_name.hpp>

#include "memory/range_lookup.hpp"

namespace kvferry::memory {

struct region_descriptor {
  uint64_t base = 0;
  uint64_t length = 0;
  /// "cpu:N" or "cuda:N".
  std::string location;
  /// RDMA remote key (0 where the segment's transports need none).
  uint32_t remote_key = 0;
  /// RDMA remote keys, one per "rdma" endpoint of the descriptor, in their order; empty when the
  /// region is not reachable over RDMA (then RDMA workers refuse slices to it).
  std::vector<uint32_t> rdma_keys;

  [[nodiscard]] bool contains(uint64_t addr, uint64_t len) const noexcept {
    return range_contains(base, length, addr, len);
  }
  friend bool operator==(const region_descriptor&, const region_descriptor&) = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, region_descriptor& x) {
  return f(caf::meta::type_name("kvferry::region_descriptor"), x.base, x.length, x.location,
           x.remote_key, x.rdma_keys);
}

/// One data-path endpoint of a segment, e.g. {"tcp", "tcp://10.0.0.2:41000"}.
struct transport_endpoint {
  std::string kind;
  std::string address;
  friend bool operator==(const transport_endpoint&, const transport_endpoint&) = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, transport_endpoint& x) {
  return f(caf::meta::type_name("kvferry::transport_endpoint"), x.kind, x.address);
}

struct segment_descriptor {
  /// The segment's name as peers open it ("host:port" under P2PHANDSHAKE).
  std::string name;
  /// Changes each time the owning node starts, so peers can tell a restarted node from the old one.
  uint64_t incarnation = 0;
  /// Sorted by base, non-overlapping.
  std::vector<region_descriptor> regions;
  std::vector<transport_endpoint> endpoints;

  /// The region holding all of [addr, addr+len), or nullptr. O(log n).
  [[nodiscard]] const region_descriptor* find(uint64_t addr, uint64_t len) const noexcept;
  /// The endpoint of the given kind, or nullptr.
  [[nodiscard]] const transport_endpoint* endpoint(const std::string& kind) const noexcept;
  /// Checks what a peer sent: a name, sorted non-overlapping regions without wrap-around.
  [[nodiscard]] caf::error validate() const;

  friend bool operator==(const segment_descriptor&, const segment_descriptor&) = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, segment_descriptor& x) {
  return f(caf::meta::type_name("kvferry::segment_descriptor"), x.name, x.incarnation, x.regions,
           x.endpoints);
}

} // namespace kvferry::memory
