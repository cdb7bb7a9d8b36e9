#pragma once
/// A movable TCP connection: the socket, the bytes already read from the kernel but not yet
/// consumed by the application (delivered first), and an opaque application state that travels
/// with it. It models Asio's AsyncReadStream and AsyncWriteStream, so asio::async_read,
/// async_write, Beast and coroutines work on it unchanged in every attach mode.
///
/// Thread safety: like an Asio socket — distinct objects are independent; one object must be
/// used from one strand, with at most one read and one write outstanding.

#include <baton/error.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <cstddef>
#include <memory>
#include <vector>

namespace baton {

/// How a connection is driven by its io_context.
enum class attach_mode {
  native,    ///< the socket is associated with the reactor (IOCP on Windows, epoll on Linux)
  emulated,  ///< Windows: the socket is still bound to another process's completion port; I/O is
             ///< overlapped with low-bit events awaited through the reactor ("emulated IOCP")
};

namespace detail {
struct connection_impl;
struct connection_access;
}

class connection {
 public:
  using executor_type = boost::asio::any_io_executor;
  using lowest_layer_type = connection;

  connection() noexcept;
  /// Wraps a connected socket. `unread` is delivered before anything read from the socket.
  explicit connection(boost::asio::ip::tcp::socket socket, std::vector<std::byte> unread = {},
                      std::vector<std::byte> state = {});
  connection(connection&&) noexcept;
  connection& operator=(connection&&) noexcept;
  ~connection();

  executor_type get_executor() const;
  lowest_layer_type& lowest_layer() noexcept { return *this; }
  bool is_open() const noexcept;
  attach_mode mode() const noexcept;
  /// The application state that travels with the connection.
  std::vector<std::byte>& state() noexcept;
  const std::vector<std::byte>& state() const noexcept;
  /// Bytes held for delivery before the socket's own (after a move, or after a quiesce).
  std::size_t unread_size() const noexcept;
  /// Puts bytes back in front of the stream (e.g. a dispatcher that peeked at a request line).
  void push_front_unread(const void* data, std::size_t n);
  /// The socket, in native mode; nullptr in emulated mode.
  boost::asio::ip::tcp::socket* socket() noexcept;
  /// The OS handle (SOCKET or fd), still owned by the connection.
  std::uintptr_t native_handle() const noexcept;
  boost::asio::ip::tcp::endpoint remote_endpoint(error_code& ec) const;
  boost::asio::ip::tcp::endpoint local_endpoint(error_code& ec) const;
  /// Cancels outstanding operations (they complete with operation_aborted).
  void cancel();
  void shutdown_send(error_code& ec);
  void close();

  /// Reads some bytes: void(error_code, std::size_t). Unread bytes come first.
  template <class MutableBufferSequence, class Token>
  auto async_read_some(const MutableBufferSequence& buffers, Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto h, boost::asio::mutable_buffer b) { start_read(b, std::move(h)); }, token,
        first_buffer<boost::asio::mutable_buffer>(buffers));
  }

  /// Writes some bytes: void(error_code, std::size_t). A sequence of several small buffers (an
  /// HTTP header and body, say) is gathered into one write, as a socket's writev would.
  template <class ConstBufferSequence, class Token>
  auto async_write_some(const ConstBufferSequence& buffers, Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto h, boost::asio::const_buffer b) { start_write(b, std::move(h)); }, token,
        gather(buffers));
  }

 private:
  friend struct detail::connection_access;
  explicit connection(std::shared_ptr<detail::connection_impl> impl) noexcept;

  template <class Buffer, class Seq>
  static Buffer first_buffer(const Seq& seq) {
    auto it = boost::asio::buffer_sequence_begin(seq), end = boost::asio::buffer_sequence_end(seq);
    for (; it != end; ++it) {
      Buffer b(*it);
      if (b.size() != 0) return b;
    }
    return Buffer();
  }
  static constexpr std::size_t max_gather = 64 * 1024;
  template <class Seq>
  boost::asio::const_buffer gather(const Seq& seq) {
    std::size_t parts = 0, total = 0;
    for (auto it = boost::asio::buffer_sequence_begin(seq), end = boost::asio::buffer_sequence_end(seq); it != end;
         ++it) {
      const boost::asio::const_buffer b(*it);
      if (b.size() == 0) continue;
      ++parts;
      total += b.size();
    }
    if (parts < 2 || total > max_gather) return first_buffer<boost::asio::const_buffer>(seq);
    const auto scratch = write_scratch(total);
    return boost::asio::buffer(scratch.data(), boost::asio::buffer_copy(scratch, seq));
  }
  /// Connection-owned storage for a gathered write (one write is outstanding at a time).
  boost::asio::mutable_buffer write_scratch(std::size_t n);
  void start_read(boost::asio::mutable_buffer b,
                  boost::asio::any_completion_handler<void(error_code, std::size_t)> h);
  void start_write(boost::asio::const_buffer b,
                   boost::asio::any_completion_handler<void(error_code, std::size_t)> h);

  std::shared_ptr<detail::connection_impl> impl_;
};

}  // namespace baton
