#include "memory/local_directory.hpp"

namespace kvferry::memory {

bool local_directory::add(const std::string& name, std::shared_ptr<region_registry> regions) {
  std::lock_guard<std::mutex> guard(mutex_);
  return segments_.emplace(name, std::move(regions)).second;
}

void local_directory::remove(const std::string& name) {
  std::lock_guard<std::mutex> guard(mutex_);
  segments_.erase(name);
}

std::shared_ptr<region_registry> local_directory::find(const std::string& name) const {
  std::lock_guard<std::mutex> guard(mutex_);
  auto it = segments_.find(name);
  return it == segments_.end() ? nullptr : it->second;
}

} // namespace kvferry::memory
