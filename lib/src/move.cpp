// The move: a source-side operation per connection or listener (quiesce, claim an ack slot,
// export, publish, transact, then commit or roll back) and the target-side receive that
// re-creates what a ticket names and acknowledges it. See docs/design.md, "The move".
#include "baton/move.hpp"

#include "channel_impl.hpp"
#include "connection_impl.hpp"
#include "detail/fault.hpp"
#include "detail/platform.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <utility>

namespace baton {

namespace asio = boost::asio;

namespace {

using detail::fault_step;

// What an injected failure (BATON_FAULT=<step>:fail) reports.
error_code injected_failure() { return make_error_code(boost::system::errc::io_error); }

struct atomic_move_stats {
  std::atomic<std::uint64_t> sent{0}, received{0}, rollbacks{0}, rejected_tickets{0};
  std::array<std::atomic<std::uint64_t>, move_latency_bounds_us.size() + 1> latency{};
  std::atomic<std::uint64_t> latency_sum_us{0};

  void record_latency(std::chrono::steady_clock::duration d) noexcept {
    const auto us = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(d).count());
    std::size_t b = 0;
    while (b < move_latency_bounds_us.size() && us > move_latency_bounds_us[b]) ++b;
    latency[b].fetch_add(1, std::memory_order_relaxed);
    latency_sum_us.fetch_add(us, std::memory_order_relaxed);
  }
};
atomic_move_stats g_stats;

// Drives a source-side move: quiesce, claim an ack slot, export, publish, transact, then commit
// or roll back. Works for connections and listeners alike (`Object` says which).
template <class Object, class State>
struct send_op : std::enable_shared_from_this<send_op<Object, State>> {
  channel& ch;
  std::shared_ptr<State> st;
  move_options opts;
  asio::any_completion_handler<void(error_code, Object)> handler;
  asio::steady_timer timer;
  std::unique_ptr<detail::pending_export> pending;
  ticket t;
  std::uint32_t slot = no_ack_slot;  // held by this move until the ticket goes to the channel
  bool idle = false, timed_out = false, retried = false;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  transfer_method used = transfer_method::none;

  send_op(channel& c, std::shared_ptr<State> s, const move_options& o,
          asio::any_completion_handler<void(error_code, Object)> h)
      : ch(c), st(std::move(s)), opts(o), handler(std::move(h)), timer(st->ex) {}

  void complete(error_code ec, Object obj) { std::move(handler)(ec, std::move(obj)); }

  static bool writing(const detail::connection_impl& c) { return c.writes > 0; }
  static bool writing(const listener::state&) { return false; }

  void start() {
    if (!writing(*st)) {
      // Nothing to wait for but cancelled reads, which complete at once: no busy timer (a timer
      // armed and cancelled per move re-arms the reactor's timerfd, measurable in a dispatcher).
      idle = true;
      st->quiesce([self = this->shared_from_this()] { self->quiesced(); });
      return;
    }
    // A connection with a write that never finishes (a peer that does not read) cannot be moved
    // safely; give up after the move timeout and hand it back.
    timer.expires_after(opts.timeout);
    timer.async_wait([self = this->shared_from_this()](error_code ec) {
      if (ec || self->idle) return;
      self->timed_out = true;
      self->st->resume();
      self->complete(errc::busy, Object(self->st));
    });
    st->quiesce([self = this->shared_from_this()] {
      if (self->timed_out) return;
      self->idle = true;
      self->timer.cancel();
      self->quiesced();
    });
  }

  void quiesced() {
    if (detail::inject(fault_step::quiesce, ch.owner_pid())) {
      st->resume();
      return complete(injected_failure(), Object(st));
    }
    exported();
  }

  // Everything that can refuse the move for reasons of its own (no free ack slot, a ticket too
  // large) is checked before the socket is exported, so that such a refusal leaves no copy of
  // the socket anywhere.
  void exported() {
    t = ticket{};
    t.id = ticket_id::random();
    if constexpr (std::is_same_v<Object, connection>) {
      t.kind = ticket_kind::connection;
      t.unread = st->remaining_unread();
      t.state = st->state;
    } else {
      t.kind = ticket_kind::listener;
    }
    error_code ec = bounded(t);
    if (!ec) {
      slot = detail::acquire_ack_slot(ch, t.id);
      if (slot == no_ack_slot) ec = errc::no_free_ack_slot;
    }
    if (ec) {
      st->resume();
      return complete(ec, Object(st));
    }
    t.ack_slot = slot;
    if constexpr (std::is_same_v<Object, connection>)
      pending = detail::export_stream(st->backend, ch.owner_pid(), opts.strategy, ch.name(), t, ec);
    else
      pending = detail::export_listener(st->backend, ch.owner_pid(), opts.strategy, ch.name(), t, ec);
    if (ec) {
      detail::release_ack_slot(ch, std::exchange(slot, no_ack_slot));
      st->resume();
      return complete(ec, Object(st));
    }
    used = t.method;
    if (detail::inject(fault_step::detach, ch.owner_pid())) return abandon(injected_failure());
    pending->async_publish(st->ex, std::chrono::steady_clock::now() + opts.timeout,
                           [self = this->shared_from_this()](error_code ec) { self->published(ec); });
  }

