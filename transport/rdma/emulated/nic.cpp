// The emulated NIC's verbs semantics: tables, the queue pair state machine, posting, in-order
// completion and the ERROR state. The fabric (sockets, frames, the thread) is in nic_io.cpp.

#include "transport/rdma/emulated/nic.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <type_traits>

#include <unistd.h>

#include "config/error.hpp"

namespace kvferry::transport::rdma::emulated::detail {

namespace {

std::string qp_name(uint32_t qpn) {
  return "queue pair " + hex(qpn);
}

caf::error wrong_state(const char* call, uint32_t qpn, ibv_qp_state is, const char* expected) {
  return make_error(errc::invalid_argument, std::string(call) + ": " + qp_name(qpn) + " is in "
                                              + describe_state(is) + ", expected " + expected);
}

void* pointer(uint64_t addr) {
  return reinterpret_cast<void*>(static_cast<uintptr_t>(addr));
}

} // namespace

int path_mtu_bytes(int m) noexcept {
  return m >= IBV_MTU_256 && m <= IBV_MTU_4096 ? 128 << m : 0;
}

// -- device_state and cq_core ---------------------------------------------------------------------

std::optional<fault> device_state::take_fault() {
  std::lock_guard guard(mutex);
  while (!faults.empty() && faults.front().count == 0)
    faults.pop_front();
  if (faults.empty())
    return std::nullopt;
  fault taken = faults.front();
  if (--faults.front().count == 0)
    faults.pop_front();
  return taken;
}

bool device_state::port_up() {
  std::lock_guard guard(mutex);
  return up;
}

device_state& device(const std::string& name) {
  static auto* mutex = new std::mutex;
  static auto* devices = new std::map<std::string, std::unique_ptr<device_state>>;
  std::lock_guard guard(*mutex);
  auto& slot = (*devices)[name];
  if (!slot)
    slot = std::make_unique<device_state>(name);
  return *slot;
}

cq_core::~cq_core() {
  ::close(fd_);
}

void cq_core::push(const work_completion& wc) {
  std::lock_guard guard(mutex_);
  queue_.push_back(wc);
  if (armed_)
    signal_locked();
}

size_t cq_core::poll(std::span<work_completion> out) {
  std::lock_guard guard(mutex_);
  size_t n = std::min(out.size(), queue_.size());
  std::copy_n(queue_.begin(), n, out.begin());
  queue_.erase(queue_.begin(), queue_.begin() + static_cast<ptrdiff_t>(n));
  return n;
}

void cq_core::arm() {
  std::lock_guard guard(mutex_);
  armed_ = true;
  if (!queue_.empty())
    signal_locked();
}

void cq_core::consume_event() {
  uint64_t count = 0;
  [[maybe_unused]] auto n = ::read(fd_, &count, sizeof count);
}

void cq_core::signal_locked() {
  armed_ = false;
  uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(fd_, &one, sizeof one);
}

// -- tables ---------------------------------------------------------------------------------------

nic::nic(device_state& device, uint32_t serial)
  : device_(device),
    serial_(serial),
    lid_(static_cast<uint16_t>((serial - 1) % 0xffff + 1)),
    // Keys differ between contexts too, so a key used on the wrong context fails as on hardware.
    next_key_((serial << 12) | 0x800) {
  // fe80::/64, then who we are: the process and the context's serial, so that a peer process
  // can find our socket from the GID alone.
  gid_[0] = 0xfe;
  gid_[1] = 0x80;
  auto pid = static_cast<uint32_t>(::getpid());
  for (int i = 0; i < 4; ++i) {
    gid_[8 + i] = static_cast<uint8_t>(pid >> (24 - 8 * i));
    gid_[12 + i] = static_cast<uint8_t>(serial >> (24 - 8 * i));
  }
}

caf::error nic::check_open() const {
  if (closed_)
    return make_error(errc::invalid_argument,
                      "the device context of " + device_.name
                        + " is closed (destroy queue pairs, memory regions, completion queues "
                          "and protection domains before their device context)");
  return {};
}

nic::qp_entry* nic::find_qp(uint32_t qpn) {
  auto it = qps_.find(qpn);
  return it == qps_.end() ? nullptr : &it->second;
}

bool nic::covers(uint32_t key, uint32_t pd, uint64_t addr, uint64_t length, int access) const {
  auto it = regions_.find(key);
  if (it == regions_.end())
    return false;
  const memory_entry& r = it->second;
  return r.pd == pd && (r.access & access) == access && addr >= r.addr && length <= r.length
         && addr - r.addr <= r.length - length;
}

caf::expected<uint32_t> nic::alloc_pd() {
  std::lock_guard guard(mutex_);
  if (auto err = check_open())
    return err;
  return next_pd_++;
}

caf::expected<uint32_t> nic::register_mr(uint32_t pd, void* addr, size_t length, int access) {
  auto start = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(addr));
  if (addr == nullptr || length == 0)
    return make_error(errc::invalid_argument,
                      "reg_mr: " + hex(start) + " + " + std::to_string(length)
                        + " bytes: expected a non-null address and a non-zero length");
  if (start + length < start)
    return make_error(errc::invalid_argument,
                      "reg_mr: " + hex(start) + " + " + std::to_string(length)
                        + " bytes wraps around the address space");
  if ((access & IBV_ACCESS_REMOTE_WRITE) && !(access & IBV_ACCESS_LOCAL_WRITE))
    return make_error(errc::invalid_argument,
                      "reg_mr: IBV_ACCESS_REMOTE_WRITE needs IBV_ACCESS_LOCAL_WRITE (as in verbs)");
  std::lock_guard guard(mutex_);
  if (auto err = check_open())
    return err;
  uint32_t key = next_key_++;
  regions_[key] = memory_entry{pd, start, length, access};
  ++device_.mrs_registered;
  return key;
}

