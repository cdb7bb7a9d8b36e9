// The move: a source-side operation per connection, listener or UDP socket (quiesce, claim an ack slot,
// export, publish, transact, then commit or roll back) and the target-side receive that
// re-creates what a ticket names and acknowledges it. See docs/design.md, "The move".
#include "baton/move.hpp"

#include "channel_impl.hpp"
#include "connection_impl.hpp"
#include "detail/datagram_queue.hpp"
#include "detail/fault.hpp"
#include "detail/platform.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <atomic>
#include <optional>
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
  using backend_type = typename State::backend_type;
  channel& ch;
  std::shared_ptr<State> st;
  move_options opts;
  asio::any_completion_handler<void(error_code, Object)> handler;
  std::optional<asio::steady_timer> timer;  // only a move that waits for a write needs one
  std::unique_ptr<detail::pending_export> pending;  // owns the socket from the export to the verdict
  ticket t;
  std::uint32_t slot = no_ack_slot;  // held by this move until the ticket goes to the channel
  bool idle = false, timed_out = false;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::shared_ptr<detail::ticket_gate> gate;  // async_send_batch's, until this move has published

  send_op(channel& c, std::shared_ptr<State> s, const move_options& o,
          asio::any_completion_handler<void(error_code, Object)> h)
      : ch(c), st(std::move(s)), opts(o), handler(std::move(h)) {}

  // Hands the object back (or an empty one, after a success).
  void complete(error_code ec, std::shared_ptr<State> back) {
    if (auto g = std::exchange(gate, nullptr)) g->leave();  // gave up before publishing
    std::move(handler)(ec, back ? detail::connection_access::wrap(std::move(back)) : Object());
  }
  void give_back(error_code ec) {
    st->resume();
    complete(ec, st);
  }

  void start() {
    if (!st->writing()) {
      // Nothing to wait for but cancelled reads, which complete at once: no busy timer (a timer
      // armed and cancelled per move re-arms the reactor's timerfd, measurable in a dispatcher).
      idle = true;
      st->quiesce([self = this->shared_from_this()] { self->quiesced(); });
      return;
    }
    // A connection with a write that never finishes (a peer that does not read) cannot be moved
    // safely; give up after the move timeout and hand it back.
    timer.emplace(st->ex);
    timer->expires_after(opts.timeout);
    timer->async_wait([self = this->shared_from_this()](error_code ec) {
      if (ec || self->idle) return;
      self->timed_out = true;
      self->give_back(errc::busy);
    });
    st->quiesce([self = this->shared_from_this()] {
      if (self->timed_out) return;
      self->idle = true;
      self->timer->cancel();
      self->quiesced();
    });
  }

  void quiesced() {
    if (detail::inject(fault_step::quiesce, ch.owner_pid())) return give_back(injected_failure());
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
      t.kind = std::is_same_v<Object, listener> ? ticket_kind::listener : ticket_kind::udp_socket;
      if constexpr (std::is_same_v<Object, udp_socket>) t.unread = detail::encode_datagrams(st->queued);
      const auto* n = reinterpret_cast<const std::byte*>(st->name.data());
      t.state.assign(n, n + st->name.size());
    }
    error_code ec = bounded(t);
    if (!ec) {
      slot = detail::acquire_ack_slot(ch, t.id);
      if (slot == no_ack_slot) ec = errc::no_free_ack_slot;
    }
    if (ec) return give_back(ec);
    t.ack_slot = slot;
    std::unique_ptr<detail::socket_backend> b = std::move(st->backend);
    pending = detail::export_socket(b, *detail::channel_access::get(ch).xfer, ch.owner_pid(), opts.strategy, t, ec);
    st->backend = detail::backend_cast<backend_type>(std::move(b));  // still ours if the export failed
    if (ec) {
      detail::release_ack_slot(ch, std::exchange(slot, no_ack_slot));
      return give_back(ec);
    }
    if (detail::inject(fault_step::detach, ch.owner_pid())) return abandon(injected_failure());
    if (!pending->publishes()) return published({});
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
  // any published copy unwanted, see transfer_endpoint::collect_orphans) and roll back.
  void abandon(error_code ec) {
    detail::release_ack_slot(ch, std::exchange(slot, no_ack_slot));
    verdict(ec);
  }

  void published(error_code ec) {
    if (ec) return abandon(ec);
    if (detail::inject(fault_step::send_ticket, ch.owner_pid())) return abandon(injected_failure());
    slot = no_ack_slot;  // from here the channel releases it
    auto on_verdict = [self = this->shared_from_this()](error_code ec) { self->verdict(ec); };
    if (auto g = std::exchange(gate, nullptr)) return g->join({std::move(t), opts.timeout, std::move(on_verdict)});
    detail::transact_with_slot(ch, std::move(t), opts.timeout, std::move(on_verdict));
  }

  void verdict(error_code ec) {
    if (!ec) {
      // The target owns it now. Close our handle; the kernel object lives on in the target.
      detail::inject(fault_step::commit, ch.owner_pid());
      std::exchange(pending, nullptr)->commit();
      st->moved_away();
      g_stats.sent.fetch_add(1, std::memory_order_relaxed);
      g_stats.record_latency(std::chrono::steady_clock::now() - started);
      return complete({}, nullptr);
    }
    error_code rb;
    st->backend = detail::backend_cast<backend_type>(pending->rollback(st->ex, rb));
    // The target may have taken a copy and stalled before its verdict: from now on closing this
    // socket shuts it down, so the client sees the close whoever else still holds it.
    if (st->backend) st->backend->set_shutdown_on_close(true);
    g_stats.rollbacks.fetch_add(1, std::memory_order_relaxed);
    // The platform may know another way for the handle to travel that this failure does not
    // block: one more attempt with it.
    const auto retry = rb ? std::nullopt : pending->fallback(ec);
    pending.reset();
    if (retry) {
      opts.strategy = *retry;
      return exported();
    }
    // A failed rollback is reported in preference to the reason for it: it is the one that
    // loses the connection.
    give_back(rb ? rb : ec);
  }
};