  // The largest ticket this move can make (the platform's largest payload) must fit the channel.
  error_code bounded(const ticket& base) const {
    const std::size_t size = encoded_size(base) + detail::largest_transfer_payload();
    return size > detail::channel_access::get(ch).opts.limits.max_ticket_bytes ? make_error_code(errc::record_too_large)
                                                                              : error_code();
  }

  // The socket was exported but its ticket never entered the ring: release the slot (which makes
  // any published copy unwanted, see collect_orphan_transfers) and roll back.
  void abandon(error_code ec) {
    detail::release_ack_slot(ch, std::exchange(slot, no_ack_slot));
    verdict(ec);
  }

  void published(error_code ec) {
    if (ec) return abandon(ec);
    if (detail::inject(fault_step::send_ticket, ch.owner_pid())) return abandon(injected_failure());
    slot = no_ack_slot;  // from here the channel releases it
    detail::transact_with_slot(ch, std::move(t), opts.timeout, [self = this->shared_from_this()](error_code ec) {
      self->verdict(ec);
    });
  }

  void verdict(error_code ec) {
    if (!ec) {
      // The target owns it now. Close our handle; the kernel object lives on in the target.
      detail::inject(fault_step::commit, ch.owner_pid());
      if (st->backend) st->backend->set_shutdown_on_close(false);  // the target owns the socket now
      pending->commit();
      st->backend.reset();
      g_stats.sent.fetch_add(1, std::memory_order_relaxed);
      g_stats.record_latency(std::chrono::steady_clock::now() - started);
      return complete({}, Object());
    }
    error_code rb;
    if constexpr (std::is_same_v<Object, connection>)
      st->backend = pending->rollback_stream(st->ex, rb);
    else
      st->backend = pending->rollback_listener(st->ex, rb);
    pending.reset();
    // The target may have taken a copy and stalled before its verdict: from now on closing this
    // socket shuts it down, so the client sees the close whoever else still holds it.
    if (st->backend) st->backend->set_shutdown_on_close(true);
    g_stats.rollbacks.fetch_add(1, std::memory_order_relaxed);
    if (!rb && ec == errc::move_rejected && used == transfer_method::pidfd_getfd &&
        opts.strategy == transfer_strategy::automatic && !retried) {
      // The target could not pull the descriptor (EPERM: ptrace policy, another uid...). The push
      // path needs no permission on the source: try it once before giving up.
      retried = true;
      opts.strategy = transfer_strategy::scm_rights;
      detail::counters().fallbacks++;
      return exported();
    }
    st->resume();
    // A failed rollback is reported in preference to the reason for it: it is the one that
    // loses the connection.
    complete(rb ? rb : ec, Object(st));
  }
};

}  // namespace

move_stats get_move_stats() noexcept {
  move_stats s;
  s.sent = g_stats.sent.load(std::memory_order_relaxed);
  s.received = g_stats.received.load(std::memory_order_relaxed);
  s.rollbacks = g_stats.rollbacks.load(std::memory_order_relaxed);
  s.rejected_tickets = g_stats.rejected_tickets.load(std::memory_order_relaxed);
  s.strategy_fallbacks = detail::counters().fallbacks;
  s.refused_pushes = detail::counters().refused_pushes;
  s.orphans_closed = detail::counters().orphans_closed;
  for (std::size_t i = 0; i < s.latency_buckets.size(); ++i)
    s.latency_buckets[i] = g_stats.latency[i].load(std::memory_order_relaxed);
  s.latency_sum_us = g_stats.latency_sum_us.load(std::memory_order_relaxed);
  return s;
}

