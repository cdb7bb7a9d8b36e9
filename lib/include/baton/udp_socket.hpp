#pragma once
/// A movable bound UDP socket (a DNS-like responder's, a QUIC server's). It moves like a listener:
/// the datagrams queued in the kernel stay queued and are read by the target, and datagrams a
/// cancelled receive had already taken travel in the ticket and are read there first, with their
/// senders' addresses (docs/udp.md).
///
/// A receive pending when a move starts waits out the move instead of failing: after a rollback it
/// goes on reading here; once the target owns the socket it completes with errc::socket_moved
/// (stop serving the socket). Sends pending when a move starts finish first. So a responder that
/// sends its reply before it awaits anything else never answers after its socket has moved.
///
/// Handles: a udp_socket is a handle to a socket shared by its copies made by baton::service
/// (service::udp_sockets()); the socket closes with the last handle (or close()).
///
/// Thread safety: as an Asio socket. One receive and one send outstanding at a time.

#include <baton/connection.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/udp.hpp>

#include <cstddef>
#include <memory>
#include <string>

namespace baton {

namespace detail {
struct udp_socket_impl;
struct connection_access;
}

class udp_socket {
 public:
  using executor_type = boost::asio::any_io_executor;

  udp_socket() noexcept;
  udp_socket(udp_socket&&) noexcept;
  udp_socket& operator=(udp_socket&&) noexcept;
  ~udp_socket();
  /// Wraps an open (normally bound) UDP socket.
  explicit udp_socket(boost::asio::ip::udp::socket socket);

  /// True while the handle has an open socket in this process.
  bool is_open() const noexcept;
  executor_type get_executor() const;
  boost::asio::ip::udp::endpoint local_endpoint(error_code& ec) const;
  attach_mode mode() const noexcept;
  /// The socket, in native mode; nullptr in emulated mode.
  boost::asio::ip::udp::socket* socket() noexcept;
  /// The OS handle (SOCKET or fd), still owned by the socket.
  std::uintptr_t native_handle() const noexcept;
  /// Datagrams taken from the kernel and held for delivery before the kernel's (after a move).
  std::size_t queued_datagrams() const noexcept;
  /// Cancels outstanding operations (they complete with operation_aborted).
  void cancel();
  void close();
  /// The socket's name, empty unless given; a move carries it (at most 255 bytes; longer is cut).
  const std::string& name() const noexcept;
  void set_name(std::string name);

  /// Receives one datagram: void(error_code, std::size_t); `sender` is set before the handler
  /// runs and must outlive the operation. A datagram longer than the buffer is cut to it.
  /// errc::socket_moved once the socket belongs to another process.
  template <class MutableBufferSequence, class Token>
  auto async_receive_from(const MutableBufferSequence& buffers, boost::asio::ip::udp::endpoint& sender,
                          Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this, &sender](auto h, boost::asio::mutable_buffer b) { start_receive(b, sender, std::move(h)); }, token,
        boost::asio::mutable_buffer(*boost::asio::buffer_sequence_begin(buffers)));
  }

  /// Sends one datagram to `destination`: void(error_code, std::size_t).
  template <class ConstBufferSequence, class Token>
  auto async_send_to(const ConstBufferSequence& buffers, const boost::asio::ip::udp::endpoint& destination,
                     Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this, destination](auto h, boost::asio::const_buffer b) { start_send(b, destination, std::move(h)); },
        token, boost::asio::const_buffer(*boost::asio::buffer_sequence_begin(buffers)));
  }

 private:
  friend struct detail::connection_access;
  explicit udp_socket(std::shared_ptr<detail::udp_socket_impl> impl) noexcept;
  void start_receive(boost::asio::mutable_buffer b, boost::asio::ip::udp::endpoint& sender,
                     boost::asio::any_completion_handler<void(error_code, std::size_t)> h);
  void start_send(boost::asio::const_buffer b, const boost::asio::ip::udp::endpoint& destination,
                  boost::asio::any_completion_handler<void(error_code, std::size_t)> h);
  std::shared_ptr<detail::udp_socket_impl> impl_;
};

}  // namespace baton
