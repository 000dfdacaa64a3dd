#include "memory/segment_descriptor.hpp"

#include <algorithm>

#include "config/error.hpp"
#include "memory/location.hpp"

namespace kvferry::memory {

const region_descriptor* segment_descriptor::find(uint64_t addr, uint64_t len) const noexcept {
  return find_containing<region_descriptor>(regions, addr, len);
}

const transport_endpoint* segment_descriptor::endpoint(const std::string& kind) const noexcept {
  for (const auto& ep : endpoints)
    if (ep.kind == kind)
      return &ep;
  return nullptr;
}

caf::error segment_descriptor::validate() const {
  if (name.empty() || name.size() > 256)
    return make_error(errc::malformed_frame, "segment descriptor: name is empty or longer than 256");
  uint64_t previous_end = 0;
  size_t rdma_endpoints = 0;
  for (const auto& ep : endpoints)
    rdma_endpoints += ep.kind == "rdma" ? 1 : 0;
  for (size_t i = 0; i < regions.size(); ++i) {
    const auto& r = regions[i];
    if (r.length == 0 || r.base + r.length < r.base || (i > 0 && r.base < previous_end))
      return make_error(errc::malformed_frame,
                        "segment descriptor '" + name + "': region " + std::to_string(i)
                          + " is empty, wraps around or overlaps the previous one");
    if (auto where = parse_location(r.location); !where)
      return make_error(errc::malformed_frame,
                        "segment descriptor '" + name + "': region " + std::to_string(i)
                          + ": location '" + r.location.substr(0, 32) + "' is not cpu:N or cuda:N");
    if (!r.rdma_keys.empty() && r.rdma_keys.size() != rdma_endpoints)
      return make_error(errc::malformed_frame,
                        "segment descriptor '" + name + "': region " + std::to_string(i) + " has "
                          + std::to_string(r.rdma_keys.size()) + " RDMA keys; expected none or "
                          + std::to_string(rdma_endpoints) + " (one per rdma endpoint)");
    previous_end = r.base + r.length;
  }
  for (const auto& ep : endpoints)
    if (ep.kind.empty() || ep.kind.size() > 32 || ep.address.size() > 512)
      return make_error(errc::malformed_frame, "segment descriptor '" + name
                                                 + "': an endpoint's kind or address is empty or "
                                                   "too long");
  return {};
}

} // namespace kvferry::memory
