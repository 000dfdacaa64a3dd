#define BOOST_TEST_MODULE rdma_topology_test
#include <boost/test/unit_test.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "tests/support/checks.hpp"
#include "config/error.hpp"
#include "transport/rdma/topology.hpp"

using namespace kvferry;
using namespace kvferry::transport::rdma;
namespace fs = std::filesystem;
using names = std::vector<std::string>;

namespace {

using kvferry::test::contains;
using kvferry::test::why;

/// A fake sysfs in a temporary directory, removed at the end of the test:
///   NUMA nodes 0, 1 and 2 (no NIC on node 2);
///   root complex pci0000:00: switch 0000:01:00.0 with GPU 0000:03:00.0 (and its audio function)
///     and NIC mlx5_0 (node 0) 0000:04:00.0 on two downstream ports;
///   root complex pci0000:80: switch 0000:81:00.0 with GPU 0000:83:00.0 and NIC mlx5_1 (node 1)
///     0000:84:00.0; GPU 0000:90:00.0 on another root port; an Intel display 0000:91:00.0.
struct fake_sysfs {
  fs::path root;

  fake_sysfs() {
    std::string tmpl = (fs::temp_directory_path() / "kvferry-sysfs-XXXXXX").string();
    BOOST_REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    root = tmpl;
    for (auto node : {"node0", "node1", "node2"})
      fs::create_directories(root / "devices/system/node" / node);
    write("devices/system/node/possible", "0-2");
    function("pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:00.0/0000:03:00.0", "0x10de", "0x030200");
    function("pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:00.0/0000:03:00.1", "0x10de", "0x040300");
    function("pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:08.0/0000:04:00.0", "0x15b3", "0x020700");
    function("pci0000:80/0000:80:01.0/0000:81:00.0/0000:82:00.0/0000:83:00.0", "0x10de", "0x030000");
    function("pci0000:80/0000:80:01.0/0000:81:00.0/0000:82:08.0/0000:84:00.0", "0x15b3", "0x020700");
    function("pci0000:80/0000:80:02.0/0000:90:00.0", "0x10de", "0x030200");
    function("pci0000:80/0000:80:03.0/0000:91:00.0", "0x8086", "0x030000");
    nic("mlx5_0", "pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:08.0/0000:04:00.0", "0");
    nic("mlx5_1", "pci0000:80/0000:80:01.0/0000:81:00.0/0000:82:08.0/0000:84:00.0", "1");
  }
  ~fake_sysfs() {
    std::error_code ec;
    fs::remove_all(root, ec);
  }

  void write(const fs::path& relative, const std::string& text) const {
    fs::create_directories((root / relative).parent_path());
    std::ofstream(root / relative) << text << "\n";
  }
  /// A PCI function under devices/ and its link in bus/pci/devices (relative, as in sysfs).
  void function(const std::string& path, const std::string& vendor, const std::string& cls) const {
    auto dir = fs::path("devices") / path;
    write(dir / "vendor", vendor);
    write(dir / "class", cls);
    fs::create_directories(root / "bus/pci/devices");
    fs::create_directory_symlink(fs::path("../../..") / dir,
                                 root / "bus/pci/devices" / dir.filename());
  }
  void nic(const std::string& name, const std::string& path, const std::string& numa) const {
    write(fs::path("devices") / path / "numa_node", numa);
    fs::create_directories(root / "class/infiniband" / name);
    fs::create_directory_symlink(fs::path("../../../devices") / path,
                                 root / "class/infiniband" / name / "device");
  }
  std::string str() const { return root.string(); }
};

std::vector<device_info> two_nics() {
  return {device_info{"mlx5_0", -1, ""}, device_info{"mlx5_1", -1, ""}};
}

void check_row(const std::map<std::string, config::nic_priority>& m, const std::string& location,
               const names& preferred, const names& fallback) {
  BOOST_TEST_CONTEXT("location " << location) {
    BOOST_REQUIRE(m.count(location) == 1);
    BOOST_CHECK(m.at(location).preferred == preferred);
    BOOST_CHECK(m.at(location).fallback == fallback);
  }
}

} // namespace

