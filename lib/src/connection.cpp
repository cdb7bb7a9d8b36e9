// baton::connection and baton::listener over a stream/listener backend: the native backends
// (an Asio socket on this process's reactor), unread bytes delivered before the socket, and the
// quiesce/resume a move needs (pending reads cancelled, writes finished first).
#include "baton/connection.hpp"

#include "connection_impl.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>

#include <cstring>
#include <utility>

namespace baton {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace detail {
namespace {

// What the native backends share: an Asio socket or acceptor on this process's reactor.
template <class Base, class Socket>
class native_socket : public Base {
 public:
  explicit native_socket(Socket s) : s_(std::move(s)) {}
  void cancel() override {
    error_code ec;
    s_.cancel(ec);
  }
  void set_shutdown_on_close(bool on) override { shutdown_on_close_ = on; }
  std::uintptr_t release(error_code& ec) override { return static_cast<std::uintptr_t>(s_.release(ec)); }
  asio::any_io_executor get_executor() override { return s_.get_executor(); }
  bool is_open() const override { return s_.is_open(); }
  attach_mode mode() const override { return attach_mode::native; }
  tcp::endpoint local_endpoint(error_code& ec) const override {
    const auto ep = s_.local_endpoint(ec);
    return {ep.address(), ep.port()};
  }
  std::uintptr_t native_handle() const override {
    return static_cast<std::uintptr_t>(const_cast<Socket&>(s_).native_handle());
  }

 protected:
  Socket s_;
  bool shutdown_on_close_ = false;
};

class native_stream final : public native_socket<stream_backend, tcp::socket> {
 public:
  using native_socket::native_socket;
  ~native_stream() override { close(); }
  void read(asio::mutable_buffer b, io_handler h) override { s_.async_read_some(b, std::move(h)); }
  void write(asio::const_buffer b, io_handler h) override { s_.async_write_some(b, std::move(h)); }
  void close() override {
    error_code ec;
    if (shutdown_on_close_ && s_.is_open()) s_.shutdown(tcp::socket::shutdown_both, ec);
    s_.close(ec);
  }
  tcp::socket* socket() override { return &s_; }
  tcp::endpoint remote_endpoint(error_code& ec) const override { return s_.remote_endpoint(ec); }
  void shutdown_send(error_code& ec) override { s_.shutdown(tcp::socket::shutdown_send, ec); }
};

// A connection taken from the backlog without joining the reactor (accept_detached): what a
// dispatcher that hands each connection on at once holds, so that it never registers a socket
// with epoll only to remove it again at the export. Its first I/O (a peek) attaches it as a
// native stream; until then the handle is used directly.
class detached_stream final : public stream_backend {
 public:
  detached_stream(asio::any_io_executor ex, std::uintptr_t h) : ex_(std::move(ex)), h_(h) {}
  ~detached_stream() override { close(); }
  void read(asio::mutable_buffer b, io_handler h) override {
    if (auto* s = attached(h)) s->read(b, std::move(h));
  }
  void write(asio::const_buffer b, io_handler h) override {
    if (auto* s = attached(h)) s->write(b, std::move(h));
  }
  void cancel() override {
    if (s_) s_->cancel();
  }
  void close() override {
    if (s_) return s_->close();
    if (h_ == none) return;
    if (shutdown_on_close_) ::shutdown(static_cast<asio::detail::socket_type>(h_), 2);
    close_socket_handle(std::exchange(h_, none));
  }
  bool is_open() const override { return s_ ? s_->is_open() : h_ != none; }
  attach_mode mode() const override { return attach_mode::native; }
  asio::any_io_executor get_executor() override { return ex_; }
  std::uintptr_t native_handle() const override { return s_ ? s_->native_handle() : h_; }
  std::uintptr_t release(error_code& ec) override {
    if (s_) return s_->release(ec);
    ec.clear();
    return std::exchange(h_, none);
  }
  void set_shutdown_on_close(bool on) override {
    shutdown_on_close_ = on;
    if (s_) s_->set_shutdown_on_close(on);
  }
  tcp::socket* socket() override {
    error_code ec;
    return attach(ec) ? s_->socket() : nullptr;
  }
  tcp::endpoint local_endpoint(error_code& ec) const override {
    if (s_) return s_->local_endpoint(ec);
    return address_of(false, ec);
  }
  tcp::endpoint remote_endpoint(error_code& ec) const override {
    if (s_) return s_->remote_endpoint(ec);
    return address_of(true, ec);
  }
  void shutdown_send(error_code& ec) override {
    if (s_) return s_->shutdown_send(ec);
    asio::detail::socket_ops::shutdown(static_cast<asio::detail::socket_type>(h_), asio::socket_base::shutdown_send, ec);
  }

