#include "transport/rdma/topology.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>

#include "config/error.hpp"

namespace fs = std::filesystem;

namespace kvferry::transport::rdma {

namespace {

bool listed(const std::vector<std::string>& list, const std::string& name) {
  return std::find(list.begin(), list.end(), name) != list.end();
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names)
    out += (out.empty() ? "'" : ", '") + n + "'";
  return out;
}

/// The first line of a small sysfs file; empty when it cannot be read.
std::string read_line(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

/// A number as sysfs writes it ("1", "-1", "0x10de"); nullopt when it is not one.
std::optional<long> read_number(const fs::path& path) {
  auto text = read_line(path);
  char* end = nullptr;
  long value = std::strtol(text.c_str(), &end, 0);
  if (text.empty() || end == text.c_str() || (*end != '\0' && !std::isspace(*end)))
    return std::nullopt;
  return value;
}

/// Where a sysfs link leads (all links resolved); empty when it does not exist.
fs::path resolved(const fs::path& path) {
  std::error_code ec;
  auto out = fs::canonical(path, ec);
  return ec ? fs::path{} : out;
}

/// "0000:3b:00.0": domain, bus, device and function in hex.
bool is_pci_bus_id(const std::string& s) {
  auto n = s.size();
  if (n < 12 || s[n - 2] != '.' || s[n - 5] != ':' || s[n - 8] != ':')
    return false;
  for (size_t i = 0; i < n; ++i)
    if (i != n - 2 && i != n - 5 && i != n - 8 && !std::isxdigit(static_cast<unsigned char>(s[i])))
      return false;
  return true;
}

/// The names of the entries of a directory; empty when it cannot be read.
std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    out.push_back(it->path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

/// How many leading components two paths share.
size_t shared_components(const fs::path& a, const fs::path& b) {
  size_t n = 0;
  for (auto i = a.begin(), j = b.begin(); i != a.end() && j != b.end() && *i == *j; ++i, ++j)
    ++n;
  return n;
}

/// Splits `nics` into those `prefer` picks (by index) and the rest; all preferred when it picks
/// none.
config::nic_priority split(const std::vector<device_info>& nics,
                           const std::function<bool(size_t)>& prefer) {
  config::nic_priority row;
  for (size_t i = 0; i < nics.size(); ++i)
    (prefer(i) ? row.preferred : row.fallback).push_back(nics[i].name);
  if (row.preferred.empty())
    std::swap(row.preferred, row.fallback);
  return row;
}

} // namespace

caf::expected<std::vector<std::string>> select_nics(const std::vector<device_info>& present,
                                                    const std::vector<std::string>& device_names) {
  std::vector<std::string> names;
  for (const auto& d : present)
    names.push_back(d.name);
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  bool all = device_names.empty()
             || (device_names.size() == 1 && device_names[0] == "auto-discovery");
  if (names.empty())
    return make_error(errc::not_supported,
                      "no RDMA devices found"
                        + (all ? std::string() : " (device_name names " + join(device_names) + ")")
                        + ": the provider lists none. On a machine with RDMA NICs, check that "
                          "rdma-core and the NIC's driver are installed (`ibv_devices` lists what "
                          "libibverbs sees); without RDMA hardware, choose the emulated provider, "
                          "\"kvferry\": {\"rdma_provider\": \"emulated\"}, or \"protocol\": "
                          "\"tcp\"");
  if (all)
    return names;
  std::vector<std::string> out;
  for (const auto& wanted : device_names) {
    if (!listed(names, wanted))
      return make_error(errc::not_supported,
                        "RDMA device '" + wanted + "' named in device_name is not present; "
                          + "present: " + join(names) + "; expected device_name to name present "
                          + "devices, or \"\" / \"auto-discovery\" for all of them");
    if (!listed(out, wanted))
      out.push_back(wanted);
  }
  return out;
}

std::vector<device_info> with_sysfs_facts(std::vector<device_info> nics,
                                          const std::string& sysfs_root) {
  for (auto& nic : nics) {
    auto device = fs::path(sysfs_root) / "class" / "infiniband" / nic.name / "device";
    if (nic.numa_node < 0)
      if (auto node = read_number(device / "numa_node"); node && *node >= 0)
        nic.numa_node = static_cast<int>(*node);
    if (nic.pci_bus_id.empty())
      if (auto function = resolved(device).filename().string(); is_pci_bus_id(function))
        nic.pci_bus_id = function;
  }
  return nics;
}

std::map<std::string, config::nic_priority> discover_matrix(const std::string& sysfs_root,
                                                            const std::vector<device_info>& nics) {
  std::map<std::string, config::nic_priority> out;
  fs::path root(sysfs_root);
  for (const auto& entry : entries(root / "devices" / "system" / "node")) {
    auto digits = entry.substr(std::min<size_t>(4, entry.size()));
    if (!entry.starts_with("node") || digits.empty() || digits.size() > 5
        || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    int node = std::stoi(digits);
    out["cpu:" + std::to_string(node)]
      = split(nics, [&](size_t i) { return nics[i].numa_node == node; });
  }
  // The PCI path of each NIC: the bridge chain above its function.
  std::vector<fs::path> nic_bridges;
  for (const auto& nic : nics) {
    auto path = nic.pci_bus_id.empty()
                  ? fs::path{}
                  : resolved(root / "bus" / "pci" / "devices" / nic.pci_bus_id);
    if (path.empty())
      path = resolved(root / "class" / "infiniband" / nic.name / "device");
    nic_bridges.push_back(path.parent_path());
  }
  // entries() sorts the bus ids: PCI bus order.
  size_t gpu = 0;
  for (const auto& bdf : entries(root / "bus" / "pci" / "devices")) {
    auto function = root / "bus" / "pci" / "devices" / bdf;
    auto vendor = read_number(function / "vendor");
    auto device_class = read_number(function / "class");
    if (vendor != 0x10de || !device_class || (*device_class >> 16) != 0x03)
      continue;
    auto bridges = resolved(function).parent_path();
    std::vector<size_t> shared;
    size_t best = 0;
    for (const auto& nic : nic_bridges) {
      shared.push_back(bridges.empty() || nic.empty() ? 0 : shared_components(bridges, nic));
      best = std::max(best, shared.back());
    }
    out["cuda:" + std::to_string(gpu++)]
      = split(nics, [&](size_t i) { return best > 0 && shared[i] == best; });
  }
  return out;
}

std::vector<std::string>
nics_for_location(const std::map<std::string, config::nic_priority>& matrix,
                  const std::string& location, const std::vector<std::string>& available) {
  std::vector<std::string> out;
  auto add = [&](const std::vector<std::string>& names) {
    for (const auto& name : names)
      if (listed(available, name) && !listed(out, name))
        out.push_back(name);
  };
  if (auto it = matrix.find(location); it != matrix.end()) {
    add(it->second.preferred);
    add(it->second.fallback);
  }
  if (out.empty())
    add(available);
  return out;
}

} // namespace kvferry::transport::rdma