// -- select_nics ----------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(select_all_or_the_named_ones) {
  std::vector<device_info> present{{"mlx5_1", 1, ""}, {"mlx5_0", 0, ""}, {"mlx5_2", 0, ""}};
  for (const auto& all : {names{}, names{"auto-discovery"}}) {
    auto r = select_nics(present, all);
    BOOST_REQUIRE_MESSAGE(r, why(r));
    BOOST_CHECK((*r == names{"mlx5_0", "mlx5_1", "mlx5_2"}));
  }
  auto named = select_nics(present, {"mlx5_2", "mlx5_0", "mlx5_2"});
  BOOST_REQUIRE_MESSAGE(named, why(named));
  BOOST_CHECK((*named == names{"mlx5_2", "mlx5_0"}));
}

BOOST_AUTO_TEST_CASE(select_names_what_is_missing) {
  std::vector<device_info> present{{"mlx5_1", 1, ""}, {"mlx5_0", 0, ""}};
  auto missing = select_nics(present, {"mlx5_0", "mlx5_9"});
  BOOST_REQUIRE(!missing);
  BOOST_CHECK(code_of(missing.error()) == errc::not_supported);
  auto text = context_of(missing.error());
  for (auto part : {"'mlx5_9'", "device_name", "not present", "present: 'mlx5_0', 'mlx5_1'",
                    "auto-discovery"})
    BOOST_CHECK_MESSAGE(contains(text, part), text << " lacks " << part);
  BOOST_CHECK_MESSAGE(!contains(text, "'mlx5_0' named"), text);

  for (const auto& wanted : {names{}, names{"erdma_0"}}) {
    auto none = select_nics({}, wanted);
    BOOST_REQUIRE(!none);
    BOOST_CHECK(code_of(none.error()) == errc::not_supported);
    auto t = context_of(none.error());
    for (auto part : {"no RDMA devices found", "ibv_devices",
                      "\"kvferry\": {\"rdma_provider\": \"emulated\"}", "\"protocol\": \"tcp\""})
      BOOST_CHECK_MESSAGE(contains(t, part), t << " lacks " << part);
    BOOST_CHECK_MESSAGE(wanted.empty() || contains(t, "'erdma_0'"), t);
  }
}

// -- sysfs ----------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(sysfs_facts_fill_what_is_unknown) {
  fake_sysfs sys;
  auto nics = with_sysfs_facts(
    {{"mlx5_0", -1, ""}, {"mlx5_1", 3, "0000:aa:00.0"}, {"emu_rdma0", -1, ""}}, sys.str());
  BOOST_REQUIRE_EQUAL(nics.size(), 3u);
  BOOST_CHECK_EQUAL(nics[0].numa_node, 0);
  BOOST_CHECK_EQUAL(nics[0].pci_bus_id, "0000:04:00.0");
  // What the provider already knew stays.
  BOOST_CHECK_EQUAL(nics[1].numa_node, 3);
  BOOST_CHECK_EQUAL(nics[1].pci_bus_id, "0000:aa:00.0");
  // A device sysfs does not list (an emulated one) is left unknown.
  BOOST_CHECK_EQUAL(nics[2].numa_node, -1);
  BOOST_CHECK(nics[2].pci_bus_id.empty());
  // An unknown NUMA node ("-1", as on single-node machines) stays unknown.
  sys.write("devices/pci0000:80/0000:80:01.0/0000:81:00.0/0000:82:08.0/0000:84:00.0/numa_node", "-1");
  BOOST_CHECK_EQUAL(with_sysfs_facts({{"mlx5_1", -1, ""}}, sys.str())[0].numa_node, -1);
}

