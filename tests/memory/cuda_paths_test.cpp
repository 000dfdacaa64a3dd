// GPU memory paths: cuda:N regions moved by the same-process path (cudaMemcpy) and by the TCP
// path, where device memory must be staged through host memory (a device pointer never reaches a
// socket call). On a machine without a GPU every case reports "skipped: no device".
#define BOOST_TEST_MODULE cuda_paths
#include <boost/test/unit_test.hpp>

#include <cstdio>
#include <cstring>
#include <vector>

#include <cuda_runtime_api.h>

#include "actors/transfer_engine.hpp"
#include "memory/device.hpp"
#include "tools/pattern.hpp"

using namespace kvferry;

namespace {

bool have_gpu() {
  if (memory::cuda_device_count() > 0)
    return true;
  std::printf("skipped: no device (cuda_device_count() == 0)\n");
  BOOST_TEST_MESSAGE("skipped: no device");
  return false;
}

struct device_buffer {
  explicit device_buffer(size_t n) : size(n) {
    BOOST_REQUIRE(cudaMalloc(&ptr, n) == cudaSuccess);
    BOOST_REQUIRE(cudaMemset(ptr, 0, n) == cudaSuccess);
  }
  ~device_buffer() { cudaFree(ptr); }
  void* ptr = nullptr;
  size_t size;
};

std::vector<uint8_t> to_host(const device_buffer& d) {
  std::vector<uint8_t> out(d.size);
  BOOST_REQUIRE(cudaMemcpy(out.data(), d.ptr, d.size, cudaMemcpyDeviceToHost) == cudaSuccess);
  return out;
}

constexpr uint64_t seed = 0xc0da;

/// READ device->host and WRITE host->device between `local` (host) and `remote` (device) segments.
void round_trip(transfer_engine& host_side, segment_id seg, device_buffer& dev, size_t n,
                size_t offset) {
  std::vector<uint8_t> host(n + 64, 0);
  // Put the pattern into device memory first (via cudaMemcpy), then READ it over the engine.
  std::vector<uint8_t> staged(dev.size);
  tools::fill_pattern(staged.data(), staged.size(), seed);
  BOOST_REQUIRE(cudaMemcpy(dev.ptr, staged.data(), staged.size(), cudaMemcpyHostToDevice) == cudaSuccess);
  BOOST_REQUIRE(!host_side.register_memory(host.data(), host.size(), "cpu:0"));
  auto remote = reinterpret_cast<uint64_t>(dev.ptr) + offset;
  auto batch = host_side.allocate_batch(2);
  BOOST_REQUIRE(batch);
  transfer_request read{opcode::read, host.data() + 3, seg, remote, n};
  BOOST_REQUIRE(host_side.submit(*batch, std::span(&read, 1)));
  auto s = host_side.wait(*batch, std::chrono::seconds(30));
  BOOST_REQUIRE(s);
  BOOST_CHECK_EQUAL(s->completed, 1u);
  BOOST_CHECK_EQUAL(tools::check_pattern(host.data() + 3, n, seed, offset), n);
  // WRITE a different pattern back into device memory and check it there.
  tools::fill_pattern(host.data() + 3, n, seed + 1, offset);
  transfer_request write{opcode::write, host.data() + 3, seg, remote, n};
  BOOST_REQUIRE(host_side.submit(*batch, std::span(&write, 1)));
  s = host_side.wait(*batch, std::chrono::seconds(30));
  BOOST_REQUIRE(s);
  BOOST_CHECK_EQUAL(s->completed, 2u);
  auto back = to_host(dev);
  BOOST_CHECK_EQUAL(tools::check_pattern(back.data() + offset, n, seed + 1, offset), n);
  BOOST_CHECK(!host_side.free_batch(*batch));
  BOOST_CHECK(!host_side.unregister_memory(host.data()));
}

} // namespace

BOOST_AUTO_TEST_CASE(same_process_path_moves_device_memory) {
  if (!have_gpu())
    return;
  auto rt = runtime::create({});
  BOOST_REQUIRE(rt);
  config::settings settings;
  auto gpu = transfer_engine::create(*rt, settings, {.segment_name = "gpu"});
  auto cpu = transfer_engine::create(*rt, settings, {.segment_name = "cpu"});
  BOOST_REQUIRE(gpu && cpu);
  device_buffer dev(8 << 20);
  BOOST_REQUIRE(!(*gpu)->register_memory(dev.ptr, dev.size, "cuda:0"));
  auto seg = (*cpu)->open_segment("gpu");
  BOOST_REQUIRE(seg);
  for (size_t n : {size_t{1}, size_t{4097}, size_t{65537}, size_t{3} << 20})
    round_trip(**cpu, *seg, dev, n, 5);
}

