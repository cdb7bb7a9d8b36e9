#pragma once
// The inside of baton::channel, shared with the move layer and with white-box tests.
#include "baton/channel.hpp"
#include "detail/platform.hpp"
#include "ring.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/interprocess/mapped_region.hpp>

#include <algorithm>
#include <optional>

namespace baton {

namespace detail {
struct ack_waitlist;  // channel_send.cpp
struct outbox;        // channel_send.cpp
}

struct channel::impl : std::enable_shared_from_this<channel::impl> {
  executor_type ex;
  std::string name;
  channel_options opts;
  bool receiver = false;
  bool closed = false;
  boost::interprocess::mapped_region region;
  detail::ring ring;
  detail::doorbell bell;
  std::unique_ptr<detail::transfer_endpoint> xfer;  // made by the backend; export/import use it
  detail::process_watch owner;  // sender side: the receiving process
  boost::asio::steady_timer wait_timer;
  std::uint64_t wait_gen = 0;
  bool receiving = false;
  channel_stats stats{};
  std::string region_name, bell_name;
  std::vector<std::byte> rx_buf;  // reused by receives
  // Receiver: the batch record being delivered (detail/ticket_codec.hpp), a ticket per receive.
  std::vector<std::byte> batch_buf;
  std::vector<std::pair<std::size_t, std::size_t>> batch_items;
  std::size_t batch_next = 0;
  /// Receiver: the ticket in the record just popped into rx_buf (a batch record's first ticket;
  /// next_batched() gives the others). A ticket or batch that fails validation sets `ec`.
  void take_record(ticket& out, error_code& ec);
  /// Receiver: the next ticket of the batch record being delivered; false if there is none.
  bool next_batched(ticket& out, error_code& ec);
  std::chrono::steady_clock::time_point owner_checked{};

  // Sender: the transactions waiting for their verdict. One poller checks all of their ack slots
  // in one pass (channel_send.cpp), so a thousand moves in flight cost one posted check or one
  // timer at a time, not a thousand. The list belongs to the poller's pending handler (weak here:
  // an io_context destroyed with moves in flight frees them, and with them this impl).
  std::weak_ptr<detail::ack_waitlist> acks_waiting;
  boost::asio::steady_timer ack_timer;
  bool ack_poll_armed = false;
  bool ack_timer_armed = false;
  std::chrono::steady_clock::time_point ack_spin_until{};
  std::chrono::microseconds ack_backoff{};
  // Sender: moves published while a turn of the event loop is open wait here and go into the
  // ring together, as one batch record, when the turn ends (channel_send.cpp).
  std::shared_ptr<detail::outbox> outbox;

  // Sender, after a push: the doorbell if the receiver sleeps (`wake`), unless BATON_FAULT
  // doorbell:fail skips it.
  void ring_if(bool wake);
  // Sender: whether a push that failed with `ec` is worth another try before `deadline` (a full
  // or healing ring under full_policy::wait); rings for a heal and counts a wait for room.
  bool may_retry_push(const error_code& ec, std::chrono::steady_clock::time_point deadline);

  // The receiver's liveness, probed at most once a millisecond (a pidfd poll is a system call).
  bool owner_alive() {
    const auto now = std::chrono::steady_clock::now();
    if (now - owner_checked < std::chrono::milliseconds(1)) return true;
    if (!owner.alive()) return false;
    owner_checked = now;
    return true;
  }

  // Receiver: handles transferred to us whose tickets will never be claimed (their sender gave up
  // or died) are closed here, so that a rolled-back move leaves no copy of the socket with us.
  // Called when the ring was just seen empty; at most every 10 ms.
  std::chrono::steady_clock::time_point orphans_checked{};
  void collect_orphans() {
    const auto now = std::chrono::steady_clock::now();
    if (now - orphans_checked < std::chrono::milliseconds(10)) return;
    orphans_checked = now;
    if (xfer) xfer->collect_orphans([this](std::uint32_t slot, const ticket_id& id) { return ring.ack_wanted(slot, id); });
  }

