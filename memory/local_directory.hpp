#pragma once
/// The segments hosted inside this process, by name. Only the same-process data path uses it:
/// a segment is "local" because this process registered it, never because its host name or IP
/// matches ours.

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "memory/region_registry.hpp"

namespace kvferry::memory {

class local_directory {
public:
  /// Adds a segment; false if the name is taken.
  bool add(const std::string& name, std::shared_ptr<region_registry> regions);
  void remove(const std::string& name);
  /// The segment's registry, or nullptr.
  [[nodiscard]] std::shared_ptr<region_registry> find(const std::string& name) const;

private:
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<region_registry>> segments_;
};

} // namespace kvferry::memory
