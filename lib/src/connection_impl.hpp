#pragma once
// The inside of baton::connection and baton::listener, shared with the move layer (and the
// restart service, which builds listeners of kept handles).
#include "baton/connection.hpp"
#include "baton/listener.hpp"
#include "baton/udp_socket.hpp"
#include "detail/datagram_queue.hpp"
#include "detail/stream.hpp"

#include <boost/asio/post.hpp>

#include <functional>
#include <optional>

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
  /// The move succeeded: the target owns the socket (a UDP socket ends its parked receive).
  void moved_away() noexcept {}

 protected:
  void begin_quiesce(std::function<void()> done) {
    quiescing = true;
    on_idle = std::move(done);
  }
  // Runs `on_idle` (once) if quiescing and `idle`: posted when called from quiesce() (a move's
  // completion may not run inside async_send), at once from an operation's completion handler
  // (after the application's handler: one turn of the event loop less per move, and the moves
  // whose reads a hand-over cancelled together publish together).
  void notify_if(bool idle, bool in_handler) {
    if (!quiescing || !idle || !on_idle) return;
    auto f = std::move(on_idle);
    on_idle = nullptr;
    if (in_handler) return f();
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
  void check_idle(bool in_handler = false) { notify_if(reads == 0 && writes == 0, in_handler); }
};

struct listener_impl : socket_state<listener_backend>, std::enable_shared_from_this<listener_impl> {
  int accepts = 0;
  std::string name;  // travels in the ticket's state

  using socket_state::socket_state;
  bool writing() const noexcept { return false; }
  /// Cancels pending accepts and calls `done` once none is pending.
  void quiesce(std::function<void()> done);
  void check_idle(bool in_handler = false) { notify_if(accepts == 0, in_handler); }
};

/// A UDP socket: datagrams taken from the kernel by a receive that a move cancelled are queued
/// (and travel in the ticket); the application's receive waits out the move (`parked`) and goes
/// on after a rollback, or ends with errc::socket_moved. With `hold_when_moved` (the restart
/// service, which may take the socket back from a kept handle) it stays parked after a
/// successful move until settle_move() or take_back().
struct udp_socket_impl : socket_state<datagram_backend>, std::enable_shared_from_this<udp_socket_impl> {
  struct parked_receive {
    boost::asio::mutable_buffer b;
    boost::asio::ip::udp::endpoint* from = nullptr;
    io_handler h;
  };
  std::deque<queued_datagram> queued;
  std::string name;  // travels in the ticket's state
  std::optional<parked_receive> parked;
  boost::asio::ip::udp::endpoint rx_from;  // the sender of the receive in flight
  int receives = 0, sends = 0;
  bool moved = false, hold_when_moved = false;

  using socket_state::socket_state;
  bool writing() const noexcept { return sends > 0; }
  /// Lets pending sends finish, then cancels the receive; calls `done` once nothing is pending.
  void quiesce(std::function<void()> done);
  void check_idle(bool in_handler = false) { notify_if(receives == 0 && sends == 0, in_handler); }
  /// After a rollback: the parked receive reads here again.
  void resume();
  void moved_away();
  /// The socket is the target's for good: the parked receive ends with errc::socket_moved.
  void settle_move();
  /// The socket came back (a kept handle, re-attached as `b`): serve it here again.
  void take_back(std::unique_ptr<datagram_backend> b);
  void receive(boost::asio::mutable_buffer b, boost::asio::ip::udp::endpoint& from, io_handler h);
};

/// Baton's own access to the inside of connections, listeners and UDP sockets.
struct connection_access {
  static std::shared_ptr<connection_impl>& impl(connection& c) noexcept { return c.impl_; }
  static std::shared_ptr<listener_impl>& impl(listener& l) noexcept { return l.impl_; }
  static std::shared_ptr<udp_socket_impl>& impl(udp_socket& u) noexcept { return u.impl_; }
  static connection wrap(std::shared_ptr<connection_impl> im) noexcept { return connection(std::move(im)); }
  static listener wrap(std::shared_ptr<listener_impl> im) noexcept { return listener(std::move(im)); }
  static udp_socket wrap(std::shared_ptr<udp_socket_impl> im) noexcept { return udp_socket(std::move(im)); }
  /// Another handle to `u`'s socket.
  static udp_socket share(udp_socket& u) noexcept { return udp_socket(u.impl_); }
};

// What the whole of a connection, a listener or a UDP socket does alike, over its impl.
template <class Impl>
void close_if_last(const std::shared_ptr<Impl>& im) {
  if (im && im.use_count() == 1 && im->backend) im->backend->close();
}
template <class Impl>
attach_mode mode_of(const std::shared_ptr<Impl>& im) noexcept {
  return im && im->backend ? im->backend->mode() : attach_mode::native;
}
template <class Impl>
std::uintptr_t handle_of(const std::shared_ptr<Impl>& im) noexcept {
  return im && im->backend ? im->backend->native_handle() : ~std::uintptr_t{0};
}
template <class Impl>
void cancel_of(const std::shared_ptr<Impl>& im) {
  if (im && im->backend) im->backend->cancel();
}
template <class Impl>
void close_of(const std::shared_ptr<Impl>& im) {
  if (im && im->backend) im->backend->close();
}
/// A listener's or a UDP socket's name ("" without a socket).
template <class Impl>
const std::string& name_of(const std::shared_ptr<Impl>& im) noexcept {
  static const std::string none;
  return im ? im->name : none;
}
/// Names a listener or a UDP socket, cut to the 255 bytes a move carries.
template <class Impl>
void set_name_of(const std::shared_ptr<Impl>& im, std::string name) {
  if (name.size() > 255) name.resize(255);
  if (im) im->name = std::move(name);
}
template <class Impl>
boost::asio::ip::tcp::endpoint local_endpoint_of(const std::shared_ptr<Impl>& im, error_code& ec) {
  if (!im || !im->backend) {
    ec = boost::asio::error::bad_descriptor;
    return {};
  }
  return im->backend->local_endpoint(ec);
}

}  // namespace detail
}  // namespace baton
