#pragma once
/// A channel is one named receiving end in shared memory that any number of senders of the same
/// user can open: a ring of tickets, a doorbell that wakes the receiver through its reactor, and
/// an ack table through which a sender learns whether the receiver took a ticket.
///
/// Thread safety: a channel object is not thread-safe; use it from one strand. Different channel
/// objects (in one or many processes) may be used concurrently.

#include <baton/error.hpp>
#include <baton/ticket.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>
#include <string_view>

namespace baton {
namespace detail {
struct channel_access;
}

/// What a sender does when the ring is full.
enum class full_policy {
  wait,  ///< wait for room, up to channel_options::send_timeout, then fail with channel_full
  fail,  ///< fail at once with channel_full
};

/// Options of a channel. The receiver's choice of sizes is what senders see.
struct channel_options {
  std::size_t ring_bytes = 4u << 20;   ///< record area; rounded up to a power of two (>= 4 KiB)
  std::uint32_t ack_slots = 4096;      ///< moves that may await an ack at once
  ticket_limits limits{};              ///< largest ticket accepted
  full_policy on_full = full_policy::wait;
  std::chrono::milliseconds send_timeout{5000};  ///< bound on waiting for room (policy wait)
  bool global_namespace = false;       ///< Windows: create in Global\ instead of Local\ (needs privilege)
  /// Sender: how long an acked send re-checks its slot through the executor before it sleeps on a
  /// timer. Short moves see their verdict sooner; 0 saves the CPU (a dispatcher with many moves
  /// in flight, whose verdicts nobody waits for).
  std::chrono::microseconds ack_spin{200};
  /// Sender: after the spin, the slot is re-checked on a timer starting at `ack_poll_first` and
  /// doubling up to `ack_poll_max`. Equal values poll at a fixed interval, which keeps the timer
  /// queue cheap when many acked sends are in flight.
  std::chrono::microseconds ack_poll_first{5};
  std::chrono::microseconds ack_poll_max{500};
};

/// Counters of one channel as seen from this process.
struct channel_stats {
  std::uint64_t tickets_sent = 0;
  std::uint64_t tickets_received = 0;
  std::uint64_t bad_tickets = 0;       ///< tickets (or batch records) that failed to decode, each reported once
  /// Sender: records that carried several moves' tickets (a burst published in one turn of the
  /// event loop); receiver: such records received. Their tickets count one by one above.
  std::uint64_t batches_sent = 0, batches_received = 0;
  std::uint64_t producer_deaths = 0;   ///< records skipped because their sender died mid-write
  std::uint64_t corruptions = 0;       ///< times garbage in shared memory was found and healed
  std::uint64_t doorbells_rung = 0;    ///< wake-ups by senders (all senders); lower = more coalescing
  std::uint64_t full_waits = 0;        ///< sends that had to wait for room
  std::uint64_t stalled_records = 0;   ///< records skipped because a live sender kept them reserved past the bound
  std::uint64_t truncations = 0;       ///< times this process found the channel's shared memory truncated
};

class channel {
 public:
  using executor_type = boost::asio::any_io_executor;

  /// Creates the receiving end. Fails with errc::name_in_use if any object of the name exists
  /// (never reuses it: it might be a squatter's), errc::invalid_name for a bad name.
  static channel create(const executor_type& ex, std::string_view name, const channel_options& opts,
                        error_code& ec);
  static channel create(const executor_type& ex, std::string_view name, const channel_options& opts = {});

  /// Opens a sending end. Validates the header and the objects' owner (errc::not_owner,
  /// errc::bad_channel_header, errc::channel_not_found, errc::channel_owner_dead).
  static channel open(const executor_type& ex, std::string_view name, const channel_options& opts,
                      error_code& ec);
  static channel open(const executor_type& ex, std::string_view name, const channel_options& opts = {});

  /// Removes the names of a channel whose receiver died without cleaning up (POSIX; no-op on
  /// Windows, where names vanish with their last handle). Refuses (errc::name_in_use) a channel
  /// whose owner lives or that is being created, and leaves another user's objects alone
  /// (errc::not_owner). Removes only objects it verified, never a newer channel of the same name.
  static void remove_stale(std::string_view name, error_code& ec);

