#include "baton/error.hpp"

namespace baton {
namespace {

// The message of each of Baton's errors: what happened, and what to do about it.
struct message_entry {
  errc code;
  const char* text;
};
constexpr message_entry messages[] = {
    {errc::invalid_name,
     "invalid channel name: use 1-64 characters from A-Z a-z 0-9 . _ -"},
    {errc::name_in_use,
     "a channel (or another object) with this name already exists, and its owner lives or it "
     "belongs to another user (a squatter?): pick another name, or remove it if it is stale; "
     "channel::describe_foreign_objects (restart_report::detail) names another user's objects"},
    {errc::channel_not_found,
     "no channel with this name: start the receiving process first"},
    {errc::not_owner,
     "the channel's shared objects belong to another user or are not private to their owner; "
     "refusing to use them"},
    {errc::bad_channel_header,
     "the channel's header is not a valid Baton header (wrong magic, version, sizes or token); "
     "the name may be squatted or the receiver runs an incompatible Baton"},
    {errc::channel_owner_dead,
     "the process that created the channel has exited"},
    {errc::channel_full,
     "the channel's ring is full; retry later or raise channel_options::ring_bytes"},
    {errc::channel_corrupted,
     "the channel's shared memory was overwritten with invalid data; records in flight were discarded"},
    {errc::record_too_large,
     "the record is larger than the channel allows; raise channel_options::ring_bytes or max_ticket_bytes"},
    {errc::producer_died,
     "a sender died while writing a record; the record was skipped"},
    {errc::no_free_ack_slot,
     "too many moves in flight on this channel; wait for some to finish or raise channel_options::ack_slots"},
    {errc::ticket_truncated,
     "ticket is shorter than its fixed header"},
    {errc::ticket_bad_magic,
     "not a Baton ticket (bad magic)"},
    {errc::ticket_bad_version,
     "ticket format version is not supported by this Baton; upgrade sender and receiver together"},
    {errc::ticket_bad_kind,
     "ticket kind is unknown"},
    {errc::ticket_bad_method,
     "ticket transfer method is unknown"},
    {errc::ticket_bad_length,
     "ticket section lengths do not add up to the ticket size"},
    {errc::ticket_too_large,
     "a ticket section exceeds the configured size limit (ticket_limits)"},
    {errc::ticket_bad_checksum,
     "ticket checksum (CRC-32C) mismatch: the ticket was damaged"},
    {errc::ticket_bad_payload,
     "ticket handle payload has the wrong size for its transfer method"},
    {errc::ticket_wrong_target,
     "ticket was made for another target process"},
    {errc::move_rejected,
     "the target refused the move; the connection stays with the source"},
    {errc::move_timeout,
     "the target did not acknowledge in time; the connection stays with the source "
     "(raise move_options::timeout if the target is slow)"},
    {errc::target_died,
     "the target exited before acknowledging; the connection stays with the source"},
    {errc::busy,
     "the connection has an operation in progress; move it at a safe point"},
    {errc::strategy_unavailable,
     "this transfer strategy is not available on this platform or for this socket; use the default"},
    {errc::non_ifs_provider,
     "the socket's Winsock provider is not IFS (a layered service provider is installed); "
     "DuplicateHandle is unsafe, use the wsa_duplicate strategy"},
    {errc::handle_mismatch,
     "the received descriptor is not the socket the ticket describes (reused descriptor?)"},
    {errc::not_a_socket,
     "the transferred handle is not a TCP socket"},
    {errc::operation_in_progress,
     "an operation of this kind is already in progress"},
    {errc::restart_in_progress,
     "a restart of this service is already in progress; wait for it to finish, then retry"},
    {errc::next_generation_died,
     "the next generation exited before it had taken over; the running generation keeps "
     "serving what it still holds, and connections already moved ended with the next generation "
     "(the restart report counts them; see the new binary's output for why it exited)"},
    {errc::next_generation_not_ready,
     "the next generation did not announce itself within restart_options::ready_timeout; the "
     "running generation keeps serving (does the new binary call service::async_start?)"},
    {errc::service_not_found,
     "no running generation of this service: check the name, or start the service first"},
    {errc::session_moved,
     "the connection was handed to another worker process; stop using this session"},
    {errc::no_worker,
     "no live worker has joined the dispatcher; start workers (or wait for them to join)"},
    {errc::worker_left,
     "the worker left its dispatcher and handed its connections to the other workers"},
    {errc::restart_binary_refused,
     "the service does not accept a restart request that names an executable; restart without "
     "--binary (the service runs restart_options::next_binary), or set "
     "restart_options::allow_restart_binary in the service"},
    {errc::producer_stalled,
     "a sender kept a record reserved for longer than the bound (2 s) while alive (stopped, "
     "debugged, or a recycled pid); the record was skipped so that other senders go on"},
    {errc::record_skipped,
     "this sender stalled between reserving and committing a record (stopped or debugged) "
     "and the receiver skipped it; the ticket was not delivered, send it again"},
    {errc::channel_truncated,
     "the channel's shared memory was truncated (or zeroed) by another process; its size was "
     "restored and the ring reset, tickets in flight were lost and senders should resend"},
    {errc::service_stopping,
     "the service is stopping gracefully: close this connection (its last response is written) and take no "
     "new requests"},
    {errc::keeper_gone,
     "the keeper (baton-run) that started this service no longer runs, so it cannot start the next "
     "generation; the service keeps serving: stop it and start it again under a keeper"},
    {errc::activated_listener_not_found,
     "socket activation: no listening socket of the requested name was passed to the service (check "
     "FileDescriptorName= in the .socket unit, or the names the service asks for)"},
    {errc::windows_service_unsupported,
     "Windows services exist only on Windows; on Linux run baton-run under systemd (Type=notify, "
     "see docs/restart.md) or as a container's PID 1"},
    {errc::not_started_as_service,
     "this process was not started by the Service Control Manager: register it with sc create NAME "
     "binPath= \"<path>\\baton-run.exe --service NAME -- PROGRAM ARGS\" and start it with sc start NAME "
     "(from a console, run baton-run without --service)"},
    {errc::socket_moved,
     "this UDP socket moved to another process (the next generation, or the channel's owner), which "
     "serves it now with the datagrams that were queued: stop serving it here"},
    {errc::ticket_bad_datagrams,
     "the datagrams queued in a UDP socket's ticket are malformed (a record runs past the section, or "
     "an address family is unknown); the move was refused and the sender kept the socket"},
    {errc::control_message_malformed,
     "a control ticket's text is not a well-formed message (a line without '=', an empty or "
     "repeated key, or no op): it was ignored; sender and receiver may be different Baton builds"},
};


class category_impl final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "baton"; }

  std::string message(int ev) const override {
    for (const auto& m : messages)
      if (static_cast<int>(m.code) == ev) return m.text;
    return "unknown baton error";
  }
};

}  // namespace

const boost::system::error_category& category() noexcept {
  static const category_impl instance;
  return instance;
}

}  // namespace baton
