#pragma once
// What the layers above move (hot restart) need to hold of a socket without reaching into the
// stream backends: a kept second handle to a listening socket, and a watch on a connection that
// says whether it is still open. Owned by the connection/move layer (socket_custody.cpp); the
// layers above include this instead of detail/stream.hpp or connection_impl.hpp.
#include "baton/connection.hpp"
#include "baton/listener.hpp"

#include <cstdint>
#include <memory>

namespace baton::detail {

/// A second OS handle to a listener's socket, attached to no reactor, so that the socket outlives
/// a move of the listener to a process that then dies. Move-only; closes its handle when
/// destroyed unless adopted.
class kept_listener {
 public:
  kept_listener() noexcept = default;
  kept_listener(kept_listener&& o) noexcept : h_(o.h_) { o.h_ = none; }
  kept_listener& operator=(kept_listener&& o) noexcept;
  ~kept_listener() { close(); }

  /// Duplicates `l`'s handle. On failure nothing is kept.
  static kept_listener keep(const listener& l, error_code& ec);
  /// Takes over `h`, a listening socket's handle this process owns (e.g. one a service manager
  /// passed in).
  static kept_listener own(std::uintptr_t h) noexcept {
    kept_listener k;
    k.h_ = h;
    return k;
  }
  /// A listener of the kept handle on `ex` (native where possible, emulated otherwise). The handle
  /// is given up either way (closed on failure).
  listener adopt(const boost::asio::any_io_executor& ex, error_code& ec);
  void close() noexcept;
  explicit operator bool() const noexcept { return h_ != none; }

 private:
  static constexpr std::uintptr_t none = ~std::uintptr_t{0};
  std::uintptr_t h_ = none;
};

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