void nic::deregister_mr(uint32_t key) {
  std::lock_guard guard(mutex_);
  if (regions_.erase(key) > 0)
    ++device_.mrs_deregistered;
}

// -- queue pairs ----------------------------------------------------------------------------------

caf::expected<uint32_t> nic::create_qp(uint32_t pd, std::shared_ptr<cq_core> cq,
                                       const qp_caps& caps) {
  if (caps.max_send_wr == 0 || caps.max_send_wr > 16384 || caps.max_send_sge == 0)
    return make_error(errc::invalid_argument,
                      "create_qp: max_send_wr " + std::to_string(caps.max_send_wr)
                        + ", max_send_sge " + std::to_string(caps.max_send_sge)
                        + ": expected max_send_wr in 1..16384 and max_send_sge >= 1");
  std::lock_guard guard(mutex_);
  if (auto err = check_open())
    return err;
  if (cq->owner() != serial_)
    return make_error(errc::invalid_argument,
                      "create_qp: the completion queue belongs to another device context than "
                        + device_.name + "'s");
  uint32_t qpn = next_qpn_++ & 0xffffff;
  qp_entry& qp = qps_[qpn];
  qp.pd = pd;
  qp.cq = std::move(cq);
  qp.max_send_wr = caps.max_send_wr;
  ++device_.qps_created;
  return qpn;
}

void nic::destroy_qp(uint32_t qpn) {
  std::lock_guard guard(mutex_);
  if (!qps_.contains(qpn))
    return;
  close_connections_of(qpn);
  qps_.erase(qpn);
  ++device_.qps_destroyed;
}

ibv_qp_state nic::state(uint32_t qpn) {
  std::lock_guard guard(mutex_);
  qp_entry* qp = find_qp(qpn);
  return qp ? qp->state : IBV_QPS_ERR;
}

caf::error nic::to_init(uint32_t qpn, uint8_t port, int access) {
  std::lock_guard guard(mutex_);
  if (auto err = check_open())
    return err;
  qp_entry& qp = qps_.at(qpn);
  if (qp.state != IBV_QPS_RESET)
    return wrong_state("to_init", qpn, qp.state, "RESET");
  if (port != 1)
    return make_error(errc::invalid_argument, "to_init: port " + std::to_string(port) + " of "
                                                + device_.name
                                                + ": emulated devices have one port, 1");
  qp.access = access;
  qp.state = IBV_QPS_INIT;
  return {};
}

caf::error nic::to_rtr(uint32_t qpn, const remote_qp& remote, const local_qp_params& local) {
  std::lock_guard guard(mutex_);
  if (auto err = check_open())
    return err;
  qp_entry& qp = qps_.at(qpn);
  if (qp.state != IBV_QPS_INIT)
    return wrong_state("to_rtr", qpn, qp.state, "INIT (call to_init first)");
  if (local.port != 1 || local.gid_index != 0)
    return make_error(errc::invalid_argument,
                      "to_rtr: port " + std::to_string(local.port) + ", gid index "
                        + std::to_string(local.gid_index) + ": expected port 1, gid index 0");
  if (!device_.port_up())
    return make_error(errc::transport_failure,
                      "to_rtr: port 1 of " + device_.name + " is down (emulated)");
  // Read as an integer: a value from a peer may be no ibv_mtu at all.
  std::underlying_type_t<ibv_mtu> mtu = 0;
  std::memcpy(&mtu, &remote.mtu, sizeof mtu);
  if (path_mtu_bytes(static_cast<int>(mtu)) == 0)
    return make_error(errc::invalid_argument,
                      "to_rtr: path MTU " + std::to_string(mtu)
                        + " is not an ibv_mtu (IBV_MTU_256..IBV_MTU_4096)");
  bool gid_zero = std::all_of(remote.gid.begin(), remote.gid.end(), [](uint8_t b) { return b == 0; });
  if (remote.qp_num == 0 || remote.qp_num > 0xffffff || remote.lid == 0 || gid_zero)
    return make_error(errc::invalid_argument,
                      "to_rtr: remote queue pair " + hex(remote.qp_num) + ", LID "
                        + std::to_string(remote.lid)
                        + (gid_zero ? ", zero GID" : "")
                        + ": expected a 24-bit non-zero qp_num, a non-zero LID and the remote's "
                          "GID (from its query_port and query_gid)");
  qp.remote = remote;
  qp.state = IBV_QPS_RTR;
  return {};
}

