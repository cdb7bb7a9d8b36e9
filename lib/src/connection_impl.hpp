#pragma once
// The inside of baton::connection and baton::listener, shared with the move layer (and the
// restart service, which builds listeners of kept handles).
#include "baton/connection.hpp"
#include "baton/listener.hpp"
#include "detail/stream.hpp"

#include <boost/asio/post.hpp>

#include <functional>

namespace baton {
namespace detail {

/// What a connection and a listener share: a backend on an executor, and the quiesce a move
/// starts with. Quiescing stops new operations (they complete with operation_aborted) and calls
/// `on_idle` once no operation is pending; resume() undoes it after a failed move.
template <class Backend>
struct socket_state {
  using backend_type = Backend;
  boost::asio::any_io_executor ex;
  std::unique_ptr<Backend> backend;
  bool quiescing = false;
  std::function<void()> on_idle;

  socket_state() = default;
  socket_state(boost::asio::any_io_executor e, std::unique_ptr<Backend> b) : ex(std::move(e)), backend(std::move(b)) {}

  bool is_open() const noexcept { return backend && backend->is_open(); }
  void resume() noexcept {
    quiescing = false;
    on_idle = nullptr;
  }

 protected:
  void begin_quiesce(std::function<void()> done) {
    quiescing = true;
    on_idle = std::move(done);
  }
  // Posts `on_idle` (once) if quiescing and `idle`.
  void notify_if(bool idle) {
    if (!quiescing || !idle || !on_idle) return;
    auto f = std::move(on_idle);
    on_idle = nullptr;
    boost::asio::post(ex, std::move(f));
  }
};

struct connection_impl : socket_state<stream_backend>, std::enable_shared_from_this<connection_impl> {
  std::vector<std::byte> unread;  // bytes at [unread_pos, end) are delivered before the socket's
  std::size_t unread_pos = 0;
  std::vector<std::byte> state;
  std::vector<std::byte> write_scratch;  // a gathered write's bytes (one write at a time)
  int reads = 0, writes = 0;

  using socket_state::socket_state;
  std::vector<std::byte> remaining_unread() const {
    return {unread.begin() + static_cast<std::ptrdiff_t>(unread_pos), unread.end()};
  }
  bool writing() const noexcept { return writes > 0; }
  /// Stops reading and calls `done` once no operation is pending. Writes finish first; reads
  /// are cancelled, and bytes a cancelled read had already taken stay in `unread`.
  void quiesce(std::function<void()> done);
  void check_idle() { notify_if(reads == 0 && writes == 0); }
};

struct listener_impl : socket_state<listener_backend>, std::enable_shared_from_this<listener_impl> {
  int accepts = 0;
  std::string name;  // travels in the ticket's state

  using socket_state::socket_state;
  bool writing() const noexcept { return false; }
  /// Cancels pending accepts and calls `done` once none is pending.
  void quiesce(std::function<void()> done);
  void check_idle() { notify_if(accepts == 0); }
};

/// Baton's own access to the inside of connections and listeners.
struct connection_access {
  static std::shared_ptr<connection_impl>& impl(connection& c) noexcept { return c.impl_; }
  static std::shared_ptr<listener_impl>& impl(listener& l) noexcept { return l.impl_; }
  static connection wrap(std::shared_ptr<connection_impl> im) noexcept { return connection(std::move(im)); }
  static listener wrap(std::shared_ptr<listener_impl> im) noexcept { return listener(std::move(im)); }
};

}  // namespace detail
}  // namespace baton
