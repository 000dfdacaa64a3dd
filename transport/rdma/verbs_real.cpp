// The libibverbs provider: every call is the verbs call of the same name. Nothing here runs
// without an RDMA device; tools/rdma/hardware_check.sh exercises it on a machine that has one.
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <dlfcn.h>
#include <poll.h>

#include "config/error.hpp"
#include "transport/rdma/verbs.hpp"

namespace kvferry::transport::rdma {

namespace {

caf::error verbs_error(const char* call, int err, const std::string& what) {
  return make_error(errc::transport_failure, std::string(call) + " failed for " + what + ": "
                                               + std::strerror(err));
}

class real_mr final : public memory_region {
public:
  explicit real_mr(ibv_mr* mr) : mr_(mr) {}
  ~real_mr() override { ibv_dereg_mr(mr_); }
  uint32_t lkey() const noexcept override { return mr_->lkey; }
  uint32_t rkey() const noexcept override { return mr_->rkey; }

private:
  ibv_mr* mr_;
};

class real_cq final : public completion_queue {
public:
  real_cq(ibv_comp_channel* channel, ibv_cq* cq) : channel_(channel), cq_(cq) {}
  ~real_cq() override {
    if (unacked_ > 0)
      ibv_ack_cq_events(cq_, unacked_);
    ibv_destroy_cq(cq_);
    ibv_destroy_comp_channel(channel_);
  }
  ibv_cq* raw() const noexcept { return cq_; }