  /// Which of the objects of channel `name` belong to another user (a squatter, or another user's
  /// service of the same name): their paths and owner uids, and what to do about them. Empty if
  /// none does. Linux only: empty on Windows. Thread-safe.
  static std::string describe_foreign_objects(std::string_view name);

  /// True for 1-64 characters from [A-Za-z0-9._-], not starting with '.'.
  static bool valid_name(std::string_view name) noexcept;

  channel() noexcept;
  channel(channel&&) noexcept;
  channel& operator=(channel&&) noexcept;
  /// Cancels pending operations; the receiver removes the channel's names.
  ~channel();

  executor_type get_executor() const;
  bool is_open() const noexcept;
  bool is_receiver() const noexcept;
  const std::string& name() const noexcept;
  /// Pid of the receiving process (the only process tickets on this channel are for).
  std::uint32_t owner_pid() const noexcept;
  /// Moves that may await the receiver's verdict at once (the receiver's channel_options::ack_slots,
  /// read from the channel's header); 0 when closed. A sender with more moves to make keeps at
  /// most this many in flight and queues the rest.
  std::uint32_t ack_slots() const noexcept;
  channel_stats stats() const;
  /// Cancels pending operations (they complete with operation_aborted).
  void close();

  /// Sender: enqueues `t` (sender_pid and target_pid are filled in). Completes once the ticket
  /// is in the ring. Signature: void(error_code).
  template <class Token>
  auto async_send(ticket t, Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code)>(
        [this](auto h, ticket t) { do_send(std::move(t), false, {}, std::move(h)); }, token, std::move(t));
  }

  /// Sender: enqueues `tickets` in order, several to a ring record (the batch records moves
  /// share), with at most one doorbell per record: for bursts of control tickets. Completes once
  /// every ticket is in the ring, or at the first that cannot be enqueued (not encodable, too
  /// large, or the ring stays full past send_timeout under full_policy::wait); `sent` tickets,
  /// the ones before it, are in the ring. The receiver takes them one at a time as always.
  /// Signature: void(error_code, std::size_t sent).
  template <class Token>
  auto async_send_many(std::vector<ticket> tickets, Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto h, std::vector<ticket> ts) { do_send_many(std::move(ts), std::move(h)); }, token,
        std::move(tickets));
  }

  /// Sender: enqueues `t` with an ack slot and completes with the receiver's verdict: success
  /// (accepted), errc::move_rejected, errc::move_timeout after `timeout` (the ticket is then
  /// void: a late receiver cannot accept it), errc::target_died. Signature: void(error_code).
  template <class Token>
  auto async_transact(ticket t, std::chrono::milliseconds timeout, Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code)>(
        [this, timeout](auto h, ticket t) { do_send(std::move(t), true, timeout, std::move(h)); }, token,
        std::move(t));
  }

  /// Receiver: the next ticket. A record that cannot be decoded, a record skipped because its
  /// sender died, or healed garbage completes with that error (and no ticket); call again.
  /// Signature: void(error_code, ticket).
  template <class Token>
  auto async_receive(Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code, ticket)>(
        [this](auto h) { do_receive(std::move(h)); }, token);
  }

  /// Receiver, non-blocking: true if a ticket (or an error, in ec) was taken.
  bool try_receive(ticket& out, error_code& ec);

  /// Receiver: the verdict on a ticket received with an ack slot. Returns false if the sender
  /// already gave up (timeout) or the ticket's slot is not its own: the receiver must then not
  /// keep what the ticket carried.
  bool acknowledge(const ticket& t, bool accept) noexcept;

  struct impl;

 private:
  friend struct detail::channel_access;
  /// `slot_held`: t.ack_slot was claimed beforehand (detail::acquire_ack_slot); it is released
  /// when the send completes, whatever the outcome.
  void do_send(ticket t, bool with_ack, std::chrono::milliseconds timeout,
               boost::asio::any_completion_handler<void(error_code)> h, bool slot_held = false);
  void do_send_many(std::vector<ticket> ts, boost::asio::any_completion_handler<void(error_code, std::size_t)> h);
  void do_receive(boost::asio::any_completion_handler<void(error_code, ticket)> h);
  std::shared_ptr<impl> impl_;
};

/// Ack slot value of a ticket sent without an ack.
inline constexpr std::uint32_t no_ack_slot = 0xFFFFFFFFu;

}  // namespace baton
