#pragma once
// The inside of baton::channel, shared with the move layer and with white-box tests.
#include "baton/channel.hpp"
#include "detail/platform.hpp"
#include "ring.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/interprocess/mapped_region.hpp>

namespace baton {

struct channel::impl : std::enable_shared_from_this<channel::impl> {
  executor_type ex;
  std::string name;
  channel_options opts;
  bool receiver = false;
  bool closed = false;
  boost::interprocess::mapped_region region;
  detail::ring ring;
  detail::doorbell bell;
  detail::process_watch owner;  // sender side: the receiving process
  boost::asio::steady_timer wait_timer;
  std::uint64_t wait_gen = 0;
  bool receiving = false;
  channel_stats stats{};
  std::string region_name, bell_name;
  std::vector<std::byte> rx_buf;  // reused by receives
  std::chrono::steady_clock::time_point owner_checked{};

  // The receiver's liveness, probed at most once a millisecond (a pidfd poll is a system call).
  bool owner_alive() {
    const auto now = std::chrono::steady_clock::now();
    if (now - owner_checked < std::chrono::milliseconds(1)) return true;
    if (!owner.alive()) return false;
    owner_checked = now;
    return true;
  }

  explicit impl(const executor_type& e) : ex(e), wait_timer(e) {}
  ~impl();
};

namespace detail {
struct channel_access {
  static channel::impl& get(channel& c) { return *c.impl_; }
  static std::shared_ptr<channel::impl> shared(channel& c) { return c.impl_; }
};
}  // namespace detail

}  // namespace baton
