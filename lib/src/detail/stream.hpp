#pragma once
// The internal interface between a baton::connection / baton::listener and the platform that
// drives its socket. Shared code sees only this; backends live in lib/src/win and lib/src/posix.
#include <baton/connection.hpp>
#include <baton/move.hpp>
#include <baton/ticket.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>

namespace baton::detail {

using io_handler = boost::asio::any_completion_handler<void(error_code, std::size_t)>;

/// One connected socket under some attach mode.
class stream_backend {
 public:
  virtual ~stream_backend() = default;
  virtual void read(boost::asio::mutable_buffer b, io_handler h) = 0;
  virtual void write(boost::asio::const_buffer b, io_handler h) = 0;
  virtual void cancel() = 0;
  virtual void close() = 0;
  virtual bool is_open() const = 0;
  virtual attach_mode mode() const = 0;
  virtual boost::asio::ip::tcp::socket* socket() { return nullptr; }
  virtual boost::asio::ip::tcp::endpoint remote_endpoint(error_code& ec) const = 0;
  virtual boost::asio::ip::tcp::endpoint local_endpoint(error_code& ec) const = 0;
  virtual void shutdown_send(error_code& ec) = 0;
  /// The OS handle (fd or SOCKET), still owned by the backend.
  virtual std::uintptr_t native_handle() const = 0;
  /// After a rolled-back move another process may still hold a handle to this socket (a target
  /// that took it and stalled before its verdict), so closing ours alone would not end the
  /// connection. With `on`, close() (and the destructor) shut the socket down first, which the
  /// peer sees whoever else holds it. Off again before a handle is closed because the socket
  /// moved away (the target owns it then).
  virtual void set_shutdown_on_close(bool on) = 0;
};

/// A native backend around an Asio socket (all platforms).
std::unique_ptr<stream_backend> make_native_stream(boost::asio::ip::tcp::socket s);

/// The source's side of one move in progress: holds what must stay alive until the target's
/// verdict (the descriptor for pidfd_getfd, the source handle on Windows).
class pending_export {
 public:
  virtual ~pending_export() = default;
  /// The target took it: close the source's handle.
  virtual void commit() = 0;
  /// The target did not: give the socket back, attached to the source's reactor again.
  virtual std::unique_ptr<stream_backend> rollback_stream(const boost::asio::any_io_executor& ex, error_code& ec) = 0;
  virtual std::unique_ptr<class listener_backend> rollback_listener(const boost::asio::any_io_executor& ex,
                                                                    error_code& ec) = 0;
  /// Makes the handle reachable by the target. Called once the ticket's ack slot is held and
  /// before the ticket enters the ring, so that a failure to publish costs nothing and a handle
  /// that was published names a slot the receiver can check (collect_orphan_transfers). Linux's
  /// SCM_RIGHTS push sends its datagram here, waiting through the reactor (never blocking the
  /// thread) for room in the target's queue until `deadline`, then failing with
  /// errc::channel_full. Other methods complete at once (through the executor).
  virtual void async_publish(const boost::asio::any_io_executor& ex, std::chrono::steady_clock::time_point deadline,
                             boost::asio::any_completion_handler<void(error_code)> h);
};

/// Detaches `s` (idle: no operation pending) from the source's reactor and makes a transferable
/// handle for `target_pid`, written into t.method / t.payload. On failure `s` is left intact.
std::unique_ptr<pending_export> export_stream(std::unique_ptr<stream_backend>& s, std::uint32_t target_pid,
                                              transfer_strategy how, const std::string& channel_name, ticket& t,
                                              error_code& ec);

/// Re-creates the socket in the target and attaches it to `ex` (native where possible,
/// emulated otherwise).
std::unique_ptr<stream_backend> import_stream(const boost::asio::any_io_executor& ex, const ticket& t,
                                              const std::string& channel_name, error_code& ec);

/// Listening sockets.
class listener_backend {
 public:
  virtual ~listener_backend() = default;
  virtual void accept(boost::asio::any_completion_handler<void(error_code, boost::asio::ip::tcp::socket)> h) = 0;
  virtual void cancel() = 0;
  virtual void close() = 0;
  virtual bool is_open() const = 0;
  virtual attach_mode mode() const = 0;
  virtual boost::asio::ip::tcp::endpoint local_endpoint(error_code& ec) const = 0;
  virtual boost::asio::ip::tcp::acceptor* acceptor() { return nullptr; }
  virtual std::uintptr_t native_handle() const = 0;
  /// As for streams: after a rolled-back move, close() stops the socket listening in every
  /// process that holds it (where the platform can: Linux).
  virtual void set_shutdown_on_close(bool on) = 0;
};
std::unique_ptr<listener_backend> make_native_listener(boost::asio::ip::tcp::acceptor a);
std::unique_ptr<pending_export> export_listener(std::unique_ptr<listener_backend>& l, std::uint32_t target_pid,
                                                transfer_strategy how, const std::string& channel_name, ticket& t,
                                                error_code& ec);
std::unique_ptr<listener_backend> import_listener(const boost::asio::any_io_executor& ex, const ticket& t,
                                                  const std::string& channel_name, error_code& ec);

/// A second OS handle to the same listening socket, attached to no reactor: what a generation
/// keeps during a hot restart so that the socket outlives a successor that dies.
std::uintptr_t duplicate_socket_handle(std::uintptr_t h, error_code& ec);
void close_socket_handle(std::uintptr_t h) noexcept;
/// Makes a listener of a handle from duplicate_socket_handle (native where possible, emulated
/// otherwise). Takes ownership of `h` (closed on failure).
std::unique_ptr<listener_backend> adopt_listener(const boost::asio::any_io_executor& ex, std::uintptr_t h,
                                                 error_code& ec);

/// The largest t.payload an export on this platform writes (Linux: pidfd_getfd's 24 bytes;
/// Windows: a WSAPROTOCOL_INFOW), so that a move can check its ticket's size before exporting.
std::size_t largest_transfer_payload() noexcept;

/// Platform counters, read by get_move_stats from any thread.
struct transfer_counters {
  std::atomic<std::uint64_t> fallbacks{0};
  std::atomic<std::uint64_t> refused_pushes{0};  ///< SCM_RIGHTS datagrams dropped (another uid, malformed)
  std::atomic<std::uint64_t> orphans_closed{0};  ///< handles made for us whose tickets never came, closed
};
transfer_counters& counters() noexcept;

}  // namespace baton::detail
