#pragma once
/// The actor runtime of one process: a CAF actor system with kvferry's message types registered,
/// and the directory of segments hosted in this process. Engines are created on a runtime; several
/// engines (segments) can share one, which is how the same-process data path finds its peers.

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/expected.hpp>

#include "actors/segment_owner.hpp"
#include "memory/local_directory.hpp"

namespace kvferry {

/// CAF configuration with every kvferry message type registered under the same name on every node.
class actor_config : public caf::actor_system_config {
public:
  explicit actor_config(bool network);
};

class runtime {
public:
  struct options {
    /// Engines on this runtime serve and reach other nodes (control and data planes over TCP).
    bool network = false;
    /// Scheduler threads; 0 keeps CAF's default (one per core).
    size_t scheduler_threads = 0;
  };

  [[nodiscard]] static caf::expected<std::shared_ptr<runtime>> create(options opts);
  ~runtime();
  runtime(const runtime&) = delete;
  runtime& operator=(const runtime&) = delete;

  [[nodiscard]] caf::actor_system& system() noexcept { return *system_; }
  [[nodiscard]] bool networked() const noexcept { return network_; }
  [[nodiscard]] const std::shared_ptr<memory::local_directory>& directory() const noexcept {
    return directory_;
  }

  /// Public faces of the segments hosted in this process, for same-process notifications.
  void add_face(const std::string& name, segment_public_actor face);
  void remove_face(const std::string& name);
  [[nodiscard]] segment_public_actor find_face(const std::string& name) const;

private:
  explicit runtime(options opts);

  bool network_;
  std::unique_ptr<actor_config> config_;
  std::unique_ptr<caf::actor_system> system_;
  std::shared_ptr<memory::local_directory> directory_;
  mutable std::mutex faces_mutex_;
  std::map<std::string, segment_public_actor> faces_;
};

} // namespace kvferry
