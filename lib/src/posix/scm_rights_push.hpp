#pragma once
// The SCM_RIGHTS push of a descriptor over a channel's Unix datagram socket (Linux), and the
// channel's transfer endpoint that receives such pushes. See scm_rights_push.cpp.
#include "detail/platform.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

struct msghdr;

namespace baton::detail {

/// An errno value as an error_code (the Linux backend's files share it).
inline error_code sys_error(int e) { return {e, boost::system::system_category()}; }

/// The most descriptors one SCM_RIGHTS message carries (the kernel's SCM_MAX_FD).
inline constexpr std::size_t max_push_fds = 253;

/// Sends `data` with the `nfds` descriptors `fds` as SCM_RIGHTS on the datagram socket `s` (to
/// `dest`, or to its connected peer if null), once: -1 with errno set on failure.
long send_with_fds(int s, const int* fds, std::size_t nfds, const void* data, std::size_t n,
                   const void* dest = nullptr, std::size_t dest_len = 0, int flags = 0) noexcept;
/// The same with one descriptor. Tests use it to forge pushes.
inline long send_with_fd(int s, int fd, const void* data, std::size_t n, const void* dest = nullptr,
                         std::size_t dest_len = 0, int flags = 0) noexcept {
  return send_with_fds(s, &fd, 1, data, n, dest, dest_len, flags);
}

/// The path of channel `channel_name`'s push socket (/dev/shm/baton.NAME.sock).
std::string push_socket_path(const std::string& channel_name);

/// A sending side's pushes to one receiving endpoint. It keeps one socket connected to the
/// endpoint for the channel's life (refusing one that is not this user's: errc::not_owner), and
/// sends the pushes made in one turn of the event loop together, up to max_push_fds descriptors
/// per datagram, each with its ticket id and ack slot: a hand-over of thousands of connections
/// takes one sendmsg per 253 instead of five system calls per connection.
class push_sender {
 public:
  virtual ~push_sender() = default;
  /// Pushes descriptor `fd` for ticket `id` (ack slot `slot`); `fd` stays the caller's and must
  /// stay open until `h` runs. While the target's queue is full (a stalled receiver: it holds
  /// only net.unix.max_dgram_qlen datagrams) waits for room through the reactor, never on the
  /// thread, until `deadline`, then fails with errc::channel_full. Completes through `ex`.
  virtual void async_push(const boost::asio::any_io_executor& ex, int fd, const ticket_id& id, std::uint32_t slot,
                          std::chrono::steady_clock::time_point deadline,
                          boost::asio::any_completion_handler<void(error_code)> h) = 0;
};

/// The Linux transfer endpoint: where a channel's pushes go (both sides), and on the receiving
/// side the bound socket and the descriptors that arrived before their tickets.
class fd_endpoint : public transfer_endpoint {
 public:
  /// The socket pushes go to.
  virtual const std::string& path() const noexcept = 0;
  /// Sending side: what sends this channel's pushes (shared with the moves that use it).
  virtual std::shared_ptr<push_sender> sender() = 0;
  /// Receiving side: takes the descriptor pushed for ticket `id` (draining the datagrams queued
  /// before it); errc::handle_mismatch if none came, errc::strategy_unavailable on a sending side.
  virtual int take_pushed(const ticket_id& id, error_code& ec) = 0;
};

}  // namespace baton::detail
