// The emulated provider's verbs objects: thin handles over the NIC of their device context
// (nic.hpp), and the test-facing functions of emulated.hpp.

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <type_traits>

#include "config/error.hpp"
#include "transport/rdma/emulated/emulated.hpp"
#include "transport/rdma/emulated/nic.hpp"

namespace kvferry::transport::rdma::emulated {

namespace {

using detail::cq_core;
using detail::nic;

constexpr uint32_t max_devices = 16;

std::string device_name(uint32_t index) {
  return "emu_rdma" + std::to_string(index);
}

class memory_region_impl final : public memory_region {
public:
  memory_region_impl(std::shared_ptr<nic> owner, uint32_t key) : nic_(std::move(owner)), key_(key) {}
  ~memory_region_impl() override { nic_->deregister_mr(key_); }
  uint32_t lkey() const noexcept override { return key_; }
  uint32_t rkey() const noexcept override { return key_; }

private:
  std::shared_ptr<nic> nic_;
  uint32_t key_;
};

class completion_queue_impl final : public completion_queue {
public:
  explicit completion_queue_impl(std::shared_ptr<cq_core> core) : core_(std::move(core)) {}
  caf::expected<size_t> poll(std::span<work_completion> out) override { return core_->poll(out); }
  int event_fd() const noexcept override { return core_->fd(); }
  caf::error arm() override {
    core_->arm();
    return {};
  }
  void consume_event() override { core_->consume_event(); }
  [[nodiscard]] const std::shared_ptr<cq_core>& core() const noexcept { return core_; }

private:
  std::shared_ptr<cq_core> core_;
};

class queue_pair_impl final : public queue_pair {
public:
  queue_pair_impl(std::shared_ptr<nic> owner, uint32_t qpn) : nic_(std::move(owner)), qpn_(qpn) {}
  ~queue_pair_impl() override { nic_->destroy_qp(qpn_); }
  uint32_t qp_num() const noexcept override { return qpn_; }
  ibv_qp_state state() const override { return nic_->state(qpn_); }
  caf::error to_init(uint8_t port, int access) override { return nic_->to_init(qpn_, port, access); }
  caf::error to_rtr(const remote_qp& remote, const local_qp_params& local) override {
    return nic_->to_rtr(qpn_, remote, local);
  }
  caf::error to_rts(const local_qp_params& local) override { return nic_->to_rts(qpn_, local); }
  caf::error to_error() override { return nic_->to_error(qpn_); }
  caf::error post_send(std::span<const work_request> wrs) override {
    return nic_->post_send(qpn_, wrs);
  }

private:
  std::shared_ptr<nic> nic_;
  uint32_t qpn_;
};

class protection_domain_impl final : public protection_domain {
public:
  protection_domain_impl(std::shared_ptr<nic> owner, uint32_t pd) : nic_(std::move(owner)), pd_(pd) {}

  caf::expected<std::unique_ptr<memory_region>> reg_mr(void* addr, size_t length,
                                                       int access) override {
    auto key = nic_->register_mr(pd_, addr, length, access);
    if (!key)
      return key.error();
    return std::make_unique<memory_region_impl>(nic_, *key);
  }

  caf::expected<std::unique_ptr<queue_pair>> create_qp(completion_queue& cq,
                                                       const qp_caps& caps) override {
    auto* ours = dynamic_cast<completion_queue_impl*>(&cq);
    if (ours == nullptr)
      return make_error(errc::invalid_argument,
                        "create_qp: the completion queue was not made by the emulated provider");
    auto qpn = nic_->create_qp(pd_, ours->core(), caps);
    if (!qpn)
      return qpn.error();
    return std::make_unique<queue_pair_impl>(nic_, *qpn);
  }

private:
  std::shared_ptr<nic> nic_;
  uint32_t pd_;
};

class device_context_impl final : public device_context {
public:
  device_context_impl(std::string name, std::shared_ptr<nic> owner)
    : name_(std::move(name)), nic_(std::move(owner)) {}
  /// The NIC thread stops here, even if a child handle (wrongly) outlives its device.
  ~device_context_impl() override { nic_->shutdown(); }

  const std::string& name() const noexcept override { return name_; }

  caf::expected<port_info> query_port(uint8_t port) override {
    if (port != 1)
      return make_error(errc::invalid_argument, "query_port: port " + std::to_string(port) + " of "
                                                  + name_ + ": emulated devices have one port, 1");
    port_info info;
    info.state = nic_->device().port_up() ? IBV_PORT_ACTIVE : IBV_PORT_DOWN;
    info.link_layer = IBV_LINK_LAYER_INFINIBAND;
    info.lid = nic_->lid();
    info.active_mtu = IBV_MTU_4096;
    info.gid_table_len = 1;
    return info;
  }