// Checks common to every send; true if the move may start.
template <class Object, class State, class Handler>
bool startable(channel& ch, Object& obj, const std::shared_ptr<State>& st, Handler& h) {
  if (!st || !st->is_open()) {
    std::move(h)(error_code(asio::error::bad_descriptor), std::move(obj));
    return false;
  }
  error_code ec;
  if (!ch.is_open() || ch.is_receiver()) ec = asio::error::operation_not_supported;
  else if (st->quiescing) ec = errc::operation_in_progress;
  if (ec) asio::post(st->ex, asio::append(std::move(h), ec, std::move(obj)));
  return !ec;
}

template <class Object>
void start_send_op(channel& ch, Object&& obj, const move_options& o,
                asio::any_completion_handler<void(error_code, Object)> h,
                   std::shared_ptr<detail::ticket_gate> gate = nullptr) {
  auto st = detail::connection_access::impl(obj);
  if (!startable(ch, obj, st, h)) {
    if (gate) gate->leave();
    return;
  }
  using state_type = typename decltype(st)::element_type;
  auto op = std::make_shared<send_op<Object, state_type>>(ch, st, o, std::move(h));
  op->gate = std::move(gate);
  obj = Object();
  op->start();
}

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
  s.pushed = detail::counters().pushed;
  s.push_datagrams = detail::counters().push_datagrams;
  for (std::size_t i = 0; i < s.latency_buckets.size(); ++i)
    s.latency_buckets[i] = g_stats.latency[i].load(std::memory_order_relaxed);
  s.latency_sum_us = g_stats.latency_sum_us.load(std::memory_order_relaxed);
  return s;
}

