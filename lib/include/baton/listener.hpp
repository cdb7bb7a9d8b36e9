#pragma once
/// A movable listening TCP socket. In its home process it is an asio acceptor; after a move it
/// accepts in the target process (natively, or on Windows in emulated mode when the socket is
/// still bound to another process's completion port). Accepted sockets are always native.
///
/// Thread safety: as an Asio acceptor.

#include <baton/connection.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <memory>
#include <string>

namespace baton {

namespace detail {
struct listener_impl;
struct connection_access;
}

class listener {
 public:
  using executor_type = boost::asio::any_io_executor;

  listener() noexcept;
  explicit listener(boost::asio::ip::tcp::acceptor acceptor);
  listener(listener&&) noexcept;
  listener& operator=(listener&&) noexcept;
  ~listener();

  /// True while the listener holds a listening socket.
  bool is_open() const noexcept;
  executor_type get_executor() const;
  attach_mode mode() const noexcept;
  boost::asio::ip::tcp::endpoint local_endpoint(error_code& ec) const;
  /// The acceptor, in native mode; nullptr in emulated mode.
  boost::asio::ip::tcp::acceptor* acceptor() noexcept;
  /// The OS handle (SOCKET or fd), still owned by the listener.
  std::uintptr_t native_handle() const noexcept;
  void cancel();
  void close();
  /// The listener's name, empty unless given: a service manager's name for a socket it passed
  /// (systemd's FileDescriptorName=, set by baton::service when it adopts an activated socket),
  /// or one the application chose. A move carries it (at most 255 bytes; longer is cut).
  const std::string& name() const noexcept;
  void set_name(std::string name);

  /// Accepts one connection: void(error_code, boost::asio::ip::tcp::socket).
  template <class Token>
  auto async_accept(Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code, boost::asio::ip::tcp::socket)>(
        [this](auto h) { start_accept(std::move(h)); }, token);
  }

 private:
  friend struct detail::connection_access;
  explicit listener(std::shared_ptr<detail::listener_impl> impl) noexcept;
  void start_accept(boost::asio::any_completion_handler<void(error_code, boost::asio::ip::tcp::socket)> h);
  std::shared_ptr<detail::listener_impl> impl_;
};

}  // namespace baton
