#pragma once
// The SCM_RIGHTS push of a descriptor over a channel's Unix datagram socket (Linux), and the
// channel's transfer endpoint that receives such pushes. See scm_rights_push.cpp.
#include "detail/platform.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

struct msghdr;

namespace baton::detail {

/// An errno value as an error_code (the Linux backend's files share it).
inline error_code sys_error(int e) { return {e, boost::system::system_category()}; }

/// Sends `data` with descriptor `fd` as SCM_RIGHTS on the datagram socket `s` (to `dest`, or to
/// its connected peer if null), once: -1 with errno set on failure. Tests use it to forge pushes.
long send_with_fd(int s, int fd, const void* data, std::size_t n, const void* dest = nullptr,
                  std::size_t dest_len = 0, int flags = 0) noexcept;

/// The path of channel `channel_name`'s push socket (/dev/shm/baton.NAME.sock).
std::string push_socket_path(const std::string& channel_name);

/// Sends the datagram of ticket `id` (ack slot `slot`) with descriptor `fd` to the receiving
/// endpoint at `path`, refusing a socket that is not this user's (errc::not_owner). While the
/// target's queue is full (a stalled receiver: it holds only net.unix.max_dgram_qlen datagrams)
/// waits for room through the reactor, never on the thread, until `deadline`, then fails with
/// errc::channel_full. Completes through `ex`.
void async_push_fd(const boost::asio::any_io_executor& ex, const std::string& path, int fd, const ticket_id& id,
                   std::uint32_t slot, std::chrono::steady_clock::time_point deadline,
                   boost::asio::any_completion_handler<void(error_code)> h);

/// The Linux transfer endpoint: where a channel's pushes go (both sides), and on the receiving
/// side the bound socket and the descriptors that arrived before their tickets.
class fd_endpoint : public transfer_endpoint {
 public:
  /// The socket pushes go to.
  virtual const std::string& path() const noexcept = 0;
  /// Receiving side: takes the descriptor pushed for ticket `id` (draining the datagrams queued
  /// before it); errc::handle_mismatch if none came, errc::strategy_unavailable on a sending side.
  virtual int take_pushed(const ticket_id& id, error_code& ec) = 0;
};

}  // namespace baton::detail
