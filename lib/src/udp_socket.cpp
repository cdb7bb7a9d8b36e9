// baton::udp_socket over a datagram backend: datagrams a move's cancelled receive had taken are
// queued and delivered first, and the application's receive waits out a move (see
// connection_impl.hpp, udp_socket_impl).
#include "baton/udp_socket.hpp"

#include "connection_impl.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>
#include <cstring>

namespace baton {

namespace asio = boost::asio;
using asio::ip::udp;

namespace detail {

void udp_socket_impl::quiesce(std::function<void()> done) {
  begin_quiesce(std::move(done));
  // As with a connection's writes: a send finishes first (it may be the reply to the datagram just
  // read), then the receive is cancelled; see the send completion.
  if (sends == 0 && receives > 0 && backend) backend->cancel();
  check_idle();
}

void udp_socket_impl::resume() {
  socket_state::resume();
  if (!parked) return;
  auto p = std::move(*parked);
  parked.reset();
  receive(p.b, *p.from, std::move(p.h));
}

void udp_socket_impl::moved_away() {
  moved = true;
  if (!hold_when_moved) settle_move();
}

void udp_socket_impl::settle_move() {
  moved = true;
  quiescing = false;
  queued.clear();  // they travelled in the ticket
  if (!parked) return;
  auto p = std::move(*parked);
  parked.reset();
  asio::post(ex, asio::append(std::move(p.h), make_error_code(errc::socket_moved), std::size_t{0}));
}

void udp_socket_impl::take_back(std::unique_ptr<datagram_backend> b) {
  backend = std::move(b);
  moved = false;
  queued.clear();  // the target may have read them; what the kernel still holds is ours again
  resume();
}

void udp_socket_impl::receive(asio::mutable_buffer b, udp::endpoint& from, io_handler h) {
  if (!queued.empty()) {
    auto& d = queued.front();
    const std::size_t n = std::min(b.size(), d.data.size());
    if (n > 0) std::memcpy(b.data(), d.data.data(), n);
    from = d.from;
    queued.pop_front();
    asio::post(ex, asio::append(std::move(h), error_code(), n));
    return;
  }
  if (quiescing || (moved && hold_when_moved)) {
    if (parked) {
      asio::post(ex, asio::append(std::move(h), make_error_code(errc::operation_in_progress), std::size_t{0}));
      return;
    }
    parked = parked_receive{b, &from, std::move(h)};
    return;
  }
  if (!backend) {
    const error_code ec = moved ? make_error_code(errc::socket_moved) : error_code(asio::error::bad_descriptor);
    asio::post(ex, asio::append(std::move(h), ec, std::size_t{0}));
    return;
  }
  ++receives;
  backend->receive_from(b, rx_from, [self = shared_from_this(), b, &from, h = std::move(h)](error_code ec,
                                                                                            std::size_t n) mutable {
    --self->receives;
    if (self->quiescing) {
      // The datagram left the kernel: it is kept for whoever owns the socket next, and the
      // application's receive waits for the move's verdict.
      if (!ec) {
        auto* p = static_cast<const std::byte*>(b.data());
        self->queued.push_back({self->rx_from, std::vector<std::byte>(p, p + n)});
      }
      self->parked = parked_receive{b, &from, std::move(h)};
    } else {
      from = self->rx_from;
      std::move(h)(ec, n);
    }
    self->check_idle(true);
  });
}

}  // namespace detail

udp_socket::udp_socket() noexcept = default;
udp_socket::udp_socket(std::shared_ptr<detail::udp_socket_impl> impl) noexcept : impl_(std::move(impl)) {}
udp_socket::udp_socket(udp_socket&&) noexcept = default;
udp_socket& udp_socket::operator=(udp_socket&&) noexcept = default;
udp_socket::~udp_socket() { detail::close_if_last(impl_); }
udp_socket::udp_socket(udp::socket s)
    : impl_(std::make_shared<detail::udp_socket_impl>(s.get_executor(), detail::make_native_datagram(std::move(s)))) {}

bool udp_socket::is_open() const noexcept { return impl_ && impl_->is_open(); }
udp_socket::executor_type udp_socket::get_executor() const { return impl_->ex; }
udp::endpoint udp_socket::local_endpoint(error_code& ec) const {
  const auto ep = detail::local_endpoint_of(impl_, ec);
  return {ep.address(), ep.port()};
}
attach_mode udp_socket::mode() const noexcept { return detail::mode_of(impl_); }
udp::socket* udp_socket::socket() noexcept { return impl_ && impl_->backend ? impl_->backend->socket() : nullptr; }
std::uintptr_t udp_socket::native_handle() const noexcept { return detail::handle_of(impl_); }
std::size_t udp_socket::queued_datagrams() const noexcept { return impl_ ? impl_->queued.size() : 0; }
void udp_socket::cancel() { detail::cancel_of(impl_); }
void udp_socket::close() { detail::close_of(impl_); }
const std::string& udp_socket::name() const noexcept { return detail::name_of(impl_); }
void udp_socket::set_name(std::string name) { detail::set_name_of(impl_, std::move(name)); }

void udp_socket::start_receive(asio::mutable_buffer b, udp::endpoint& sender,
                               asio::any_completion_handler<void(error_code, std::size_t)> h) {
  if (!impl_) {
    std::move(h)(error_code(asio::error::bad_descriptor), std::size_t{0});
    return;
  }
  impl_->receive(b, sender, std::move(h));
}

void udp_socket::start_send(asio::const_buffer b, const udp::endpoint& destination,
                            asio::any_completion_handler<void(error_code, std::size_t)> h) {
  auto& im = impl_;
  if (!im || !im->backend || im->quiescing) {
    const error_code ec = !im                  ? error_code(asio::error::bad_descriptor)
                          : im->moved          ? make_error_code(errc::socket_moved)
                          : im->quiescing      ? error_code(asio::error::operation_aborted)
                                               : error_code(asio::error::bad_descriptor);
    if (!im) return std::move(h)(ec, std::size_t{0});
    asio::post(im->ex, asio::append(std::move(h), ec, std::size_t{0}));
    return;
  }
  ++im->sends;
  im->backend->send_to(b, destination, [self = im, h = std::move(h)](error_code ec, std::size_t n) mutable {
    --self->sends;
    std::move(h)(ec, n);
    if (self->quiescing && self->sends == 0 && self->receives > 0 && self->backend) self->backend->cancel();
    self->check_idle(true);
  });
}

}  // namespace baton
