// Batches on a channel's sending side: the outbox where moves published in one turn of the event
// loop wait to share batch records (detail/ticket_codec.hpp), transact_many and the gate of
// async_send_batch, and channel::async_send_many for bursts of plain tickets.
#include "baton/channel.hpp"

#include "channel_impl.hpp"
#include "detail/ticket_codec.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <optional>

namespace baton {

namespace asio = boost::asio;

namespace detail {

// Moves published in one turn of the sender's event loop (a hand-over's window, a dispatcher's
// accepts of one wake-up): the first goes into the ring at once, so that a lone move waits for
// nothing; the others wait here until the turn ends and go in as batch records.
inline constexpr std::size_t outbox_flush_at = 16;

struct outbox {
  using item = send_item;
  std::vector<item> items;
  bool turn_open = false;
};

namespace {

// The greedy run of tickets from `first` that one record of at most `max_record` bytes holds
// (sizes[k] == 0 marks a ticket that cannot be encoded; it ends a run). Returns its end and sets
// `bytes` to the batch record's size.
std::size_t run_end(const std::vector<std::size_t>& sizes, std::size_t first, std::size_t max_record,
                    std::size_t& bytes) {
  std::size_t last = first;
  bytes = batch_header_bytes;
  while (last < sizes.size() && sizes[last] != 0 && last - first < max_batch_tickets &&
         bytes + batch_item_bytes(sizes[last]) <= max_record) {
    bytes += batch_item_bytes(sizes[last]);
    ++last;
  }
  return last;
}

// Writes tickets [first, last) as one batch record into `out`.
void encode_batch(std::span<std::byte> out, const ticket* first, const ticket* last) {
  encode_batch_header(out.data(), static_cast<std::uint32_t>(last - first));
  std::byte* p = out.data() + batch_header_bytes;
  for (; first != last; ++first) p = encode_batch_item(p, *first);
}

// Pushes items [first, last) as one batch record and hands each to the ack poller; false (and
// nothing pushed) if the ring has no room for it now, is being healed, or the receiver is gone.
bool push_batch(const std::shared_ptr<channel::impl>& c, std::vector<outbox::item>& items, std::size_t first,
                std::size_t last, std::size_t bytes) {
  if (c->closed || !c->owner_alive()) return false;
  error_code ec;
  const bool wake = c->ring.push(
      bytes,
      [&](std::span<std::byte> out) {
        encode_batch_header(out.data(), static_cast<std::uint32_t>(last - first));
        std::byte* p = out.data() + batch_header_bytes;
        for (std::size_t i = first; i < last; ++i) p = encode_batch_item(p, items[i].t);
      },
      ec);  // (items hold their tickets apart from their handlers, hence not encode_batch)
  if (ec) return false;
  c->ring_if(wake);
  c->stats.tickets_sent += last - first;
  ++c->stats.batches_sent;
  const auto now = std::chrono::steady_clock::now();
  for (std::size_t i = first; i < last; ++i) await_verdict(c, std::move(items[i]), now);
  return true;
}

void push_items(const std::shared_ptr<channel::impl>& c, std::vector<outbox::item>& items) {
  // Stamp and check each ticket; one that cannot be encoded takes the single path, which
  // reports why.
  std::vector<std::size_t> sizes(items.size(), 0);
  for (std::size_t i = 0; i < items.size(); ++i) {
    auto& t = items[i].t;
    t.sender_pid = current_pid();
    t.target_pid = c->ring.identity().owner_pid;
    if (!check_encodable(t, c->opts.limits)) sizes[i] = encoded_size(t);
  }
  auto one_by_one = [&](std::size_t first, std::size_t last) {
    for (std::size_t i = first; i < last; ++i)
      send_on(c, std::move(items[i].t), true, items[i].timeout, std::move(items[i].h), true);
  };
  // Greedy runs of encodable tickets, each run as large as one record may be.
  const std::size_t max_record = c->opts.limits.max_ticket_bytes;
  std::size_t i = 0;
  while (i < items.size()) {
    std::size_t bytes = 0, last = run_end(sizes, i, max_record, bytes);
    // A run of one (alone, too large to share a record, or not encodable) is a plain ticket.
    if (last - i < 2) last = i + 1;
    if (last - i == 1 || !push_batch(c, items, i, last, bytes)) one_by_one(i, last);
    i = last;
  }
}

}  // namespace

void flush_outbox(const std::shared_ptr<channel::impl>& c) {
  if (!c->outbox || c->outbox->items.empty()) return;
  std::vector<outbox::item> items;
  items.swap(c->outbox->items);
  push_items(c, items);
}

namespace {

// async_send_many: the tickets in order, each record as full as it may be, waiting for room per
// full_policy like a single send.
struct send_many_op : std::enable_shared_from_this<send_many_op> {
  std::shared_ptr<channel::impl> ch;
  std::vector<ticket> ts;
  std::vector<std::size_t> sizes;  // encoded sizes; 0: not encodable
  std::size_t next = 0;            // tickets before it are in the ring
  std::chrono::steady_clock::time_point send_deadline;
  room_wait room;
  asio::any_completion_handler<void(error_code, std::size_t)> handler;