BOOST_AUTO_TEST_CASE(tcp_path_stages_device_memory) {
  if (!have_gpu())
    return;
  // Two networked runtimes: two CAF systems talking over loopback exactly like two processes.
  auto rt_a = runtime::create({.network = true});
  auto rt_b = runtime::create({.network = true});
  BOOST_REQUIRE(rt_a && rt_b);
  config::settings settings;
  auto gpu = transfer_engine::create(*rt_a, settings);
  auto cpu = transfer_engine::create(*rt_b, settings);
  BOOST_REQUIRE(gpu && cpu);
  device_buffer dev(8 << 20);
  BOOST_REQUIRE(!(*gpu)->register_memory(dev.ptr, dev.size, "cuda:0"));
  auto seg = (*cpu)->open_segment((*gpu)->segment_name());
  BOOST_REQUIRE(seg);
  auto desc = (*cpu)->segment_descriptor(*seg);
  BOOST_REQUIRE(desc && desc->endpoint("tcp") != nullptr && desc->endpoint("local") == nullptr);
  for (size_t n : {size_t{1}, size_t{4097}, size_t{65537}, size_t{3} << 20})
    round_trip(**cpu, *seg, dev, n, 5);
  // And device memory on the initiator side: READ remote host memory into a GPU buffer.
  device_buffer local_dev(1 << 20);
  BOOST_REQUIRE(!(*cpu)->register_memory(local_dev.ptr, local_dev.size, "cuda:0"));
  std::vector<uint8_t> host(1 << 20);
  tools::fill_pattern(host.data(), host.size(), seed + 7);
  BOOST_REQUIRE(!(*gpu)->register_memory(host.data(), host.size(), "cpu:0"));
  seg = (*cpu)->open_segment((*gpu)->segment_name()); // refresh: the peer registered more memory
  BOOST_REQUIRE(seg);
  auto batch = (*cpu)->allocate_batch(1);
  transfer_request read{opcode::read, local_dev.ptr, *seg, reinterpret_cast<uint64_t>(host.data()),
                        host.size()};
  BOOST_REQUIRE((*cpu)->submit(*batch, std::span(&read, 1)));
  auto s = (*cpu)->wait(*batch, std::chrono::seconds(30));
  BOOST_REQUIRE(s);
  BOOST_CHECK_EQUAL(s->completed, 1u);
  auto back = to_host(local_dev);
  BOOST_CHECK_EQUAL(tools::check_pattern(back.data(), back.size(), seed + 7), back.size());
}

BOOST_AUTO_TEST_CASE(rdma_path_stages_device_memory_without_gpudirect) {
  if (!have_gpu())
    return;
  // "protocol": "rdma" on the emulated provider (software NICs: never GPUDirect). The GPU side's
  // cuda:0 region gets no RDMA keys, so the host side reaches it over TCP; the host side's own GPU
  // buffer is staged through the RDMA path's host staging chunks.
  config::settings settings;
  settings.transport = config::protocol::rdma;
  settings.rdma.provider = config::rdma_provider_kind::emulated;
  auto rt_a = runtime::create({.network = true});
  auto rt_b = runtime::create({.network = true});
  BOOST_REQUIRE(rt_a && rt_b);
  auto gpu = transfer_engine::create(*rt_a, settings);
  auto cpu = transfer_engine::create(*rt_b, settings);
  BOOST_REQUIRE_MESSAGE(gpu && cpu, "engines over the emulated RDMA provider did not start");
  device_buffer dev(8 << 20);
  BOOST_REQUIRE(!(*gpu)->register_memory(dev.ptr, dev.size, "cuda:0"));
  std::vector<uint8_t> host(4 << 20);
  tools::fill_pattern(host.data(), host.size(), seed + 9);
  BOOST_REQUIRE(!(*gpu)->register_memory(host.data(), host.size(), "cpu:0"));
  auto seg = (*cpu)->open_segment((*gpu)->segment_name());
  BOOST_REQUIRE(seg);
  auto desc = (*cpu)->segment_descriptor(*seg);
  BOOST_REQUIRE(desc);
  const auto* dev_region = desc->find(reinterpret_cast<uint64_t>(dev.ptr), 1);
  BOOST_REQUIRE(dev_region != nullptr);
  BOOST_CHECK(dev_region->rdma_keys.empty());
  round_trip(**cpu, *seg, dev, 65537, 5); // over TCP (staged there)
  // A local GPU buffer over RDMA: READ 4 MiB of remote host memory into it (64 KiB slices through
  // the staging chunks), then WRITE it back elsewhere.
  device_buffer local_dev(4 << 20);
  BOOST_REQUIRE(!(*cpu)->register_memory(local_dev.ptr, local_dev.size, "cuda:0"));
  auto batch = (*cpu)->allocate_batch(2);
  BOOST_REQUIRE(batch);
  transfer_request read{opcode::read, local_dev.ptr, *seg, reinterpret_cast<uint64_t>(host.data()),
                        host.size()};
  BOOST_REQUIRE((*cpu)->submit(*batch, std::span(&read, 1)));
  auto s = (*cpu)->wait(*batch, std::chrono::seconds(60));
  BOOST_REQUIRE(s);
  BOOST_CHECK_EQUAL(s->completed, 1u);
  auto back = to_host(local_dev);
  BOOST_CHECK_EQUAL(tools::check_pattern(back.data(), back.size(), seed + 9), back.size());
  std::memset(host.data(), 0, host.size());
  transfer_request write{opcode::write, local_dev.ptr, *seg, reinterpret_cast<uint64_t>(host.data()),
                         host.size()};
  BOOST_REQUIRE((*cpu)->submit(*batch, std::span(&write, 1)));
  s = (*cpu)->wait(*batch, std::chrono::seconds(60));
  BOOST_REQUIRE(s);
  BOOST_CHECK_EQUAL(s->completed, 2u);
  BOOST_CHECK_EQUAL(tools::check_pattern(host.data(), host.size(), seed + 9), host.size());
  auto counters = (*cpu)->rdma_counters();
  uint64_t posted = 0;
  for (const auto& [nic, c] : counters)
    posted += c.wrs_posted;
  BOOST_CHECK_GT(posted, 0u);
  BOOST_CHECK(!(*cpu)->free_batch(*batch));
}