namespace detail {

void start_send_connection(channel& ch, connection&& c, const move_options& o,
                           asio::any_completion_handler<void(error_code, connection)> h) {
  auto st = c.impl();
  if (!st || !st->backend || !st->backend->is_open()) {
    std::move(h)(error_code(asio::error::bad_descriptor), std::move(c));
    return;
  }
  if (!ch.is_open() || ch.is_receiver()) {
    asio::post(st->ex, asio::append(std::move(h), error_code(asio::error::operation_not_supported), std::move(c)));
    return;
  }
  if (st->quiescing) {
    asio::post(st->ex, asio::append(std::move(h), make_error_code(errc::operation_in_progress), std::move(c)));
    return;
  }
  auto op = std::make_shared<send_op<connection, connection_impl>>(ch, st, o, std::move(h));
  c = connection();
  op->start();
}

void start_send_listener(channel& ch, listener&& l, const move_options& o,
                         asio::any_completion_handler<void(error_code, listener)> h) {
  auto st = l.impl();
  if (!st || !st->backend || !st->backend->is_open()) {
    std::move(h)(error_code(asio::error::bad_descriptor), std::move(l));
    return;
  }
  if (!ch.is_open() || ch.is_receiver()) {
    asio::post(st->ex, asio::append(std::move(h), error_code(asio::error::operation_not_supported), std::move(l)));
    return;
  }
  auto op = std::make_shared<send_op<listener, listener::state>>(ch, st, o, std::move(h));
  l = listener();
  op->start();
}

namespace {

struct receive_op : std::enable_shared_from_this<receive_op> {
  channel& ch;
  asio::any_completion_handler<void(error_code, arrival)> handler;
  receive_op(channel& c, asio::any_completion_handler<void(error_code, arrival)> h) : ch(c), handler(std::move(h)) {}

  void start() {
    ch.async_receive([self = shared_from_this()](error_code ec, ticket t) { self->on_ticket(ec, std::move(t)); });
  }

  void on_ticket(error_code ec, ticket t) {
    if (ec) return std::move(handler)(ec, arrival{});
    arrival a;
    a.kind = t.kind;
    a.sender_pid = t.sender_pid;
    if (t.target_pid != current_pid()) {
      ch.acknowledge(t, false);
      g_stats.rejected_tickets.fetch_add(1, std::memory_order_relaxed);
      return std::move(handler)(make_error_code(errc::ticket_wrong_target), arrival{});
    }
    if (t.kind != ticket_kind::control && detail::inject(fault_step::claim, t.sender_pid)) {
      ch.acknowledge(t, false);
      g_stats.rejected_tickets.fetch_add(1, std::memory_order_relaxed);
      return std::move(handler)(injected_failure(), arrival{});
    }
    const auto ex = ch.get_executor();
    // Re-create, then accept. The order matters: a source that gave up (timeout) before our
    // accept kept its socket, so ours is a duplicate to close, and the next ticket is what the
    // caller wants. Returns null when the caller has already been answered or restarted.
    auto adopt = [&](auto backend) -> decltype(backend) {
      if (!ec && detail::inject(fault_step::attach, t.sender_pid)) {
        backend->close();
        backend = nullptr;
        ec = injected_failure();
      }
      if (ec) {
        ch.acknowledge(t, false);
        g_stats.rejected_tickets.fetch_add(1, std::memory_order_relaxed);
        std::move(handler)(ec, arrival{});
        return nullptr;
      }
      // An injected failure of the ack behaves as an ack that lost the race with the sender's
      // timeout: the slot stays pending on our side, the sender keeps the connection.
      const bool ack_fails = detail::fault_at(fault_step::ack) == detail::fault_action::fail;
      if (ack_fails || !ch.acknowledge(t, true)) {
        backend->close();
        g_stats.rejected_tickets.fetch_add(1, std::memory_order_relaxed);
        start();
        return nullptr;
      }
      detail::inject(fault_step::ack, t.sender_pid);  // die / kill_peer / stall after the ack
      return backend;
    };
    if (t.kind == ticket_kind::connection) {
      auto b = adopt(import_stream(ex, t, ch.name(), ec));
      if (!b) return;
      auto im = std::make_shared<connection_impl>();
      im->ex = ex;
      im->backend = std::move(b);
      im->unread = std::move(t.unread);
      im->state = std::move(t.state);
      a.conn = connection(std::move(im));
    } else if (t.kind == ticket_kind::listener) {
      auto b = adopt(import_listener(ex, t, ch.name(), ec));
      if (!b) return;
      auto st = std::make_shared<listener::state>();
      st->ex = ex;
      st->backend = std::move(b);
      a.lst = listener(std::move(st));
    } else {
      ch.acknowledge(t, true);
      a.control = std::move(t);
    }
    g_stats.received.fetch_add(1, std::memory_order_relaxed);
    std::move(handler)(error_code(), std::move(a));
  }
};

}  // namespace

void start_receive(channel& ch, asio::any_completion_handler<void(error_code, arrival)> h) {
  std::make_shared<receive_op>(ch, std::move(h))->start();
}

}  // namespace detail
}  // namespace baton