  send_many_op(std::shared_ptr<channel::impl> c, std::vector<ticket> t,
               asio::any_completion_handler<void(error_code, std::size_t)> h)
      : ch(std::move(c)), ts(std::move(t)), handler(std::move(h)) {}

  // Always through the executor: the first step runs inside async_send_many.
  void finish(error_code ec) { asio::post(ch->ex, asio::append(std::move(handler), ec, next)); }

  void step() {
    const std::size_t max_record = ch->opts.limits.max_ticket_bytes;
    while (next < ts.size()) {
      if (ch->closed) return finish(asio::error::operation_aborted);
      if (!ch->owner_alive()) return finish(errc::channel_owner_dead);
      if (sizes[next] == 0) {
        const auto ec = check_encodable(ts[next], ch->opts.limits);
        return finish(ec == errc::ticket_too_large ? make_error_code(errc::record_too_large) : ec);
      }
      std::size_t bytes = 0, last = run_end(sizes, next, max_record, bytes);
      if (last - next < 2) {
        last = next + 1;
        bytes = sizes[next];
      }
      error_code ec;
      const bool wake = ch->ring.push(
          bytes,
          [&](std::span<std::byte> out) {
            if (last - next == 1) encode_checked(ts[next], out);
            else encode_batch(out, ts.data() + next, ts.data() + last);
          },
          ec);
      if (!ec) {
        ch->ring_if(wake);
        ch->stats.tickets_sent += last - next;
        if (last - next > 1) ++ch->stats.batches_sent;
        next = last;
        room.backoff = std::chrono::microseconds(10);
        continue;
      }
      if (!ch->may_retry_push(ec, send_deadline)) return finish(ec);
      room.then(ch->ex, [self = shared_from_this()](error_code) { self->step(); });
      return;
    }
    finish({});
  }
};

}  // namespace

}  // namespace detail

void channel::do_send_many(std::vector<ticket> ts, asio::any_completion_handler<void(error_code, std::size_t)> h) {
  if (!impl_) return std::move(h)(error_code(asio::error::bad_descriptor), std::size_t{0});
  auto c = impl_;
  if (c->receiver) return asio::post(c->ex, asio::append(std::move(h), error_code(asio::error::operation_not_supported), std::size_t{0}));
  detail::flush_outbox(c);  // moves published before go first
  auto op = std::make_shared<detail::send_many_op>(c, std::move(ts), std::move(h));
  op->sizes.assign(op->ts.size(), 0);
  const auto owner = c->ring.identity().owner_pid;
  for (std::size_t i = 0; i < op->ts.size(); ++i) {
    auto& t = op->ts[i];
    t.sender_pid = detail::current_pid();
    t.target_pid = owner;
    t.ack_slot = no_ack_slot;
    if (!check_encodable(t, c->opts.limits)) op->sizes[i] = encoded_size(t);
  }
  op->send_deadline = std::chrono::steady_clock::now() + c->opts.send_timeout;
  op->step();
}

namespace detail {

void transact_with_slot(channel& ch, ticket t, std::chrono::milliseconds timeout,
                        asio::any_completion_handler<void(error_code)> h) {
  auto c = channel_access::shared(ch);
  if (!c) return std::move(h)(error_code(asio::error::bad_descriptor));
  if (!c->outbox) c->outbox = std::make_shared<outbox>();
  if (!c->outbox->turn_open) {
    // The first of this turn goes now; the turn ends with the handlers already queued.
    c->outbox->turn_open = true;
    asio::post(c->ex, [c] {
      c->outbox->turn_open = false;
      flush_outbox(c);
    });
    return send_on(std::move(c), std::move(t), true, timeout, std::move(h), true);
  }
  // Records of outbox_flush_at tickets: the receiver starts on them while the rest are published
  // (one record for the whole turn left it idle meanwhile: bench_move's burst 8 % slower).
  c->outbox->items.push_back({std::move(t), timeout, std::move(h)});
  if (c->outbox->items.size() >= outbox_flush_at) flush_outbox(c);
}

void transact_many(channel& ch, std::vector<send_item> items) {
  auto c = channel_access::shared(ch);
  if (!c) {
    for (auto& i : items) std::move(i.h)(error_code(asio::error::bad_descriptor));
    return;
  }
  flush_outbox(c);  // what was published before goes first
  push_items(c, items);
}

bool ticket_can_wait_for_batch(const ticket& t) noexcept { return t.method != transfer_method::scm_rights; }

void ticket_gate::join(send_item item) {
  if (ticket_can_wait_for_batch(item.t)) items_.push_back(std::move(item));
  else transact_with_slot(ch_, std::move(item.t), item.timeout, std::move(item.h));
  leave();
}

void ticket_gate::leave() {
  if (--waiting_ == 0 && !items_.empty()) transact_many(ch_, std::exchange(items_, {}));
}

}  // namespace detail

}  // namespace baton
