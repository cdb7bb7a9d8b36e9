#pragma once
// Shared by the soak tests: per-process usage reports and the bounds a leak check allows, an echo
// loop, and a poll loop with a deadline.
#include "test_prelude.hpp"
#include "test_support.hpp"

#include <baton/connection.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace baton::test::soak {

using namespace prelude;

// Handles a process may gain between two measurements without a leak of ours: Wine's own
// handles, a pidfd cached for a new peer. Every leak these tests look for grows with the number
// of moves, which is in the hundreds or thousands.
inline constexpr std::uint64_t handle_noise = 8;

using usage = process_usage;

inline std::string usage_text(const std::string& tag, const usage& u) {
  return tag + "handles=" + std::to_string(u.handles) + " " + tag + "rss=" + std::to_string(u.rss) + " " + tag +
         "priv=" + std::to_string(u.priv) + " " + tag + "threads=" + std::to_string(u.threads);
}

inline std::uint64_t field(const std::string& text, const std::string& key) {
  auto p = text.find(" " + key + "=");
  if (p == std::string::npos) return ~0ull;
  return std::stoull(text.substr(p + key.size() + 2));
}

// Private memory a process may gain between two measurements without it counting as a leak:
// glibc's malloc (and Windows' heap) keep freed chunks in per-size caches and trim the top of
// the heap only past a threshold (128 KiB by default), and Asio recycles operation storage per
// thread. After the warm-up every cache has seen its working set; a leak of even 24 bytes per
// move would be 2.3 MiB over 98,000 moves, so 2 MiB separates the two (natively the growth
// measured after the warm-up is under 150 KiB).
inline constexpr std::uint64_t memory_slack = 2u << 20;

// A thread that did not exist at the first measurement brings its own memory. Under Wine,
// where PagefileUsage is the Unix process's RssAnon, each new thread added ~1,020 KiB (seen:
// 4 -> 5 threads with +1,020 KiB, and runs where private memory stepped up by several MiB at
// once, then stayed flat). Wine's thread pool, which serves the waits of emulated sockets,
// starts such threads under load; their number follows the concurrency, not the moves. So the
// bound grows by 1.5 MiB per additional thread, and the thread counts are reported.
inline constexpr std::uint64_t per_new_thread = 1536u << 10;
// Under AddressSanitizer freed memory sits in a quarantine (256 MiB by default) and TSan keeps
// shadow state, so resident memory grows with the number of allocations whatever the program
// does: the memory bounds mean nothing there (LeakSanitizer checks leaks in that build). The
// descriptor/handle counts are checked in every build. (BATON_TEST_SANITIZED: tests/CMakeLists.txt.)
#ifdef BATON_TEST_SANITIZED
inline constexpr bool memory_is_measurable = false;
#else
inline constexpr bool memory_is_measurable = true;
#endif

inline std::uint64_t memory_bound(std::uint64_t threads_before, std::uint64_t threads_after) {
  return memory_slack + (threads_after > threads_before ? threads_after - threads_before : 0) * per_new_thread;
}

// Echoes on `c` until its client closes (or an error), then counts it in `finished`.
template <class Counter>
asio::awaitable<void> echo_until_eof(baton::connection& c, Counter& finished) {
  std::vector<char> buf(16 * 1024);
  for (;;) {
    auto [ec, n] = co_await c.async_read_some(asio::buffer(buf), tuple_aw);
    if (ec) break;
    auto [wec, wn] = co_await asio::async_write(c, asio::buffer(buf.data(), n), tuple_aw);
    if (wec) break;
  }
  ++finished;
}

// Polls the io_context until `cond` holds or `deadline` passes.
template <class Cond>
inline bool run_until(asio::io_context& ioc, Cond cond, std::chrono::milliseconds deadline) {
  const auto end = std::chrono::steady_clock::now() + deadline;
  while (!cond() && std::chrono::steady_clock::now() < end) {
    ioc.run_for(5ms);
    if (ioc.stopped()) ioc.restart();
  }
  return cond();
}

}  // namespace baton::test::soak