 private:
  static constexpr std::uintptr_t none = ~std::uintptr_t{0};
  // Joins the reactor (once), as the protocol its own address names. False with `ec` if the
  // handle could not be attached (it stays detached).
  bool attach(error_code& ec) {
    if (s_) return true;
    if (h_ == none) {
      ec = asio::error::bad_descriptor;
      return false;
    }
    const auto self = address_of(false, ec);
    if (ec) return false;
    tcp::socket s(ex_);
    s.assign(self.protocol(), static_cast<tcp::socket::native_handle_type>(h_), ec);
    if (ec) return false;
    h_ = none;
    s_ = std::make_unique<native_stream>(std::move(s));
    s_->set_shutdown_on_close(shutdown_on_close_);
    return true;
  }
  stream_backend* attached(io_handler& h) {
    error_code ec;
    if (attach(ec)) return s_.get();
    asio::post(ex_, asio::append(std::move(h), ec, std::size_t{0}));
    return nullptr;
  }
  tcp::endpoint address_of(bool peer, error_code& ec) const {
    tcp::endpoint ep;
    std::size_t len = ep.capacity();
    const auto s = static_cast<asio::detail::socket_type>(h_);
    if (peer) asio::detail::socket_ops::getpeername(s, ep.data(), &len, false, ec);
    else asio::detail::socket_ops::getsockname(s, ep.data(), &len, ec);
    if (!ec) ep.resize(len);
    return ep;
  }

