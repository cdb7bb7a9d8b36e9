#pragma once
// What the layers above move (hot restart) need to hold of a socket without reaching into the
// stream backends: a kept second handle to a listening or UDP socket, a second handle to a UDP
// socket that the application serves while the service moves it, and a watch on a connection
// that says whether it is still open. Owned by the connection/move layer (socket_custody.cpp); the
// layers above include this instead of detail/stream.hpp or connection_impl.hpp.
#include "baton/connection.hpp"
#include "baton/listener.hpp"
#include "baton/udp_socket.hpp"

#include <cstdint>
#include <memory>

namespace baton::detail {

/// A second OS handle to a listener's (or UDP) socket, attached to no reactor, so that the socket
/// outlives a move to a process that then dies. Move-only; closes its handle when
/// destroyed unless adopted.
class kept_socket {
 public:
  kept_socket() noexcept = default;
  kept_socket(kept_socket&& o) noexcept : h_(o.h_) { o.h_ = none; }
  kept_socket& operator=(kept_socket&& o) noexcept;
  ~kept_socket() { close(); }

  /// Duplicates `l`'s handle. On failure nothing is kept.
  static kept_socket keep(const listener& l, error_code& ec);
  static kept_socket keep(const udp_socket& u, error_code& ec);
  /// Takes over `h`, a listening socket's handle this process owns (e.g. one a service manager
  /// passed in).
  static kept_socket own(std::uintptr_t h) noexcept {
    kept_socket k;
    k.h_ = h;
    return k;
  }
  /// A listener of the kept handle on `ex` (native where possible, emulated otherwise). The handle
  /// is given up either way (closed on failure).
  listener adopt(const boost::asio::any_io_executor& ex, error_code& ec);
  /// Gives `u`, whose socket moved away, its socket back from the kept handle (attached to `u`'s
  /// executor); a receive of the application waiting out the move carries on. The handle is
  /// given up either way.
  void restore(udp_socket& u, error_code& ec);
  void close() noexcept;
  explicit operator bool() const noexcept { return h_ != none; }

 private:
  static constexpr std::uintptr_t none = ~std::uintptr_t{0};
  std::uintptr_t h_ = none;
};

/// Marks `u` as held by the service: a receive waiting out a move of it stays parked after the
/// move succeeded, until settle_move (or kept_socket::restore).
void hold_moves(udp_socket& u) noexcept;
/// hold_moves, and another handle to `u`'s socket (for the application, or to send).
udp_socket share_held(udp_socket& u);
/// `u`'s move is final: the receive waiting it out ends with errc::socket_moved.
void settle_move(udp_socket& u) noexcept;

/// Whether a connection is still open somewhere in this process, without keeping it alive (the
/// connection object may have been moved from, handed on or destroyed meanwhile).
class connection_watch {
 public:
  explicit connection_watch(connection& c);
  bool open() const;

 private:
  std::weak_ptr<connection_impl> w_;
};

}  // namespace baton::detail
