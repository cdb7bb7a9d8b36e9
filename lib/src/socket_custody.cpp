// Kept listener handles and connection watches (detail/socket_custody.hpp), on top of the stream
// backends.
#include "detail/socket_custody.hpp"

#include "connection_impl.hpp"
#include "detail/stream.hpp"

namespace baton::detail {

kept_listener& kept_listener::operator=(kept_listener&& o) noexcept {
  if (this != &o) {
    close();
    h_ = o.h_;
    o.h_ = none;
  }
  return *this;
}

kept_listener kept_listener::keep(const listener& l, error_code& ec) {
  kept_listener k;
  const auto h = duplicate_socket_handle(l.native_handle(), ec);
  if (!ec) k.h_ = h;
  return k;
}

listener kept_listener::adopt(const boost::asio::any_io_executor& ex, error_code& ec) {
  const auto h = h_;
  h_ = none;
  auto b = adopt_listener(ex, h, ec);
  if (ec) return listener();
  return connection_access::wrap(std::make_shared<listener_impl>(ex, std::move(b)));
}

void kept_listener::close() noexcept {
  if (h_ != none) close_socket_handle(h_);
  h_ = none;
}

connection_watch::connection_watch(connection& c) : w_(connection_access::impl(c)) {}

bool connection_watch::open() const {
  auto p = w_.lock();
  return p && p->backend && p->backend->is_open();
}

}  // namespace baton::detail