  caf::expected<size_t> poll(std::span<work_completion> out) override {
    ibv_wc wc[32];
    size_t got = 0;
    while (got < out.size()) {
      int want = static_cast<int>(std::min<size_t>(32, out.size() - got));
      int n = ibv_poll_cq(cq_, want, wc);
      if (n < 0)
        return make_error(errc::transport_failure, "ibv_poll_cq failed");
      for (int i = 0; i < n; ++i)
        out[got++] = work_completion{wc[i].wr_id,  wc[i].status, wc[i].opcode,
                                     wc[i].byte_len, wc[i].qp_num, wc[i].vendor_err};
      if (n < want)
        break;
    }
    return got;
  }
  int event_fd() const noexcept override { return channel_->fd; }
  caf::error arm() override {
    if (int rc = ibv_req_notify_cq(cq_, 0); rc != 0)
      return verbs_error("ibv_req_notify_cq", rc, "a completion queue");
    return {};
  }
  void consume_event() override {
    ibv_cq* cq = nullptr;
    void* ctx = nullptr;
    pollfd p{channel_->fd, POLLIN, 0};
    if (::poll(&p, 1, 0) == 1 && ibv_get_cq_event(channel_, &cq, &ctx) == 0)
      if (++unacked_ >= 64) {
        ibv_ack_cq_events(cq_, unacked_);
        unacked_ = 0;
      }
  }

private:
  ibv_comp_channel* channel_;
  ibv_cq* cq_;
  unsigned unacked_ = 0;
};

class real_qp final : public queue_pair {
public:
  explicit real_qp(ibv_qp* qp) : qp_(qp) {}
  ~real_qp() override { ibv_destroy_qp(qp_); }
  uint32_t qp_num() const noexcept override { return qp_->qp_num; }
  ibv_qp_state state() const override {
    ibv_qp_attr attr{};
    ibv_qp_init_attr init{};
    if (ibv_query_qp(qp_, &attr, IBV_QP_STATE, &init) != 0)
      return IBV_QPS_ERR;
    return attr.qp_state;
  }
  caf::error to_init(uint8_t port, int access) override {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_INIT;
    a.port_num = port;
    a.pkey_index = 0;
    a.qp_access_flags = static_cast<unsigned>(access);
    return modify(a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS,
                  "RESET -> INIT");
  }
  caf::error to_rtr(const remote_qp& remote, const local_qp_params& local) override {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = remote.mtu;
    a.dest_qp_num = remote.qp_num;
    a.rq_psn = remote.psn;
    a.max_dest_rd_atomic = local.max_rd_atomic;
    a.min_rnr_timer = 12;
    a.ah_attr.dlid = remote.lid;
    a.ah_attr.port_num = local.port;
    // A GID route always (RoCE needs it; on InfiniBand it also crosses subnets).
    a.ah_attr.is_global = 1;
    std::memcpy(a.ah_attr.grh.dgid.raw, remote.gid.data(), 16);
    a.ah_attr.grh.sgid_index = static_cast<uint8_t>(local.gid_index);
    a.ah_attr.grh.hop_limit = 64;
    return modify(a,
                  IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN
                    | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER,
                  "INIT -> RTR");
  }
  caf::error to_rts(const local_qp_params& local) override {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_RTS;
    a.timeout = local.timeout;
    a.retry_cnt = local.retry_cnt;
    a.rnr_retry = local.rnr_retry;
    a.sq_psn = local.psn;
    a.max_rd_atomic = local.max_rd_atomic;
    return modify(a,
                  IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY
                    | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC,
                  "RTR -> RTS");
  }
  caf::error to_error() override {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_ERR;
    return modify(a, IBV_QP_STATE, "-> ERROR");
  }
  caf::error post_send(std::span<const work_request> wrs) override {
    constexpr size_t chunk = 32;
    for (size_t at = 0; at < wrs.size(); at += chunk) {
      auto n = std::min(chunk, wrs.size() - at);
      ibv_sge sge[chunk];
      ibv_send_wr wr[chunk];
      for (size_t i = 0; i < n; ++i) {
        const auto& w = wrs[at + i];
        sge[i] = ibv_sge{w.local_addr, w.length, w.lkey};
        wr[i] = ibv_send_wr{};
        wr[i].wr_id = w.wr_id;
        wr[i].sg_list = &sge[i];
        wr[i].num_sge = 1;
        wr[i].opcode = w.opcode;
        wr[i].send_flags = IBV_SEND_SIGNALED;
        wr[i].wr.rdma.remote_addr = w.remote_addr;
        wr[i].wr.rdma.rkey = w.rkey;
        wr[i].next = i + 1 < n ? &wr[i + 1] : nullptr;
      }
      ibv_send_wr* bad = nullptr;
      if (int rc = ibv_post_send(qp_, wr, &bad); rc != 0)
        return verbs_error("ibv_post_send", rc,
                           "work request " + std::to_string(bad ? bad->wr_id : 0) + " (qp "
                             + std::to_string(qp_->qp_num) + ")");
    }
    return {};
  }

private:
  caf::error modify(ibv_qp_attr& a, int mask, const char* step) {
    if (int rc = ibv_modify_qp(qp_, &a, mask); rc != 0)
      return verbs_error("ibv_modify_qp", rc,
                         std::string(step) + " of qp " + std::to_string(qp_->qp_num));
    return {};
  }
  ibv_qp* qp_;
};

class real_pd final : public protection_domain {
public:
  real_pd(ibv_pd* pd, int max_inline) : pd_(pd), max_inline_(max_inline) {}
  ~real_pd() override { ibv_dealloc_pd(pd_); }
  caf::expected<std::unique_ptr<memory_region>> reg_mr(void* addr, size_t length,
                                                       int access) override {
    auto* mr = ibv_reg_mr(pd_, addr, length, access);
    if (mr == nullptr)
      return verbs_error("ibv_reg_mr", errno,
                         std::to_string(length) + " bytes at " + hex(reinterpret_cast<uint64_t>(addr)));
    return std::unique_ptr<memory_region>(new real_mr(mr));
  }
  caf::expected<std::unique_ptr<queue_pair>> create_qp(completion_queue& cq,
                                                       const qp_caps& caps) override {
    auto& rcq = dynamic_cast<real_cq&>(cq);
    ibv_qp_init_attr init{};
    init.send_cq = rcq.raw();
    init.recv_cq = rcq.raw();
    init.qp_type = IBV_QPT_RC;
    init.sq_sig_all = 0;
    init.cap.max_send_wr = caps.max_send_wr;
    init.cap.max_recv_wr = caps.max_recv_wr;
    init.cap.max_send_sge = caps.max_send_sge;
    init.cap.max_recv_sge = 1;
    init.cap.max_inline_data = static_cast<uint32_t>(max_inline_);
    auto* qp = ibv_create_qp(pd_, &init);
    if (qp == nullptr)
      return verbs_error("ibv_create_qp", errno, "an RC queue pair");
    return std::unique_ptr<queue_pair>(new real_qp(qp));
  }

private:
  ibv_pd* pd_;
  int max_inline_;
};

class real_context final : public device_context {
public:
  real_context(std::string name, ibv_context* ctx) : name_(std::move(name)), ctx_(ctx) {}
  ~real_context() override { ibv_close_device(ctx_); }
  const std::string& name() const noexcept override { return name_; }
  caf::expected<port_info> query_port(uint8_t port) override {
    ibv_port_attr a{};
    if (int rc = ibv_query_port(ctx_, port, &a); rc != 0)
      return verbs_error("ibv_query_port", rc, name_ + " port " + std::to_string(port));
    port_info p;
    p.state = a.state;
    p.link_layer = a.link_layer;
    p.lid = a.lid;
    p.active_mtu = a.active_mtu;
    p.gid_table_len = a.gid_tbl_len;
    return p;
  }
  caf::expected<gid_bytes> query_gid(uint8_t port, int index) override {
    ibv_gid g{};
    if (int rc = ibv_query_gid(ctx_, port, index, &g); rc != 0)
      return verbs_error("ibv_query_gid", rc,
                         name_ + " port " + std::to_string(port) + " index " + std::to_string(index));
    gid_bytes out{};
    std::memcpy(out.data(), g.raw, 16);
    return out;
  }
  caf::expected<std::unique_ptr<protection_domain>> alloc_pd() override {
    auto* pd = ibv_alloc_pd(ctx_);
    if (pd == nullptr)
      return verbs_error("ibv_alloc_pd", errno, name_);
    return std::unique_ptr<protection_domain>(new real_pd(pd, 0));
  }
  caf::expected<std::unique_ptr<completion_queue>> create_cq(int depth) override {
    auto* channel = ibv_create_comp_channel(ctx_);
    if (channel == nullptr)
      return verbs_error("ibv_create_comp_channel", errno, name_);
    auto* cq = ibv_create_cq(ctx_, depth, nullptr, channel, 0);
    if (cq == nullptr) {
      auto err = errno;
      ibv_destroy_comp_channel(channel);
      return verbs_error("ibv_create_cq", err, name_ + " (depth " + std::to_string(depth) + ")");
    }
    return std::unique_ptr<completion_queue>(new real_cq(channel, cq));
  }

private:
  std::string name_;
  ibv_context* ctx_;
};

class verbs_provider final : public provider {
public:
  std::string name() const override { return "libibverbs"; }
  bool emulated() const noexcept override { return false; }
  caf::expected<std::vector<device_info>> devices() override {
    int n = 0;
    auto** list = ibv_get_device_list(&n);
    std::vector<device_info> out;
    if (list == nullptr)
      return out; // no kernel support: no devices, not an error
    for (int i = 0; i < n; ++i)
      out.push_back(device_info{ibv_get_device_name(list[i]), -1, {}});
    ibv_free_device_list(list);
    return out;
  }
  caf::expected<std::unique_ptr<device_context>> open(const std::string& name) override {
    int n = 0;
    auto** list = ibv_get_device_list(&n);
    ibv_context* ctx = nullptr;
    bool found = false;
    int err = 0;
    for (int i = 0; list != nullptr && i < n; ++i)
      if (name == ibv_get_device_name(list[i])) {
        found = true;
        ctx = ibv_open_device(list[i]);
        err = errno;
        break;
      }
    if (list != nullptr)
      ibv_free_device_list(list);
    if (!found)
      return make_error(errc::not_supported, "RDMA device '" + name + "' does not exist");
    if (ctx == nullptr)
      return verbs_error("ibv_open_device", err, name);
    return std::unique_ptr<device_context>(new real_context(name, ctx));
  }
};

/// Where the emulated library may be: next to the executable, in its ../lib, then the loader's
/// search path.
std::vector<std::string> emulated_candidates() {
  std::vector<std::string> out;
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    auto dir = exe.parent_path();
    out.push_back((dir / emulated_library).string());
    out.push_back((dir / "transport" / "rdma" / "emulated" / emulated_library).string());
    out.push_back((dir.parent_path() / "transport" / "rdma" / "emulated" / emulated_library).string());
    out.push_back((dir.parent_path() / "lib" / emulated_library).string());
  }
  out.emplace_back(emulated_library);
  return out;
}

} // namespace