namespace detail {

transfer_counters& counters() noexcept {
  static transfer_counters c;
  return c;
}

void start_send(channel& ch, connection&& c, const move_options& o,
                asio::any_completion_handler<void(error_code, connection)> h) {
  start_send_op(ch, std::move(c), o, std::move(h));
}

void start_send_batch(channel& ch, std::vector<connection> conns, const move_options& o,
                      asio::any_completion_handler<void(error_code, batch_result)> h) {
  struct gather {
    batch_result r;
    std::size_t left;
    asio::any_completion_handler<void(error_code, batch_result)> h;
    gather(std::size_t n, asio::any_completion_handler<void(error_code, batch_result)> hh) : left(n), h(std::move(hh)) {
      r.errors.resize(n);
      r.connections.resize(n);
    }
    void done() {
      const auto first = std::find_if(r.errors.begin(), r.errors.end(), [](const error_code& e) { return !!e; });
      std::move(h)(first == r.errors.end() ? error_code() : *first, std::move(r));
    }
  };
  const std::size_t n = conns.size();
  auto g = std::make_shared<gather>(n, std::move(h));
  if (n == 0) {
    if (ch.is_open()) asio::post(ch.get_executor(), [g] { g->done(); });
    else g->done();
    return;
  }
  // The gate counts one member more until every move has started, so that one failing at once
  // cannot flush the others' tickets early.
  auto gate = std::make_shared<detail::ticket_gate>(ch, n + 1);
  for (std::size_t i = 0; i < n; ++i)
    start_send_op<connection>(
        ch, std::move(conns[i]), o,
        [g, i](error_code ec, connection back) {
          g->r.errors[i] = ec;
          if (ec) g->r.connections[i] = std::move(back);
          else ++g->r.moved;
          if (--g->left == 0) g->done();
        },
        gate);
  gate->leave();
}

void start_send(channel& ch, listener&& l, const move_options& o,
                asio::any_completion_handler<void(error_code, listener)> h) {
  start_send_op(ch, std::move(l), o, std::move(h));
}

void start_send(channel& ch, udp_socket&& u, const move_options& o,
                asio::any_completion_handler<void(error_code, udp_socket)> h) {
  start_send_op(ch, std::move(u), o, std::move(h));
}

namespace {

// A listener's or UDP socket's name, from its ticket's state.
std::string name_of(const ticket& t) {
  return {reinterpret_cast<const char*>(t.state.data()), std::min<std::size_t>(t.state.size(), 255)};
}

enum class taken { arrival, failed, skipped };

// Validates a received ticket, re-creates the socket it names, acknowledges it and builds the
// object around the socket in `a`. The order matters: a source that gave up (timeout) before our
// acknowledgement kept its socket, so ours is a duplicate to close, and the ticket is skipped.
// A ticket that fails is refused (its source takes the socket back) and `ec` says why.
taken take_ticket(channel& ch, ticket& t, arrival& a, error_code& ec) {
  a.kind = t.kind;
  a.sender_pid = t.sender_pid;
  const auto refuse = [&](error_code why) {
    ch.acknowledge(t, false);
    g_stats.rejected_tickets.fetch_add(1, std::memory_order_relaxed);
    ec = why;
    return taken::failed;
  };
  if (t.target_pid != current_pid()) return refuse(make_error_code(errc::ticket_wrong_target));
  if (t.kind != ticket_kind::control && detail::inject(fault_step::claim, t.sender_pid))
    return refuse(injected_failure());
  if (t.kind == ticket_kind::control) {
    ch.acknowledge(t, true);
    a.control = std::move(t);
    g_stats.received.fetch_add(1, std::memory_order_relaxed);
    return taken::arrival;
  }
  const auto kind = t.kind == ticket_kind::connection ? socket_kind::connection
                    : t.kind == ticket_kind::listener ? socket_kind::listener
                                                      : socket_kind::datagram;
  const auto ex = ch.get_executor();
  auto b = import_socket(kind, *channel_access::get(ch).xfer, ex, t, ec);
  if (!ec && detail::inject(fault_step::attach, t.sender_pid)) {
    b->close();
    b = nullptr;
    ec = injected_failure();
  }
  if (ec) return refuse(ec);
  // An injected failure of the ack behaves as an ack that lost the race with the sender's
  // timeout: the slot stays pending on our side, the sender keeps the connection. (inject()
  // decides, so that ack:fail:every<n> fails every n-th ack only.)
  const bool ack_fault_fails = detail::fault_at(fault_step::ack) == detail::fault_action::fail;
  const bool ack_fails = ack_fault_fails && detail::inject(fault_step::ack, t.sender_pid);
  if (ack_fails || !ch.acknowledge(t, true)) {
    b->close();
    g_stats.rejected_tickets.fetch_add(1, std::memory_order_relaxed);
    return taken::skipped;
  }
  if (!ack_fault_fails) detail::inject(fault_step::ack, t.sender_pid);  // die / kill_peer / stall after the ack
  if (kind == socket_kind::connection) {
    auto im = std::make_shared<connection_impl>(ex, backend_cast<stream_backend>(std::move(b)));
    im->unread = std::move(t.unread);
    im->state = std::move(t.state);
    a.conn = connection_access::wrap(std::move(im));
  } else if (kind == socket_kind::listener) {
    auto im = std::make_shared<listener_impl>(ex, backend_cast<listener_backend>(std::move(b)));
    im->name = name_of(t);
    a.lst = connection_access::wrap(std::move(im));
  } else {
    auto im = std::make_shared<udp_socket_impl>(ex, backend_cast<datagram_backend>(std::move(b)));
    im->name = name_of(t);
    decode_datagrams(t.unread, &im->queued);  // checked with the ticket
    a.udp = connection_access::wrap(std::move(im));
  }
  g_stats.received.fetch_add(1, std::memory_order_relaxed);
  return taken::arrival;
}

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
    switch (take_ticket(ch, t, a, ec)) {
      case taken::skipped: return start();
      case taken::failed: return std::move(handler)(ec, arrival{});
      case taken::arrival: return std::move(handler)(error_code(), std::move(a));
    }
  }
};

