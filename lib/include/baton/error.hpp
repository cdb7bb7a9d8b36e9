#pragma once
/// Baton's one error category: every failure Baton itself detects is a `baton::errc` value in
/// `baton::category()`. OS failures keep their system error codes.

#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>
#include <string>

namespace baton {

/// Errors reported by Baton. Messages say what to do about them.
enum class errc {
  // Names and channels.
  invalid_name = 1,          ///< channel name empty, too long, or with characters outside [A-Za-z0-9._-]
  name_in_use,               ///< create: an object with this name exists (possibly a squatter)
  channel_not_found,         ///< open: no channel with this name
  not_owner,                 ///< open: the object belongs to another user or has loose permissions
  bad_channel_header,        ///< open: magic/version/sizes/token in the header do not check out
  channel_owner_dead,        ///< the receiving process of the channel has exited
  channel_full,              ///< the ring has no room and the send policy is to fail
  channel_corrupted,         ///< the ring's shared state was overwritten with garbage
  record_too_large,          ///< a record does not fit the ring or exceeds the ticket limit
  producer_died,             ///< a sender died between reserve and commit; its record was skipped
  no_free_ack_slot,          ///< too many moves in flight on this channel
  // Ticket decoding.
  ticket_truncated,          ///< fewer bytes than the fixed ticket header
  ticket_bad_magic,          ///< not a Baton ticket
  ticket_bad_version,        ///< ticket format from an incompatible Baton version
  ticket_bad_kind,           ///< unknown ticket kind
  ticket_bad_method,         ///< unknown transfer method
  ticket_bad_length,         ///< section lengths disagree with the size of the ticket
  ticket_too_large,          ///< a section exceeds the configured limit
  ticket_bad_checksum,       ///< CRC-32C mismatch: the ticket was damaged in transit
  ticket_bad_payload,        ///< handle payload has the wrong size for its transfer method
  ticket_wrong_target,       ///< the ticket was made for another process
  // Moves.
  move_rejected,             ///< the target refused the connection (nack)
  move_timeout,              ///< the target did not acknowledge within the timeout
  target_died,               ///< the target exited before acknowledging
  busy,                      ///< the connection has an operation pending that cannot be quiesced
  strategy_unavailable,      ///< the chosen transfer strategy cannot be used here
  non_ifs_provider,          ///< DuplicateHandle refused: the socket's provider is not IFS
  handle_mismatch,           ///< the received handle is not the socket the ticket describes
  not_a_socket,              ///< the handle in the ticket is not a TCP socket
  operation_in_progress,     ///< another operation of this kind is already running
  // Hot restart.
  restart_in_progress,       ///< the service is already handing over to a next generation
  next_generation_died,      ///< the next generation exited before taking over
  next_generation_not_ready, ///< the next generation did not announce itself in time
  service_not_found,         ///< no running generation of this service
  // Balancing.
  session_moved,             ///< the worker handed this session's connection to another process
  no_worker,                 ///< no live worker has joined the dispatcher
  worker_left,               ///< the worker has left its dispatcher (scale-down)
  // Hot restart (continued).
  restart_binary_refused,    ///< a restart request named an executable; the service does not allow it
  // Channels (added later; appended to keep the values above stable).
  producer_stalled,          ///< receiver: a live sender kept a record reserved past the bound; it was skipped
  record_skipped,            ///< sender: this process stalled mid-write and the receiver skipped its record
  channel_truncated,         ///< the channel's shared memory object was truncated by another process
  // Control messages (hot restart, balancing).
  control_message_malformed, ///< a control ticket's text is not a well-formed message (ignored)
  // Hot restart (continued).
  service_stopping,          ///< the service is stopping: close this connection after its last response
  keeper_gone,               ///< the keeper that started this service (BATON_KEEPER) no longer runs
  activated_listener_not_found, ///< socket activation: no listening socket of a requested name was passed
  // The keeper as a Windows service.
  windows_service_unsupported, ///< a Windows service was asked for on another platform
  not_started_as_service,      ///< the Service Control Manager did not start this process
  // UDP sockets.
  socket_moved,                ///< a receive ended because its UDP socket moved to another process
  ticket_bad_datagrams,        ///< a UDP socket's ticket carries queued datagrams that do not parse
};

/// Error codes in Baton's API are Asio's (`boost::system::error_code`), so Baton's handlers
/// compose with Asio's.
using error_code = boost::system::error_code;

/// The category of `baton::errc`. Thread-safe.
const boost::system::error_category& category() noexcept;

inline error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), category()}; }

/// Thrown by the throwing overloads.
using system_error = boost::system::system_error;

}  // namespace baton

template <>
struct boost::system::is_error_code_enum<baton::errc> : std::true_type {};
