#pragma once
/// SIGINT/SIGTERM handling for long-running commands: block both in every thread (call before any
/// thread starts), then wait for one in the main thread and stop cleanly.

#include <csignal>
#include <chrono>

namespace kvferry::tools {

/// Blocks SIGINT and SIGTERM for this thread and every thread it creates afterwards.
void block_stop_signals();

/// Waits for SIGINT or SIGTERM; returns the signal number, or 0 after `timeout` (negative: forever).
int wait_for_stop_signal(std::chrono::milliseconds timeout = std::chrono::milliseconds(-1));

} // namespace kvferry::tools