  caf::expected<gid_bytes> query_gid(uint8_t port, int index) override {
    if (port != 1 || index != 0)
      return make_error(errc::invalid_argument,
                        "query_gid: port " + std::to_string(port) + ", index "
                          + std::to_string(index) + " of " + name_
                          + ": emulated devices have port 1 with one GID, index 0");
    return nic_->gid();
  }

  caf::expected<std::unique_ptr<protection_domain>> alloc_pd() override {
    auto pd = nic_->alloc_pd();
    if (!pd)
      return pd.error();
    return std::make_unique<protection_domain_impl>(nic_, *pd);
  }

  caf::expected<std::unique_ptr<completion_queue>> create_cq(int depth) override {
    if (depth < 1 || depth > (1 << 22))
      return make_error(errc::invalid_argument, "create_cq: depth " + std::to_string(depth)
                                                  + ", expected 1..4194304");
    int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0)
      return make_error(errc::transport_failure,
                        "create_cq on " + name_ + ": eventfd: " + std::strerror(errno));
    return std::make_unique<completion_queue_impl>(std::make_shared<cq_core>(fd, nic_->serial()));
  }

private:
  std::string name_;
  std::shared_ptr<nic> nic_;
};

class provider_impl final : public provider {
public:
  explicit provider_impl(uint32_t devices) : devices_(devices) {}

  std::string name() const override { return "emulated"; }
  bool emulated() const noexcept override { return true; }

  caf::expected<std::vector<device_info>> devices() override {
    std::vector<device_info> out;
    for (uint32_t i = 0; i < devices_; ++i)
      out.push_back(device_info{device_name(i), 0, "emulated"});
    return out;
  }

  caf::expected<std::unique_ptr<device_context>> open(const std::string& name) override {
    for (uint32_t i = 0; i < devices_; ++i) {
      if (name != device_name(i))
        continue;
      auto opened = nic::open(detail::device(name));
      if (!opened)
        return opened.error();
      return std::make_unique<device_context_impl>(name, std::move(*opened));
    }
    return make_error(errc::not_supported,
                      "open: no RDMA device " + name + "; the emulated provider lists emu_rdma0.."
                        + device_name(devices_ - 1));
  }

private:
  uint32_t devices_;
};

} // namespace

void inject(const std::string& device, fault f) {
  detail::device_state& d = detail::device(device);
  if (f.kind == fault_kind::qp_error) {
    std::lock_guard guard(d.nics_mutex);
    for (nic* n : d.nics)
      n->fail_all_qps();
    return;
  }
  std::lock_guard guard(d.mutex);
  d.faults.push_back(f);
}

void set_port_up(const std::string& device, bool up) {
  detail::device_state& d = detail::device(device);
  std::lock_guard guard(d.mutex);
  d.up = up;
}

void clear(const std::string& device) {
  detail::device_state& d = detail::device(device);
  std::lock_guard guard(d.mutex);
  d.faults.clear();
  d.up = true;
}

counters stats(const std::string& device) {
  detail::device_state& d = detail::device(device);
  counters c;
  c.contexts_opened = d.contexts_opened.load();
  c.qps_created = d.qps_created.load();
  c.qps_destroyed = d.qps_destroyed.load();
  c.mrs_registered = d.mrs_registered.load();
  c.mrs_deregistered = d.mrs_deregistered.load();
  c.wrs_posted = d.wrs_posted.load();
  c.wrs_completed = d.wrs_completed.load();
  c.wrs_failed = d.wrs_failed.load();
  c.remote_access_errors = d.remote_access_errors.load();
  c.peer_connections_refused = d.peer_connections_refused.load();
  return c;
}

std::shared_ptr<provider> make_provider(uint32_t devices) {
  if (devices == 0 || devices > max_devices)
    return nullptr;
  return std::make_shared<provider_impl>(devices);
}

} // namespace kvferry::transport::rdma::emulated

extern "C" kvferry::transport::rdma::provider* kvferry_emulated_verbs_provider(uint32_t devices) {
  using namespace kvferry::transport::rdma;
  static_assert(std::is_same_v<decltype(&kvferry_emulated_verbs_provider), emulated_entry>);
  if (devices == 0 || devices > emulated::max_devices)
    return nullptr;
  return new emulated::provider_impl(devices);
}
