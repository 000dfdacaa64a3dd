#pragma once
/// Which RDMA NICs a node opens, and which of them serve a memory location best.
///
/// The NICs come from device_name (or every device present). The NIC priority matrix, as in
/// Mooncake, maps a memory location ("cpu:N" for NUMA node N, "cuda:N" for GPU N) to preferred
/// and fallback NICs; it comes from the configuration (nic_priority_matrix) or is discovered
/// from sysfs: a CPU node prefers the NICs on its NUMA node, a GPU the NICs behind the same PCIe
/// switch. Discovery reads sysfs under a root the caller names ("/sys", or a fake tree in
/// tests) and tolerates whatever is missing: without the facts, every NIC is preferred.

#include <map>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "config/settings.hpp"
#include "transport/rdma/verbs.hpp"

namespace kvferry::transport::rdma {

/// The NICs to open. With `device_names` empty or {"auto-discovery"}: every device present,
/// sorted by name. Otherwise the named ones, in the order named; each must be present.
/// errc::not_supported when a named device is missing (the message lists those present) or no
/// device is present at all (the message says how to choose the emulated provider).
[[nodiscard]] caf::expected<std::vector<std::string>>
select_nics(const std::vector<device_info>& present, const std::vector<std::string>& device_names);

/// `nics` with what sysfs knows filled in where it is unknown: numa_node from
/// <sysfs_root>/class/infiniband/<name>/device/numa_node, pci_bus_id from the PCI function that
/// <sysfs_root>/class/infiniband/<name>/device resolves to. Devices sysfs does not list (the
/// emulated ones) are returned as they are.
[[nodiscard]] std::vector<device_info> with_sysfs_facts(std::vector<device_info> nics,
                                                        const std::string& sysfs_root);

/// A priority matrix discovered from sysfs for `nics` (with their sysfs facts filled in):
///   "cpu:N" for each <sysfs_root>/devices/system/node/nodeN: preferred = the NICs on node N,
///     fallback = the others (all preferred when none is on node N);
///   "cuda:K" for the K-th NVIDIA GPU (vendor 0x10de, class 0x03xxxx) under
///     <sysfs_root>/bus/pci/devices in PCI bus order (as CUDA_DEVICE_ORDER=PCI_BUS_ID numbers
///     them): preferred = the NICs whose PCI path shares the longest bridge chain with the GPU's
///     (the same PCIe switch before the same root complex), fallback = the others (all
///     preferred when sysfs does not tell).
[[nodiscard]] std::map<std::string, config::nic_priority>
discover_matrix(const std::string& sysfs_root, const std::vector<device_info>& nics);

/// The NICs, in order of preference, for memory at `location`: the location's preferred NICs
/// that are in `available`, then its fallback ones; when that leaves none (location absent, its
/// lists empty, or none of their NICs open) every available NIC. Never a NIC not in `available`.
[[nodiscard]] std::vector<std::string>
nics_for_location(const std::map<std::string, config::nic_priority>& matrix,
                  const std::string& location, const std::vector<std::string>& available);

} // namespace kvferry::transport::rdma
