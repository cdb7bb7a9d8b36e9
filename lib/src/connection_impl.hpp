#pragma once
#include "baton/connection.hpp"
#include "baton/listener.hpp"
#include "detail/stream.hpp"

#include <boost/asio/post.hpp>

#include <functional>

namespace baton {
namespace detail {

struct connection_impl : std::enable_shared_from_this<connection_impl> {
  boost::asio::any_io_executor ex;
  std::unique_ptr<stream_backend> backend;
  std::vector<std::byte> unread;  // bytes at [unread_pos, end) are delivered before the socket's
  std::size_t unread_pos = 0;
  std::vector<std::byte> state;
  std::vector<std::byte> write_scratch;  // a gathered write's bytes (one write at a time)
  int reads = 0, writes = 0;
  bool quiescing = false;
  std::function<void()> on_idle;

  std::vector<std::byte> remaining_unread() const {
    return {unread.begin() + static_cast<std::ptrdiff_t>(unread_pos), unread.end()};
  }
  /// Stops reading and calls `done` once no operation is pending. Writes finish first; reads
  /// are cancelled, and bytes a cancelled read had already taken stay in `unread`.
  void quiesce(std::function<void()> done);
  /// Resumes normal operation after a failed move.
  void resume() noexcept {
    quiescing = false;
    on_idle = nullptr;
  }
  void check_idle();
};

}  // namespace detail

struct listener::state : std::enable_shared_from_this<listener::state> {
  boost::asio::any_io_executor ex;
  std::unique_ptr<detail::listener_backend> backend;
  int accepts = 0;
  bool quiescing = false;
  std::function<void()> on_idle;
  void quiesce(std::function<void()> done);
  void resume() noexcept {
    quiescing = false;
    on_idle = nullptr;
  }
  void check_idle();
};

}  // namespace baton
