// A channel's sending side: a send waits for room in the ring per full_policy, then, for a
// transaction, polls its ack slot for the receiver's verdict; and the ack-slot helpers of the
// move layer (detail::acquire_ack_slot, release_ack_slot). Batches: channel_batch.cpp.
#include "baton/channel.hpp"

#include "channel_impl.hpp"
#include "detail/fault.hpp"
#include "detail/ticket_codec.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>

#include <cstring>
#include <optional>

namespace baton {

namespace asio = boost::asio;

namespace detail {

struct channel_send_op;
struct ack_waitlist {
  std::vector<std::shared_ptr<channel_send_op>> ops;
};

// One send in progress: retries while the ring is full (policy wait), then, for a transaction,
// waits in the channel's list of transactions for the ack poller to see its verdict, the
// timeout, or the target's death.
struct channel_send_op : std::enable_shared_from_this<channel_send_op> {
  std::shared_ptr<channel::impl> ch;
  std::vector<std::byte> bytes;
  ticket_id id;
  std::uint32_t slot = no_ack_slot;
  bool with_ack = false;
  std::chrono::milliseconds ack_timeout{};
  std::chrono::steady_clock::time_point send_deadline, ack_deadline;
  room_wait room;
  asio::any_completion_handler<void(error_code)> handler;

  // Boost 1.81's any_completion_handler move *assignment* recurses forever (it copies from a
  // named rvalue), so handlers are only ever move-constructed into place.
  channel_send_op(std::shared_ptr<channel::impl> c, asio::any_completion_handler<void(error_code)> h)
      : ch(std::move(c)), handler(std::move(h)) {}

  void finish(error_code ec) {
    if (with_ack && slot != no_ack_slot) ch->ring.ack_release(slot);
    std::move(handler)(ec);
  }

  void try_push() {
    error_code ec;
    if (ch->closed) return finish(asio::error::operation_aborted);
    if (!ch->owner_alive()) return finish(errc::channel_owner_dead);
    const bool wake = ch->ring.push(
        bytes.size(), [&](std::span<std::byte> out) { std::memcpy(out.data(), bytes.data(), bytes.size()); }, ec);
    if (!ec) {
      ch->ring_if(wake);
      ++ch->stats.tickets_sent;
      if (!with_ack) return finish({});
      ack_deadline = std::chrono::steady_clock::now() + ack_timeout;
      return await_verdict(shared_from_this());
    }
    if (!ch->may_retry_push(ec, send_deadline)) {
      if (with_ack) ch->ring.ack_release(slot);
      slot = no_ack_slot;
      return std::move(handler)(ec);
    }
    room.then(ch->ex, [self = shared_from_this()](error_code) { self->try_push(); });
  }

  // The verdict, if there is one by now (the timeout, a dead target and a closed channel are
  // verdicts too); empty while the ticket is pending.
  std::optional<error_code> verdict(std::chrono::steady_clock::time_point now, bool target_alive) {
    auto st = ch->ring.ack_peek(slot, id);
    if (st == ack_state::accepted) return error_code();
    if (st == ack_state::rejected) return make_error_code(errc::move_rejected);
    if (st != ack_state::pending) return make_error_code(errc::move_rejected);
    if (target_alive && !ch->closed && now < ack_deadline) return std::nullopt;
    // Void the ticket. If the receiver resolved it in the meantime, its verdict stands.
    auto final_state = ch->ring.ack_cancel(slot, id);
    if (final_state == ack_state::accepted) return error_code();
    if (final_state == ack_state::rejected) return make_error_code(errc::move_rejected);
    if (ch->closed) return make_error_code(asio::error::operation_aborted);
    return make_error_code(target_alive ? errc::move_timeout : errc::target_died);
  }