std::shared_ptr<provider> make_verbs_provider() {
  return std::make_shared<verbs_provider>();
}

caf::expected<std::shared_ptr<provider>> load_emulated_provider(uint32_t devices) {
  std::string tried;
  for (const auto& path : emulated_candidates()) {
    bool plain = path.find('/') == std::string::npos;
    if (!plain && !std::filesystem::exists(path))
      continue;
    void* lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* why = ::dlerror();
      tried += "\n  " + path + ": " + (why ? why : "not loadable");
      continue;
    }
    auto entry = reinterpret_cast<emulated_entry>(::dlsym(lib, emulated_entry_symbol));
    if (entry == nullptr)
      return make_error(errc::not_supported,
                        path + " does not export " + std::string(emulated_entry_symbol));
    // The library stays loaded for the process's life (its threads may outlive a provider).
    auto* p = entry(devices);
    if (p == nullptr)
      return make_error(errc::invalid_argument, "the emulated RDMA provider refused "
                                                  + std::to_string(devices) + " device(s)");
    return std::shared_ptr<provider>(p);
  }
  return make_error(errc::not_supported,
                    std::string("\"rdma_provider\": \"emulated\" needs ") + emulated_library
                      + " (built with kvferry, not installed with it); tried:" + tried);
}

const char* describe_status(ibv_wc_status s) noexcept {
  return ibv_wc_status_str(s);
}

int mtu_bytes(ibv_mtu m) noexcept {
  switch (m) {
    case IBV_MTU_256: return 256;
    case IBV_MTU_512: return 512;
    case IBV_MTU_1024: return 1024;
    case IBV_MTU_2048: return 2048;
    case IBV_MTU_4096: return 4096;
    default: return 0;
  }
}

} // namespace kvferry::transport::rdma
