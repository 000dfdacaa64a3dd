#include "actors/runtime.hpp"

#include "actors/segment_owner.hpp"
#include "actors/transfer_coordinator.hpp"
#include "actors/worker.hpp"

namespace kvferry {

actor_config::actor_config(bool network) {
  add_message_type<memory::location>("kvferry::location");
  add_message_type<memory::region_descriptor>("kvferry::region_descriptor");
  add_message_type<memory::transport_endpoint>("kvferry::transport_endpoint");
  add_message_type<memory::segment_descriptor>("kvferry::segment_descriptor");
  add_message_type<transport::slice_op>("kvferry::slice_op");
  add_message_type<transport::slice_completion>("kvferry::slice_completion");
  add_message_type<coordinator_stats>("kvferry::coordinator_stats");
  add_message_type<notification>("kvferry::notification");
  add_message_type<std::vector<notification>>("std::vector<kvferry::notification>");
  add_message_type<std::vector<transport::slice_op>>("std::vector<kvferry::slice_op>");
  add_message_type<std::vector<transport::slice_completion>>(
    "std::vector<kvferry::slice_completion>");
  add_message_type<std::vector<uint64_t>>("std::vector<uint64_t>");
  // No CAF network layer: nodes talk through kvferry's own bounded ZMTP servers (control and data
  // planes, transport/), so no byte from the network reaches CAF's deserializers.
  (void) network;
  // Work sharing: one queue with a condition variable wakes an idle scheduler thread at once. CAF's
  // default work-stealing scheduler lets idle threads sleep between polls (50 us, then 10 ms),
  // which put hundreds of microseconds on every message hop of a transfer.
  set("scheduler.policy", caf::atom("sharing"));
  // kvferry logs through spdlog; keep CAF's own console output for real problems only.
  set("logger.console-verbosity", caf::atom("error"));
}

runtime::runtime(options opts)
  : network_(opts.network),
    config_(std::make_unique<actor_config>(opts.network)),
    directory_(std::make_shared<memory::local_directory>()) {
  if (opts.scheduler_threads > 0)
    config_->set("scheduler.max-threads", opts.scheduler_threads);
  system_ = std::make_unique<caf::actor_system>(*config_);
}

runtime::~runtime() {
  system_.reset();
}

void runtime::add_face(const std::string& name, segment_public_actor face) {
  std::lock_guard<std::mutex> guard(faces_mutex_);
  faces_[name] = std::move(face);
}

void runtime::remove_face(const std::string& name) {
  std::lock_guard<std::mutex> guard(faces_mutex_);
  faces_.erase(name);
}

segment_public_actor runtime::find_face(const std::string& name) const {
  std::lock_guard<std::mutex> guard(faces_mutex_);
  auto it = faces_.find(name);
  return it == faces_.end() ? segment_public_actor{} : it->second;
}

caf::expected<std::shared_ptr<runtime>> runtime::create(options opts) {
  return std::shared_ptr<runtime>(new runtime(opts));
}

} // namespace kvferry