  asio::any_io_executor ex_;
  std::uintptr_t h_;
  std::unique_ptr<stream_backend> s_;
  bool shutdown_on_close_ = false;
};

class native_listener final : public native_socket<listener_backend, tcp::acceptor> {
 public:
  using native_socket::native_socket;
  ~native_listener() override { close(); }
  void accept(asio::any_completion_handler<void(error_code, tcp::socket)> h) override {
    s_.async_accept(std::move(h));
  }
  void close() override {
    // Linux stops a listening socket (in every process that holds it) on shutdown(); elsewhere
    // the call fails harmlessly.
    if (shutdown_on_close_ && s_.is_open()) ::shutdown(s_.native_handle(), 2);
    error_code ec;
    s_.close(ec);
  }
  tcp::acceptor* acceptor() override { return &s_; }
};

class native_datagram final : public native_socket<datagram_backend, asio::ip::udp::socket> {
 public:
  using native_socket::native_socket;
  ~native_datagram() override { close(); }
  void receive_from(asio::mutable_buffer b, asio::ip::udp::endpoint& from, io_handler h) override {
    s_.async_receive_from(b, from, std::move(h));
  }
  void send_to(asio::const_buffer b, const asio::ip::udp::endpoint& to, io_handler h) override {
    s_.async_send_to(b, to, std::move(h));
  }
  // A UDP socket has no peer to tell: closing our handle is all there is.
  void close() override {
    error_code ec;
    s_.close(ec);
  }
  asio::ip::udp::socket* socket() override { return &s_; }
};

// Completes `h` when no I/O may start: at once without a socket, through the executor while the
// connection is being quiesced for a move. False if the operation may go ahead.
bool refused(const std::shared_ptr<connection_impl>& im, io_handler& h) {
  if (!im || !im->backend) {
    std::move(h)(error_code(asio::error::bad_descriptor), std::size_t{0});
    return true;
  }
  if (!im->quiescing) return false;
  asio::post(im->ex, asio::append(std::move(h), error_code(asio::error::operation_aborted), std::size_t{0}));
  return true;
}

}  // namespace

std::uintptr_t socket_backend::release(error_code& ec) {
  ec = asio::error::operation_not_supported;
  return ~std::uintptr_t{0};
}

std::optional<transfer_strategy> pending_export::fallback(const error_code&) { return std::nullopt; }

void pending_export::async_publish(const asio::any_io_executor& ex, std::chrono::steady_clock::time_point,
                                   asio::any_completion_handler<void(error_code)> h) {
  asio::post(ex, asio::append(std::move(h), error_code()));
}

std::unique_ptr<stream_backend> make_native_stream(tcp::socket s) {
  return std::make_unique<native_stream>(std::move(s));
}
std::unique_ptr<stream_backend> make_detached_stream(const asio::any_io_executor& ex, std::uintptr_t h) {
  return std::make_unique<detached_stream>(ex, h);
}
std::unique_ptr<listener_backend> make_native_listener(tcp::acceptor a) {
  return std::make_unique<native_listener>(std::move(a));
}

std::unique_ptr<datagram_backend> make_native_datagram(asio::ip::udp::socket s) {
  return std::make_unique<native_datagram>(std::move(s));
}

std::unique_ptr<socket_backend> make_native_socket(socket_kind kind, const asio::any_io_executor& ex, tcp protocol,
                                                   std::uintptr_t h, error_code& ec) {
  const auto native = static_cast<tcp::socket::native_handle_type>(h);
  if (kind == socket_kind::datagram) {
    asio::ip::udp::socket s(ex);
    s.assign(protocol.family() == tcp::v6().family() ? asio::ip::udp::v6() : asio::ip::udp::v4(),
             static_cast<asio::ip::udp::socket::native_handle_type>(h), ec);
    return ec ? nullptr : make_native_datagram(std::move(s));
  }
  if (kind == socket_kind::connection) {
    tcp::socket s(ex);
    s.assign(protocol, native, ec);
    return ec ? nullptr : make_native_stream(std::move(s));
  }
  tcp::acceptor a(ex);
  a.assign(protocol, native, ec);
  return ec ? nullptr : make_native_listener(std::move(a));
}

void connection_impl::quiesce(std::function<void()> done) {
  begin_quiesce(std::move(done));
  // Cancelling would abort writes too (and lose track of how much they wrote), so reads are
  // cancelled only once every write has finished; see the write completion.
  if (writes == 0 && reads > 0 && backend) backend->cancel();
  check_idle();
}

void listener_impl::quiesce(std::function<void()> done) {
  begin_quiesce(std::move(done));
  if (accepts > 0 && backend) backend->cancel();
  check_idle();
}

}  // namespace detail

// connection ---------------------------------------------------------------------------------

connection::connection() noexcept = default;
connection::connection(std::shared_ptr<detail::connection_impl> impl) noexcept : impl_(std::move(impl)) {}
connection::connection(tcp::socket socket, std::vector<std::byte> unread, std::vector<std::byte> state)
    : impl_(std::make_shared<detail::connection_impl>(socket.get_executor(), detail::make_native_stream(std::move(socket)))) {
  impl_->unread = std::move(unread);
  impl_->state = std::move(state);
}
connection::connection(connection&&) noexcept = default;
connection& connection::operator=(connection&&) noexcept = default;
connection::~connection() { detail::close_if_last(impl_); }

connection::executor_type connection::get_executor() const { return impl_->ex; }
bool connection::is_open() const noexcept { return impl_ && impl_->is_open(); }
attach_mode connection::mode() const noexcept { return detail::mode_of(impl_); }
std::vector<std::byte>& connection::state() noexcept { return impl_->state; }
const std::vector<std::byte>& connection::state() const noexcept { return impl_->state; }
std::size_t connection::unread_size() const noexcept { return impl_ ? impl_->unread.size() - impl_->unread_pos : 0; }
void connection::push_front_unread(const void* data, std::size_t n) {
  auto rest = impl_->remaining_unread();
  impl_->unread.assign(static_cast<const std::byte*>(data), static_cast<const std::byte*>(data) + n);
  impl_->unread.insert(impl_->unread.end(), rest.begin(), rest.end());
  impl_->unread_pos = 0;
}
std::uintptr_t connection::native_handle() const noexcept { return detail::handle_of(impl_); }
tcp::socket* connection::socket() noexcept { return impl_ && impl_->backend ? impl_->backend->socket() : nullptr; }
tcp::endpoint connection::remote_endpoint(error_code& ec) const {
  if (!impl_ || !impl_->backend) {
    ec = asio::error::bad_descriptor;
    return {};
  }
  return impl_->backend->remote_endpoint(ec);
}
tcp::endpoint connection::local_endpoint(error_code& ec) const { return detail::local_endpoint_of(impl_, ec); }
void connection::cancel() { detail::cancel_of(impl_); }
void connection::shutdown_send(error_code& ec) {
  if (!impl_ || !impl_->backend) {
    ec = asio::error::bad_descriptor;
    return;
  }
  impl_->backend->shutdown_send(ec);
}
void connection::close() { detail::close_of(impl_); }

void connection::start_read(asio::mutable_buffer b, asio::any_completion_handler<void(error_code, std::size_t)> h) {
  auto& im = impl_;
  if (detail::refused(im, h)) return;
  if (im->unread_pos < im->unread.size()) {
    const std::size_t n = std::min(b.size(), im->unread.size() - im->unread_pos);
    std::memcpy(b.data(), im->unread.data() + im->unread_pos, n);
    im->unread_pos += n;
    if (im->unread_pos == im->unread.size()) {
      im->unread.clear();
      im->unread_pos = 0;
    }
    asio::post(im->ex, asio::append(std::move(h), error_code(), n));
    return;
  }
  if (b.size() == 0) {
    asio::post(im->ex, asio::append(std::move(h), error_code(), std::size_t{0}));
    return;
  }
  ++im->reads;
  im->backend->read(b, [self = im, b, h = std::move(h)](error_code ec, std::size_t n) mutable {
    --self->reads;
    if (self->quiescing && n > 0) {
      // The bytes left the kernel: they are kept for whoever owns the connection next.
      auto* p = static_cast<const std::byte*>(b.data());
      self->unread.insert(self->unread.end(), p, p + n);
      ec = asio::error::operation_aborted;
      n = 0;
    }
    std::move(h)(ec, n);
    self->check_idle(true);
  });
}

asio::mutable_buffer connection::write_scratch(std::size_t n) {
  if (!impl_) return {};
  impl_->write_scratch.resize(n);
  return asio::buffer(impl_->write_scratch.data(), n);
}

void connection::start_write(asio::const_buffer b, asio::any_completion_handler<void(error_code, std::size_t)> h) {
  auto& im = impl_;
  if (detail::refused(im, h)) return;
  ++im->writes;
  im->backend->write(b, [self = im, h = std::move(h)](error_code ec, std::size_t n) mutable {
    --self->writes;
    std::move(h)(ec, n);
    if (self->quiescing && self->writes == 0 && self->reads > 0 && self->backend) self->backend->cancel();
    self->check_idle(true);
  });
}

// listener -----------------------------------------------------------------------------------

listener::listener() noexcept = default;
listener::listener(std::shared_ptr<detail::listener_impl> s) noexcept : impl_(std::move(s)) {}
listener::listener(tcp::acceptor a)
    : impl_(std::make_shared<detail::listener_impl>(a.get_executor(), detail::make_native_listener(std::move(a)))) {}
listener::listener(listener&&) noexcept = default;
listener& listener::operator=(listener&&) noexcept = default;
listener::~listener() { detail::close_if_last(impl_); }
bool listener::is_open() const noexcept { return impl_ && impl_->is_open(); }
listener::executor_type listener::get_executor() const { return impl_->ex; }
attach_mode listener::mode() const noexcept { return detail::mode_of(impl_); }
tcp::endpoint listener::local_endpoint(error_code& ec) const { return detail::local_endpoint_of(impl_, ec); }
std::uintptr_t listener::native_handle() const noexcept { return detail::handle_of(impl_); }
tcp::acceptor* listener::acceptor() noexcept { return impl_ && impl_->backend ? impl_->backend->acceptor() : nullptr; }
void listener::cancel() { detail::cancel_of(impl_); }
void listener::close() { detail::close_of(impl_); }
const std::string& listener::name() const noexcept { return detail::name_of(impl_); }
void listener::set_name(std::string name) { detail::set_name_of(impl_, std::move(name)); }

void listener::start_accept(asio::any_completion_handler<void(error_code, tcp::socket)> h) {
  auto& im = impl_;
  if (!im || !im->backend) {
    std::move(h)(error_code(asio::error::bad_descriptor), tcp::socket(asio::system_executor()));
    return;
  }
  if (im->quiescing) {
    asio::post(im->ex, asio::append(std::move(h), error_code(asio::error::operation_aborted), tcp::socket(im->ex)));
    return;
  }
  ++im->accepts;
  im->backend->accept([self = im, h = std::move(h)](error_code ec, tcp::socket s) mutable {
    --self->accepts;
    // A connection accepted while the listener was being quiesced is delivered normally: it is
    // served here, never lost.
    std::move(h)(ec, std::move(s));
    self->check_idle(true);
  });
}

}  // namespace baton