  // The ack poller. The receiver usually answers within tens of microseconds, less than a
  // timer's slack on Linux (50 us): for ack_spin after a transaction joins an empty list, the slots
  // are re-checked through the executor (other handlers still run between checks); after that on
  // a timer whose interval starts at ack_poll_first and doubles up to ack_poll_max, and starts
  // over whenever a verdict arrives or a transaction joins.
  static void await_verdict(std::shared_ptr<channel_send_op> op) {
    auto c = op->ch;
    auto list = c->acks_waiting.lock();
    if (!list) c->acks_waiting = list = std::make_shared<ack_waitlist>();
    // Spinning is for a lone transaction's latency. With others in flight, verdicts come at the
    // receiver's pace: the timer's checks see several at once, and leave the CPU to the receiver.
    if (list->ops.empty()) c->ack_spin_until = std::chrono::steady_clock::now() + c->opts.ack_spin;
    c->ack_backoff = c->opts.ack_poll_first;
    list->ops.push_back(std::move(op));
    // The newcomer's first check is posted (never inline), or comes now from a cancelled sleep.
    if (c->ack_timer_armed) c->ack_timer.cancel();
    else if (!c->ack_poll_armed) post_poll(std::move(c), std::move(list));
  }

  static void post_poll(std::shared_ptr<channel::impl> c, std::shared_ptr<ack_waitlist> list) {
    c->ack_poll_armed = true;
    asio::post(c->ex, [c, list] {
      c->ack_poll_armed = false;
      poll(c, list);
    });
  }

  static void schedule_poll(const std::shared_ptr<channel::impl>& c, const std::shared_ptr<ack_waitlist>& list) {
    if (c->ack_poll_armed || c->ack_timer_armed || list->ops.empty()) return;
    if (std::chrono::steady_clock::now() < c->ack_spin_until) return post_poll(c, list);
    c->ack_timer_armed = true;
    c->ack_timer.expires_after(c->ack_backoff);
    c->ack_backoff = std::min<std::chrono::microseconds>(c->ack_backoff * 2, c->opts.ack_poll_max);
    c->ack_timer.async_wait([c, list](error_code) {
      c->ack_timer_armed = false;
      poll(c, list);
    });
  }

