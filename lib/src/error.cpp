#include "baton/error.hpp"

namespace baton {
namespace {

class category_impl final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "baton"; }

  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::invalid_name:
        return "invalid channel name: use 1-64 characters from A-Z a-z 0-9 . _ -";
      case errc::name_in_use:
        return "a channel (or another object) with this name already exists, and its owner lives or it "
               "belongs to another user (a squatter?): pick another name, or remove it if it is stale; "
               "channel::describe_foreign_objects (restart_report::detail) names another user's objects";
      case errc::channel_not_found:
        return "no channel with this name: start the receiving process first";
      case errc::not_owner:
        return "the channel's shared objects belong to another user or are not private to their owner; "
               "refusing to use them";
      case errc::bad_channel_header:
        return "the channel's header is not a valid Baton header (wrong magic, version, sizes or token); "
               "the name may be squatted or the receiver runs an incompatible Baton";
      case errc::channel_owner_dead:
        return "the process that created the channel has exited";
      case errc::channel_full:
        return "the channel's ring is full; retry later or raise channel_options::ring_bytes";
      case errc::channel_corrupted:
        return "the channel's shared memory was overwritten with invalid data; records in flight were discarded";
      case errc::record_too_large:
        return "the record is larger than the channel allows; raise channel_options::ring_bytes or max_ticket_bytes";
      case errc::producer_died:
        return "a sender died while writing a record; the record was skipped";
      case errc::no_free_ack_slot:
        return "too many moves in flight on this channel; wait for some to finish or raise channel_options::ack_slots";
      case errc::ticket_truncated:
        return "ticket is shorter than its fixed header";
      case errc::ticket_bad_magic:
        return "not a Baton ticket (bad magic)";
      case errc::ticket_bad_version:
        return "ticket format version is not supported by this Baton; upgrade sender and receiver together";
      case errc::ticket_bad_kind:
        return "ticket kind is unknown";
      case errc::ticket_bad_method:
        return "ticket transfer method is unknown";
      case errc::ticket_bad_length:
        return "ticket section lengths do not add up to the ticket size";
      case errc::ticket_too_large:
        return "a ticket section exceeds the configured size limit (ticket_limits)";
      case errc::ticket_bad_checksum:
        return "ticket checksum (CRC-32C) mismatch: the ticket was damaged";
      case errc::ticket_bad_payload:
        return "ticket handle payload has the wrong size for its transfer method";
      case errc::ticket_wrong_target:
        return "ticket was made for another target process";
      case errc::move_rejected:
        return "the target refused the move; the connection stays with the source";
      case errc::move_timeout:
        return "the target did not acknowledge in time; the connection stays with the source "
               "(raise move_options::timeout if the target is slow)";
      case errc::target_died:
        return "the target exited before acknowledging; the connection stays with the source";
      case errc::busy:
        return "the connection has an operation in progress; move it at a safe point";
      case errc::strategy_unavailable:
        return "this transfer strategy is not available on this platform or for this socket; use the default";
      case errc::non_ifs_provider:
        return "the socket's Winsock provider is not IFS (a layered service provider is installed); "
               "DuplicateHandle is unsafe, use the wsa_duplicate strategy";
      case errc::handle_mismatch:
        return "the received descriptor is not the socket the ticket describes (reused descriptor?)";
      case errc::not_a_socket:
        return "the transferred handle is not a TCP socket";
      case errc::operation_in_progress:
        return "an operation of this kind is already in progress";
      case errc::restart_in_progress:
        return "a restart of this service is already in progress; wait for it to finish, then retry";
      case errc::next_generation_died:
        return "the next generation exited before it had taken over; the running generation keeps "
               "serving everything (see the new binary's output for why it exited)";
      case errc::next_generation_not_ready:
        return "the next generation did not announce itself within restart_options::ready_timeout; the "
               "running generation keeps serving (does the new binary call service::async_start?)";
      case errc::service_not_found:
        return "no running generation of this service: check the name, or start the service first";
      case errc::session_moved:
        return "the connection was handed to another worker process; stop using this session";
      case errc::no_worker:
        return "no live worker has joined the dispatcher; start workers (or wait for them to join)";
      case errc::worker_left:
        return "the worker left its dispatcher and handed its connections to the other workers";
      case errc::restart_binary_refused:
        return "the service does not accept a restart request that names an executable; restart without "
               "--binary (the service runs restart_options::next_binary), or set "
               "restart_options::allow_restart_binary in the service";
      case errc::producer_stalled:
        return "a sender kept a record reserved for longer than the bound (2 s) while alive (stopped, "
               "debugged, or a recycled pid); the record was skipped so that other senders go on";
      case errc::record_skipped:
        return "this sender stalled between reserving and committing a record (stopped or debugged) "
               "and the receiver skipped it; the ticket was not delivered, send it again";
      case errc::channel_truncated:
        return "the channel's shared memory was truncated (or zeroed) by another process; its size was "
               "restored and the ring reset, tickets in flight were lost and senders should resend";
      case errc::control_message_malformed:
        return "a control ticket's text is not a well-formed message (a line without '=', an empty or "
               "repeated key, or no op): it was ignored; sender and receiver may be different Baton builds";
    }
    return "unknown baton error";
  }
};

}  // namespace

const boost::system::error_category& category() noexcept {
  static const category_impl instance;
  return instance;
}

}  // namespace baton
