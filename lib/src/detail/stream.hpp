#pragma once
// The internal interface between a baton::connection / baton::listener and the platform that
// drives its socket. Shared code sees only this; backends live in lib/src/win and lib/src/posix.
#include "detail/platform.hpp"

#include <baton/connection.hpp>
#include <baton/ticket.hpp>
#include <baton/transfer_strategy.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>

namespace baton::detail {

using io_handler = boost::asio::any_completion_handler<void(error_code, std::size_t)>;

/// What a socket backend drives: a connected socket, a listening one, or a bound UDP socket.
enum class socket_kind { connection, listener, datagram };

/// What every socket backend does, whatever its kind and attach mode.
class socket_backend {
 public:
  virtual ~socket_backend() = default;
  virtual socket_kind kind() const noexcept = 0;
  virtual boost::asio::any_io_executor get_executor() = 0;
  virtual void cancel() = 0;
  virtual void close() = 0;
  virtual bool is_open() const = 0;
  virtual attach_mode mode() const = 0;
  /// The local address and port (a UDP socket's too: the endpoint type only carries them).
  virtual boost::asio::ip::tcp::endpoint local_endpoint(error_code& ec) const = 0;
  /// The OS handle (fd or SOCKET), still owned by the backend.
  virtual std::uintptr_t native_handle() const = 0;
  /// Detaches the handle from this process's reactor and hands it to the caller (native backends
  /// only; others fail with operation_not_supported and keep it).
  virtual std::uintptr_t release(error_code& ec);
  /// After a rolled-back move another process may still hold a handle to this socket (a target
  /// that took it and stalled before its verdict), so closing ours alone would not end it. With
  /// `on`, close() (and the destructor) shut the socket down first, which the peer sees whoever
  /// else holds it (a listening socket: where the platform can, Linux). Off again before a
  /// handle is closed because the socket moved away (the target owns it then).
  virtual void set_shutdown_on_close(bool on) = 0;
};

/// One connected socket under some attach mode.
class stream_backend : public socket_backend {
 public:
  socket_kind kind() const noexcept final { return socket_kind::connection; }
  virtual void read(boost::asio::mutable_buffer b, io_handler h) = 0;
  virtual void write(boost::asio::const_buffer b, io_handler h) = 0;
  virtual boost::asio::ip::tcp::socket* socket() { return nullptr; }
  virtual boost::asio::ip::tcp::endpoint remote_endpoint(error_code& ec) const = 0;
  virtual void shutdown_send(error_code& ec) = 0;
};

/// One listening socket under some attach mode.
class listener_backend : public socket_backend {
 public:
  socket_kind kind() const noexcept final { return socket_kind::listener; }
  virtual void accept(boost::asio::any_completion_handler<void(error_code, boost::asio::ip::tcp::socket)> h) = 0;
  virtual boost::asio::ip::tcp::acceptor* acceptor() { return nullptr; }
};

/// One bound UDP socket under some attach mode. `from` must stay valid until the handler runs.
class datagram_backend : public socket_backend {
 public:
  socket_kind kind() const noexcept final { return socket_kind::datagram; }
  virtual void receive_from(boost::asio::mutable_buffer b, boost::asio::ip::udp::endpoint& from, io_handler h) = 0;
  virtual void send_to(boost::asio::const_buffer b, const boost::asio::ip::udp::endpoint& to, io_handler h) = 0;
  virtual boost::asio::ip::udp::socket* socket() { return nullptr; }
};

/// The backend of kind `Backend` that `b` is (its kind() says which).
template <class Backend>
std::unique_ptr<Backend> backend_cast(std::unique_ptr<socket_backend> b) noexcept {
  return std::unique_ptr<Backend>(static_cast<Backend*>(b.release()));
}

/// Native backends around an Asio socket or acceptor (all platforms).
std::unique_ptr<stream_backend> make_native_stream(boost::asio::ip::tcp::socket s);
std::unique_ptr<listener_backend> make_native_listener(boost::asio::ip::tcp::acceptor a);
/// A connected socket handle `h` (owned from now on) that joins no reactor until its first I/O:
/// detach (the export of a move) then costs nothing. See accept_detached.
std::unique_ptr<stream_backend> make_detached_stream(const boost::asio::any_io_executor& ex, std::uintptr_t h);
/// Takes one connection from `a`'s backlog without waiting and without registering it with the
/// reactor (for make_detached_stream): its handle, or `ec` = would_block when none waits.
/// Platforms whose accepted sockets must join the reactor (Windows: AcceptEx on the completion
/// port) fail with operation_not_supported; can_accept_detached() says which.
std::uintptr_t accept_detached(boost::asio::ip::tcp::acceptor& a, error_code& ec);
bool can_accept_detached() noexcept;
std::unique_ptr<datagram_backend> make_native_datagram(boost::asio::ip::udp::socket s);
/// A native backend of `kind` around handle `h` (assigned to an Asio socket or acceptor on `ex`;
/// `protocol` names the address family, a UDP socket's too).
/// On failure `h` is left open and still the caller's.
std::unique_ptr<socket_backend> make_native_socket(socket_kind kind, const boost::asio::any_io_executor& ex,
                                                   boost::asio::ip::tcp protocol, std::uintptr_t h, error_code& ec);

/// The source's side of one move in progress. It owns the socket from the export until the
/// target's verdict: the detached handle, or the backend itself where the handle could not be
/// detached (Windows: Wine, pre-8.1, emulated mode), plus whatever must stay alive for the
/// target to take it (the descriptor for pidfd_getfd).
class pending_export {
 public:
  virtual ~pending_export() = default;
  /// The target took it: close the source's handle (never shutting the socket down).
  virtual void commit() = 0;
  /// The target did not: give the socket back, attached to the source's reactor again (the same
  /// kind of backend that was exported). Called at most once, instead of commit().
  virtual std::unique_ptr<socket_backend> rollback(const boost::asio::any_io_executor& ex, error_code& ec) = 0;
  /// After a rollback for `verdict`: the strategy worth one more attempt, if the platform has a
  /// fallback for this failure (Linux: a pidfd_getfd the target could not make, EPERM, is
  /// pushed with SCM_RIGHTS instead). Counted as a strategy fallback when it returns one.
  virtual std::optional<transfer_strategy> fallback(const error_code& verdict);
  /// Makes the handle reachable by the target. Called once the ticket's ack slot is held and
  /// before the ticket enters the ring, so that a failure to publish costs nothing and a handle
  /// that was published names a slot the receiver can check (collect_orphans). Linux's
  /// SCM_RIGHTS push sends its datagram here, waiting through the reactor (never blocking the
  /// thread) for room in the target's queue until `deadline`, then failing with
  /// errc::channel_full. Other methods complete at once (through the executor).
  virtual void async_publish(const boost::asio::any_io_executor& ex, std::chrono::steady_clock::time_point deadline,
                             boost::asio::any_completion_handler<void(error_code)> h);
  /// Whether async_publish has anything to do (Linux: a push). When not, the handle is reachable
  /// as it is and a move skips the call (and the turn of the event loop its completion costs).
  virtual bool publishes() const noexcept { return false; }
};

/// Takes `b` (idle: no operation pending) from the source's reactor and makes a transferable
/// handle for `target_pid` on the channel whose sending transfer endpoint is `ep`, written into
/// t.method / t.payload (t.id and t.ack_slot are set). On success `b` is empty (the pending
/// export owns the socket); on failure `b` is left intact.
std::unique_ptr<pending_export> export_socket(std::unique_ptr<socket_backend>& b, transfer_endpoint& ep,
                                              std::uint32_t target_pid, transfer_strategy how, ticket& t,
                                              error_code& ec);

/// Re-creates in the target the socket of `kind` that `t` names, arriving through the receiving
/// transfer endpoint `ep`, and attaches it to `ex` (attach_socket).
std::unique_ptr<socket_backend> import_socket(socket_kind kind, transfer_endpoint& ep,
                                              const boost::asio::any_io_executor& ex, const ticket& t,
                                              error_code& ec);

/// Attaches a socket handle of `kind` to `ex`: native where possible, emulated otherwise
/// (Windows, a socket still bound to another process's completion port). Takes ownership of
/// `h` (closed on failure).
std::unique_ptr<socket_backend> attach_socket(socket_kind kind, const boost::asio::any_io_executor& ex,
                                              std::uintptr_t h, error_code& ec);

/// A second OS handle to the same listening (or UDP) socket, attached to no reactor: what a
/// generation keeps during a hot restart so that the socket outlives a successor that dies.
std::uintptr_t duplicate_socket_handle(std::uintptr_t h, error_code& ec);
void close_socket_handle(std::uintptr_t h) noexcept;
/// Makes a listener of a handle from duplicate_socket_handle: attach_socket for a listener.
inline std::unique_ptr<listener_backend> adopt_listener(const boost::asio::any_io_executor& ex, std::uintptr_t h,
                                                        error_code& ec) {
  return backend_cast<listener_backend>(attach_socket(socket_kind::listener, ex, h, ec));
}

/// The largest t.payload an export on this platform writes (Linux: pidfd_getfd's 24 bytes;
/// Windows: a WSAPROTOCOL_INFOW), so that a move can check its ticket's size before exporting.
std::size_t largest_transfer_payload() noexcept;

/// Platform counters, read by get_move_stats from any thread.
struct transfer_counters {
  std::atomic<std::uint64_t> fallbacks{0};
  std::atomic<std::uint64_t> refused_pushes{0};  ///< SCM_RIGHTS datagrams dropped (another uid, malformed)
  std::atomic<std::uint64_t> orphans_closed{0};  ///< handles made for us whose tickets never came, closed
  std::atomic<std::uint64_t> push_datagrams{0};  ///< SCM_RIGHTS datagrams sent
  std::atomic<std::uint64_t> pushed{0};          ///< descriptors they carried
};
transfer_counters& counters() noexcept;

}  // namespace baton::detail