  static void poll(const std::shared_ptr<channel::impl>& c, const std::shared_ptr<ack_waitlist>& list) {
    const auto now = std::chrono::steady_clock::now();
    const bool alive = list->ops.empty() || c->owner_alive();
    std::vector<std::pair<std::shared_ptr<channel_send_op>, error_code>> done;
    std::erase_if(list->ops, [&](std::shared_ptr<channel_send_op>& op) {
      auto v = op->verdict(now, alive);
      if (!v) return false;
      done.emplace_back(std::move(op), *v);
      return true;
    });
    if (!done.empty()) c->ack_backoff = c->opts.ack_poll_first;
    schedule_poll(c, list);  // before the handlers run: those may send again, which joins the list
    for (auto& [op, ec] : done) op->finish(ec);
  }
};

// One send: validates, claims or takes over the ack slot, pushes (or retries per full_policy),
// then, for a transaction, joins the ack poller's list.
void send_on(std::shared_ptr<channel::impl> c, ticket t, bool with_ack, std::chrono::milliseconds timeout,
             asio::any_completion_handler<void(error_code)> h, bool slot_held) {
  auto fail = [&](error_code ec) { asio::post(c->ex, asio::append(std::move(h), ec)); };
  if (c->receiver) return fail(asio::error::operation_not_supported);
  // Tickets published before this one, waiting for their turn to end, go first.
  if (!slot_held) flush_outbox(c);
  auto op = std::make_shared<channel_send_op>(c, std::move(h));
  auto fail_op = [&](error_code ec) { asio::post(c->ex, asio::append(std::move(op->handler), ec)); };
  t.sender_pid = current_pid();
  t.target_pid = c->ring.identity().owner_pid;
  op->with_ack = with_ack;
  op->ack_timeout = timeout;
  op->id = t.id;
  if (with_ack && slot_held) {
    op->slot = t.ack_slot;
  } else if (with_ack) {
    auto s = c->ring.ack_acquire(t.id, t.sender_pid);
    if (s < 0) return fail_op(errc::no_free_ack_slot);
    op->slot = static_cast<std::uint32_t>(s);
  }
  t.ack_slot = op->slot;
  error_code ec = check_encodable(t, c->opts.limits);
  if (ec) {
    if (with_ack) c->ring.ack_release(op->slot);
    return fail_op(ec == errc::ticket_too_large ? make_error_code(errc::record_too_large) : ec);
  }
  op->send_deadline = std::chrono::steady_clock::now() + c->opts.send_timeout;
  // Fast path: encode straight into the ring. Only the completion is posted, so it never runs
  // inside this call.
  if (!c->closed && c->owner_alive()) {
    error_code push_ec;
    // One captured pointer keeps the std::function free of a heap allocation.
    const bool wake = c->ring.push(
        encoded_size(t), [tp = &t](std::span<std::byte> out) { encode_checked(*tp, out); }, push_ec);
    if (!push_ec) {
      c->ring_if(wake);
      ++c->stats.tickets_sent;
      if (!with_ack) {
        asio::post(c->ex, asio::append(std::move(op->handler), error_code()));
        return;
      }
      op->ack_deadline = std::chrono::steady_clock::now() + timeout;
      channel_send_op::await_verdict(std::move(op));  // the poller's first check is posted
      return;
    }
    if (push_ec != errc::channel_full && push_ec != errc::channel_corrupted) {
      if (with_ack) c->ring.ack_release(op->slot);
      op->slot = no_ack_slot;
      return fail_op(push_ec);
    }
  }
  // Slow path (full ring, healing, or a receiver to check): keep an encoded copy for retries.
  op->bytes.resize(encoded_size(t));
  encode_checked(t, op->bytes);
  // Run the first attempt from the executor so that completion is never inline.
  asio::post(c->ex, [op] { op->try_push(); });
}

void await_verdict(const std::shared_ptr<channel::impl>& c, send_item item,
                   std::chrono::steady_clock::time_point now) {
  auto op = std::make_shared<channel_send_op>(c, std::move(item.h));
  op->with_ack = true;
  op->slot = item.t.ack_slot;
  op->id = item.t.id;
  op->ack_timeout = item.timeout;
  op->ack_deadline = now + item.timeout;
  channel_send_op::await_verdict(std::move(op));
}

}  // namespace detail

void channel::impl::ring_if(bool wake) {
  const bool bell_fails = detail::inject(detail::fault_step::doorbell, owner.pid());
  if (wake && !bell_fails) bell.ring();
}

bool channel::impl::may_retry_push(const error_code& ec, std::chrono::steady_clock::time_point deadline) {
  if (ec == errc::channel_corrupted) bell.ring();  // make the receiver heal the ring
  const bool retry = (ec == errc::channel_full || ec == errc::channel_corrupted) &&
                     opts.on_full == full_policy::wait && std::chrono::steady_clock::now() < deadline;
  if (retry && ec == errc::channel_full) ++stats.full_waits;
  return retry;
}

void channel::do_send(ticket t, bool with_ack, std::chrono::milliseconds timeout,
                      asio::any_completion_handler<void(error_code)> h, bool slot_held) {
  if (!impl_) return std::move(h)(error_code(asio::error::bad_descriptor));
  detail::send_on(impl_, std::move(t), with_ack, timeout, std::move(h), slot_held);
}

namespace detail {

std::uint32_t acquire_ack_slot(channel& ch, const ticket_id& id) {
  auto& im = channel_access::get(ch);
  const auto s = im.ring.ack_acquire(id, current_pid());
  return s < 0 ? no_ack_slot : static_cast<std::uint32_t>(s);
}

void release_ack_slot(channel& ch, std::uint32_t slot) noexcept {
  if (slot != no_ack_slot) channel_access::get(ch).ring.ack_release(slot);
}

}  // namespace detail

}  // namespace baton
