#include "config/log.hpp"

#include <mutex>
#include <string>

#include <spdlog/sinks/stdout_color_sinks.h>

namespace kvferry::log {

spdlog::logger& get() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto existing = spdlog::get("kvferry");
    if (existing)
      return existing;
    auto made = spdlog::stderr_color_mt("kvferry");
    made->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ [kvferry %P] %v");
    return made;
  }();
  return *logger;
}

void set_level(std::string_view level) {
  auto parsed = spdlog::level::from_str(std::string(level));
  if (parsed == spdlog::level::off && level != "off")
    return;
  get().set_level(parsed);
}

} // namespace kvferry::log