// Waits for one ticket like receive_op, then takes the tickets already queued behind it without
// waiting, up to `max` or up to and including a control ticket: one completion (one trip through
// the caller's executor) for all of them.
struct receive_some_op : std::enable_shared_from_this<receive_some_op> {
  channel& ch;
  std::size_t max;
  std::vector<arrival> got;
  asio::any_completion_handler<void(error_code, std::vector<arrival>)> handler;
  receive_some_op(channel& c, std::size_t m, asio::any_completion_handler<void(error_code, std::vector<arrival>)> h)
      : ch(c), max(std::max<std::size_t>(m, 1)), handler(std::move(h)) {}

  void start() {
    ch.async_receive([self = shared_from_this()](error_code ec, ticket t) { self->on_ticket(ec, std::move(t)); });
  }

  void on_ticket(error_code ec, ticket t) {
    if (ec) return std::move(handler)(ec, std::move(got));
    for (;;) {
      arrival a;
      const auto r = take_ticket(ch, t, a, ec);
      if (r == taken::failed) return std::move(handler)(ec, std::move(got));
      if (r == taken::arrival) got.push_back(std::move(a));
      // A control ticket ends the batch: it may change what the receiver does with the tickets
      // behind it (a worker told to leave must not have taken, and so own, any more).
      if (got.size() >= max || (r == taken::arrival && got.back().kind == ticket_kind::control)) break;
      t = ticket{};
      if (!ch.try_receive(t, ec)) {
        if (got.empty()) return start();  // the only ticket was skipped: wait for the next
        break;
      }
      if (ec) return std::move(handler)(ec, std::move(got));
    }
    std::move(handler)(error_code(), std::move(got));
  }
};

}  // namespace

void start_receive(channel& ch, asio::any_completion_handler<void(error_code, arrival)> h) {
  std::make_shared<receive_op>(ch, std::move(h))->start();
}

void start_receive_some(channel& ch, std::size_t max,
                        asio::any_completion_handler<void(error_code, std::vector<arrival>)> h) {
  std::make_shared<receive_some_op>(ch, max, std::move(h))->start();
}

}  // namespace detail
}  // namespace baton