  explicit impl(const executor_type& e) : ex(e), wait_timer(e), ack_timer(e) {}
  /// A fresh impl with the channel's names (errc::invalid_name for a bad name).
  static std::shared_ptr<impl> make(const executor_type& ex, std::string_view name, const channel_options& opts,
                                    error_code& ec);
  ~impl();
};

namespace detail {
struct channel_access {
  static channel::impl& get(channel& c) { return *c.impl_; }
  static std::shared_ptr<channel::impl> shared(channel& c) { return c.impl_; }
};

/// Sender: claims an ack slot for ticket `id` before anything irreversible is done for the move
/// (no_ack_slot if none is free).
std::uint32_t acquire_ack_slot(channel& ch, const ticket_id& id);
void release_ack_slot(channel& ch, std::uint32_t slot) noexcept;
/// Sender: like async_transact for a ticket whose t.ack_slot came from acquire_ack_slot; the slot
/// is released when this completes, whatever the outcome.
void transact_with_slot(channel& ch, ticket t, std::chrono::milliseconds timeout,
                        boost::asio::any_completion_handler<void(error_code)> h);
/// One ticket of transact_many: its slot came from acquire_ack_slot, its verdict goes to `h`.
struct send_item {
  ticket t;
  std::chrono::milliseconds timeout;
  boost::asio::any_completion_handler<void(error_code)> h;
};
/// Sender: the wait of a send for room in a full ring, backing off from 10 us to 1 ms (a full ring
/// drains at the receiver's pace); the timer is made by the first wait.
struct room_wait {
  std::optional<boost::asio::steady_timer> timer;
  std::chrono::microseconds backoff{10};
  template <class F>
  void then(const boost::asio::any_io_executor& ex, F&& f) {
    if (!timer) timer.emplace(ex);
    timer->expires_after(backoff);
    backoff = std::min<std::chrono::microseconds>(backoff * 2, std::chrono::milliseconds(1));
    timer->async_wait(std::forward<F>(f));
  }
};
/// Sender: transact_with_slot for many tickets at once, in as few batch records as the receiver's
/// record size allows (a ticket alone, or one that cannot be encoded, goes on its own).
void transact_many(channel& ch, std::vector<send_item> items);
/// Sender, within the channel layer (channel_send.cpp and channel_batch.cpp): one send, its ack
/// slot claimed here unless `slot_held` (send_on); a ticket already in the ring joining the ack
/// poller (await_verdict); the tickets waiting in the turn's outbox pushed now (flush_outbox).
void send_on(std::shared_ptr<channel::impl> c, ticket t, bool with_ack, std::chrono::milliseconds timeout,
             boost::asio::any_completion_handler<void(error_code)> h, bool slot_held);
void await_verdict(const std::shared_ptr<channel::impl>& c, send_item item, std::chrono::steady_clock::time_point now);
void flush_outbox(const std::shared_ptr<channel::impl>& c);
/// Whether a ticket may wait for the other members of its batch (ticket_gate). Not one whose
/// descriptor was pushed over SCM_RIGHTS: the receiver keeps a pushed descriptor whose ticket has
/// not come yet in a table of 4,096, and a batch of more would lose the oldest. Such a ticket
/// still shares records with the tickets of its turn of the event loop (transact_with_slot):
/// the turn's pushes went out together, in as many datagrams as 253 descriptors each need.
bool ticket_can_wait_for_batch(const ticket& t) noexcept;
/// Sender: the tickets of `members` moves go into the ring together (transact_many) once each
/// member has joined with its ticket or left without one; a ticket that cannot wait goes at once.
class ticket_gate {
 public:
  ticket_gate(channel& ch, std::size_t members) : ch_(ch), waiting_(members) {}
  void join(send_item item);
  void leave();

 private:
  channel& ch_;
  std::size_t waiting_;
  std::vector<send_item> items_;
};
}  // namespace detail

}  // namespace baton
