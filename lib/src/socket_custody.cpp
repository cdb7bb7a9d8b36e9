// Kept listener handles and connection watches (detail/socket_custody.hpp), on top of the stream
// backends.
#include "detail/socket_custody.hpp"

#include "connection_impl.hpp"
#include "detail/stream.hpp"

namespace baton::detail {

kept_socket& kept_socket::operator=(kept_socket&& o) noexcept {
  if (this != &o) {
    close();
    h_ = o.h_;
    o.h_ = none;
  }
  return *this;
}

namespace {
kept_socket keep_handle(std::uintptr_t h, error_code& ec) {
  const auto d = duplicate_socket_handle(h, ec);
  return ec ? kept_socket() : kept_socket::own(d);
}
}  // namespace

kept_socket kept_socket::keep(const listener& l, error_code& ec) { return keep_handle(l.native_handle(), ec); }
kept_socket kept_socket::keep(const udp_socket& u, error_code& ec) { return keep_handle(u.native_handle(), ec); }

listener kept_socket::adopt(const boost::asio::any_io_executor& ex, error_code& ec) {
  const auto h = h_;
  h_ = none;
  auto b = adopt_listener(ex, h, ec);
  if (ec) return listener();
  return connection_access::wrap(std::make_shared<listener_impl>(ex, std::move(b)));
}

void kept_socket::restore(udp_socket& u, error_code& ec) {
  const auto h = h_;
  h_ = none;
  auto& im = connection_access::impl(u);
  auto b = attach_socket(socket_kind::datagram, im->ex, h, ec);
  if (!ec) im->take_back(backend_cast<datagram_backend>(std::move(b)));
}

void hold_moves(udp_socket& u) noexcept {
  if (auto& im = connection_access::impl(u)) im->hold_when_moved = true;
}

udp_socket share_held(udp_socket& u) {
  hold_moves(u);
  return connection_access::share(u);
}

void settle_move(udp_socket& u) noexcept {
  if (auto& im = connection_access::impl(u)) im->settle_move();
}

void kept_socket::close() noexcept {
  if (h_ != none) close_socket_handle(h_);
  h_ = none;
}

connection_watch::connection_watch(connection& c) : w_(connection_access::impl(c)) {}

bool connection_watch::open() const {
  auto p = w_.lock();
  return p && p->backend && p->backend->is_open();
}

}  // namespace baton::detail