caf::error nic::to_rts(uint32_t qpn, const local_qp_params& local) {
  std::lock_guard guard(mutex_);
  if (auto err = check_open())
    return err;
  qp_entry& qp = qps_.at(qpn);
  if (qp.state != IBV_QPS_RTR)
    return wrong_state("to_rts", qpn, qp.state, "RTR (call to_rtr first)");
  if (!device_.port_up())
    return make_error(errc::transport_failure,
                      "to_rts: port 1 of " + device_.name + " is down (emulated)");
  qp.state = IBV_QPS_RTS;
  return {};
}

caf::error nic::to_error(uint32_t qpn) {
  std::lock_guard guard(mutex_);
  qp_entry& qp = qps_.at(qpn);
  if (qp.state != IBV_QPS_ERR)
    enter_error(qpn, qp);
  return {};
}

void nic::fail_all_qps() {
  std::lock_guard guard(mutex_);
  for (auto& [qpn, qp] : qps_)
    if (qp.state != IBV_QPS_ERR)
      enter_error(qpn, qp);
}

// -- posting and completing -----------------------------------------------------------------------

caf::error nic::post_send(uint32_t qpn, std::span<const work_request> wrs) {
  std::lock_guard guard(mutex_);
  if (auto err = check_open())
    return err;
  qp_entry& qp = qps_.at(qpn);
  if (qp.state != IBV_QPS_RTS && qp.state != IBV_QPS_ERR)
    return wrong_state("post_send", qpn, qp.state, "RTS (nothing was posted)");
  caf::error refused;
  auto now = clock::now();
  for (size_t i = 0; i < wrs.size(); ++i) {
    const work_request& wr = wrs[i];
    auto which = [&] {
      return "post_send on " + qp_name(qpn) + ": work request " + std::to_string(i) + " (wr_id "
             + std::to_string(wr.wr_id) + ")";
    };
    if (wr.opcode != IBV_WR_RDMA_READ && wr.opcode != IBV_WR_RDMA_WRITE) {
      refused = make_error(errc::not_supported,
                           which() + ": opcode " + std::to_string(static_cast<int>(wr.opcode))
                             + ", expected IBV_WR_RDMA_READ or IBV_WR_RDMA_WRITE; it and the "
                               "requests after it were not posted");
      break;
    }
    if (wr.length > max_message) {
      refused = make_error(errc::invalid_argument,
                           which() + ": " + std::to_string(wr.length)
                             + " bytes, the emulated provider moves at most 16 MiB per work "
                               "request; it and the requests after it were not posted");
      break;
    }
    if (qp.send_queue.size() >= qp.max_send_wr) {
      refused = make_error(errc::busy,
                           which() + ": the send queue is full (max_send_wr "
                             + std::to_string(qp.max_send_wr)
                             + " outstanding, ENOMEM); it and the requests after it were not "
                               "posted");
      break;
    }
    ++device_.wrs_posted;
    wr_entry e{wr, qp.next_seq++};
    if (qp.state == IBV_QPS_ERR) {
      complete(qpn, qp, e, IBV_WC_WR_FLUSH_ERR);
      continue;
    }
    auto fail = [&](ibv_wc_status status) {
      e.at = phase::done;
      e.status = status;
      e.ready = now;
    };
    int local_right = wr.opcode == IBV_WR_RDMA_READ ? IBV_ACCESS_LOCAL_WRITE : 0;
    if (!device_.port_up())
      fail(IBV_WC_RETRY_EXC_ERR);
    else if (wr.length > 0 && !covers(wr.lkey, qp.pd, wr.local_addr, wr.length, local_right))
      fail(IBV_WC_LOC_PROT_ERR);
    else if (auto f = device_.take_fault()) {
      switch (f->kind) {
        case fault_kind::completion_error: fail(IBV_WC_RETRY_EXC_ERR); break;
        case fault_kind::remote_access_error: fail(IBV_WC_REM_ACCESS_ERR); break;
        case fault_kind::lost_completion: e.at = phase::lost; break;
        case fault_kind::slow_completion: e.delay = f->delay; break;
        case fault_kind::qp_error: break; // applied when injected, never queued
      }
    }
    qp.send_queue.push_back(std::move(e));
  }
  pump(qpn, qp);
  deliver(qpn, qp);
  return refused;
}

