#include "tools/store_tools.hpp"

#include <boost/json.hpp>

namespace kvferry::tools {

std::optional<master_figures> read_master_figures(store::client& c) {
  auto report = c.master_stats();
  if (!report)
    return std::nullopt;
  boost::system::error_code ec;
  auto value = boost::json::parse(*report, ec);
  if (ec || !value.is_object())
    return std::nullopt;
  const auto& root = value.as_object();
  auto number = [](const boost::json::object& o, std::string_view name) -> uint64_t {
    const auto* v = o.if_contains(name);
    if (v == nullptr)
      return 0;
    if (v->is_uint64())
      return v->as_uint64();
    if (v->is_int64())
      return static_cast<uint64_t>(std::max<int64_t>(0, v->as_int64()));
    return 0;
  };
  master_figures f;
  f.capacity = number(root, "capacity");
  f.used = number(root, "used");
  f.objects = number(root, "objects");
  if (const auto* counters = root.if_contains("counters"); counters && counters->is_object())
    f.evictions = number(counters->as_object(), "evictions");
  return f;
}

} // namespace kvferry::tools