BOOST_AUTO_TEST_CASE(discovery_by_numa_node_and_pcie_switch) {
  fake_sysfs sys;
  auto nics = with_sysfs_facts(two_nics(), sys.str());
  auto m = discover_matrix(sys.str(), nics);
  BOOST_CHECK_EQUAL(m.size(), 6u);
  check_row(m, "cpu:0", {"mlx5_0"}, {"mlx5_1"});
  check_row(m, "cpu:1", {"mlx5_1"}, {"mlx5_0"});
  // No NIC on node 2: every NIC is as good as any other.
  check_row(m, "cpu:2", {"mlx5_0", "mlx5_1"}, {});
  // GPUs in PCI order; the audio function and the Intel display are not GPUs.
  check_row(m, "cuda:0", {"mlx5_0"}, {"mlx5_1"});
  check_row(m, "cuda:1", {"mlx5_1"}, {"mlx5_0"});
  // No NIC behind its switch: the NIC on the same root complex comes first.
  check_row(m, "cuda:2", {"mlx5_1"}, {"mlx5_0"});
}

BOOST_AUTO_TEST_CASE(discovery_without_facts_prefers_every_nic) {
  fake_sysfs sys;
  // Emulated NICs: sysfs knows nothing about them.
  std::vector<device_info> emulated{{"emu_rdma0", -1, ""}, {"emu_rdma1", -1, ""}};
  auto m = discover_matrix(sys.str(), with_sysfs_facts(emulated, sys.str()));
  for (auto location : {"cpu:0", "cpu:1", "cpu:2", "cuda:0", "cuda:1", "cuda:2"})
    check_row(m, location, {"emu_rdma0", "emu_rdma1"}, {});
  // No sysfs at all: no location is known (nics_for_location then offers every NIC).
  BOOST_CHECK(discover_matrix((sys.root / "absent").string(), two_nics()).empty());
  // A GPU whose path does not resolve.
  fs::remove(sys.root / "bus/pci/devices/0000:83:00.0");
  sys.write("bus/pci/devices/0000:83:00.0/vendor", "0x10de");
  sys.write("bus/pci/devices/0000:83:00.0/class", "0x030200");
  auto partial = discover_matrix(sys.str(), with_sysfs_facts(two_nics(), sys.str()));
  check_row(partial, "cuda:0", {"mlx5_0"}, {"mlx5_1"});
  check_row(partial, "cuda:1", {"mlx5_0", "mlx5_1"}, {});
}

// -- nics_for_location ----------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(location_prefers_then_falls_back_within_available) {
  std::map<std::string, config::nic_priority> m{
    {"cpu:0", {{"mlx5_0"}, {"mlx5_1", "mlx5_2"}}},
    {"cuda:0", {{"mlx5_2", "mlx5_3"}, {"mlx5_0"}}},
    {"cuda:1", {{}, {}}},
    {"cuda:2", {{"mlx5_9"}, {}}},
  };
  names available{"mlx5_0", "mlx5_1", "mlx5_2"};
  BOOST_CHECK((nics_for_location(m, "cpu:0", available) == names{"mlx5_0", "mlx5_1", "mlx5_2"}));
  // mlx5_3 is not open: never offered.
  BOOST_CHECK((nics_for_location(m, "cuda:0", available) == names{"mlx5_2", "mlx5_0"}));
  BOOST_CHECK((nics_for_location(m, "cpu:0", {"mlx5_2", "mlx5_1"}) == names{"mlx5_1", "mlx5_2"}));
  // Unknown location, empty lists, or none of the listed NICs open: every available NIC.
  BOOST_CHECK(nics_for_location(m, "cpu:7", available) == available);
  BOOST_CHECK(nics_for_location(m, "cuda:1", available) == available);
  BOOST_CHECK(nics_for_location(m, "cuda:2", available) == available);
  BOOST_CHECK(nics_for_location({}, "cpu:0", available) == available);
  BOOST_CHECK(nics_for_location(m, "cpu:0", {}).empty());
}