void nic::complete(uint32_t qpn, qp_entry& qp, const wr_entry& e, ibv_wc_status status) {
  work_completion wc;
  wc.wr_id = e.wr.wr_id;
  wc.status = status;
  wc.opcode = e.wr.opcode == IBV_WR_RDMA_WRITE ? IBV_WC_RDMA_WRITE : IBV_WC_RDMA_READ;
  wc.byte_len = status == IBV_WC_SUCCESS ? e.wr.length : 0;
  wc.qp_num = qpn;
  qp.cq->push(wc);
  if (status == IBV_WC_SUCCESS) {
    ++device_.wrs_completed;
  } else {
    ++device_.wrs_failed;
    if (status == IBV_WC_REM_ACCESS_ERR)
      ++device_.remote_access_errors;
  }
}

void nic::deliver(uint32_t qpn, qp_entry& qp) {
  auto now = clock::now();
  while (!qp.send_queue.empty()) {
    wr_entry& front = qp.send_queue.front();
    if (front.at != phase::done)
      return;
    if (front.ready > now) {
      if (qp.timer_at != front.ready) {
        qp.timer_at = front.ready;
        add_timer(front.ready, qpn);
      }
      return;
    }
    wr_entry done = std::move(front);
    qp.send_queue.pop_front();
    complete(qpn, qp, done, done.status);
    if (done.status != IBV_WC_SUCCESS) {
      enter_error(qpn, qp);
      return;
    }
  }
}

void nic::enter_error(uint32_t qpn, qp_entry& qp) {
  qp.state = IBV_QPS_ERR;
  auto outstanding = std::move(qp.send_queue);
  qp.send_queue.clear();
  for (const wr_entry& e : outstanding)
    complete(qpn, qp, e, IBV_WC_WR_FLUSH_ERR);
  qp.connect_deadline.reset();
  // A queue pair in ERROR neither sends nor answers: its peer's requests fail as well.
  close_connections_of(qpn);
}

void nic::link_lost(uint32_t qpn) {
  qp_entry* qp = find_qp(qpn);
  if (qp == nullptr || qp->state == IBV_QPS_ERR)
    return;
  auto now = clock::now();
  for (wr_entry& e : qp->send_queue) {
    if (e.at != phase::done) {
      e.at = phase::done;
      e.status = IBV_WC_RETRY_EXC_ERR;
      e.ready = now;
    }
  }
  deliver(qpn, *qp);
}

void nic::pump(uint32_t qpn, qp_entry& qp) {
  if (qp.state != IBV_QPS_RTS)
    return;
  auto unsent = [](const wr_entry& e) { return e.at == phase::unsent; };
  if (std::none_of(qp.send_queue.begin(), qp.send_queue.end(), unsent))
    return;
  if (qp.link == 0) {
    switch (connect_link(qpn, qp)) {
      case connect_result::connected: break;
      case connect_result::retry: return;
      case connect_result::refused: link_lost(qpn); return;
    }
  }
  connection_ptr c = connections_.at(qp.link);
  bool refused_locally = false;
  for (wr_entry& e : qp.send_queue) {
    if (c->out.size() >= output_limit)
      break;
    if (e.at != phase::unsent)
      continue;
    bool is_write = e.wr.opcode == IBV_WR_RDMA_WRITE;
    request_header h;
    h.kind = static_cast<uint32_t>(is_write ? frame_kind::write_request : frame_kind::read_request);
    h.length = e.wr.length;
    h.seq = e.seq;
    h.remote_addr = e.wr.remote_addr;
    h.rkey = e.wr.rkey;
    // The region may have been deregistered since the post: check again before reading it.
    if (is_write && e.wr.length > 0 && !covers(e.wr.lkey, qp.pd, e.wr.local_addr, e.wr.length, 0)) {
      e.at = phase::done;
      e.status = IBV_WC_LOC_PROT_ERR;
      e.ready = clock::now();
      refused_locally = true;
      continue;
    }
    c->out.append(&h, sizeof h);
    if (is_write)
      c->out.append(pointer(e.wr.local_addr), e.wr.length);
    e.at = phase::sent;
  }
  if (!flush(*c)) {
    close_connection(c->id, true);
    return;
  }
  update_interest(*c);
  if (refused_locally)
    deliver(qpn, qp);
}

void nic::add_timer(clock::time_point when, uint32_t qpn) {
  bool earliest = timers_.empty() || when < timers_.begin()->first;
  timers_.emplace(when, qpn);
  if (earliest && std::this_thread::get_id() != thread_.get_id())
    wake();
}

} // namespace kvferry::transport::rdma::emulated::detail
