#pragma once
/// kvferry's logger: one spdlog logger named "kvferry" writing to stderr. An error is logged once,
/// where it is first decided, with the values that explain it.

#include <memory>
#include <string_view>

#include <spdlog/spdlog.h>

namespace kvferry::log {

/// The process-wide "kvferry" logger (created on first use).
spdlog::logger& get();

/// Sets the level by name (trace, debug, info, warn, error, critical, off); unknown names are ignored.
void set_level(std::string_view level);

template <class... Ts>
void trace(spdlog::format_string_t<Ts...> fmt, Ts&&... xs) {
  get().trace(fmt, std::forward<Ts>(xs)...);
}
template <class... Ts>
void debug(spdlog::format_string_t<Ts...> fmt, Ts&&... xs) {
  get().debug(fmt, std::forward<Ts>(xs)...);
}
template <class... Ts>
void info(spdlog::format_string_t<Ts...> fmt, Ts&&... xs) {
  get().info(fmt, std::forward<Ts>(xs)...);
}
template <class... Ts>
void warn(spdlog::format_string_t<Ts...> fmt, Ts&&... xs) {
  get().warn(fmt, std::forward<Ts>(xs)...);
}
template <class... Ts>
void error(spdlog::format_string_t<Ts...> fmt, Ts&&... xs) {
  get().error(fmt, std::forward<Ts>(xs)...);
}

} // namespace kvferry::log
