// Balancing, the dispatcher: accepts each connection once, optionally peeks at its first bytes,
// and hands it to the worker the policy chooses; a hand-off that comes back goes to another
// (see balance_impl.hpp).
#include "balance/balance_impl.hpp"

#include "connection_impl.hpp"
#include "detail/stream.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>
#include <cstring>

namespace baton::balance {
namespace detail {

namespace {
constexpr int kMaxTries = 16;
constexpr int kAcceptsPerTurn = 64;
}  // namespace

std::string slot_channel(const std::string& dispatcher, std::uint32_t index) {
  return dispatcher + ".w" + std::to_string(index);
}

bool is_balance_ticket(const ticket& t) {
  return t.kind == ticket_kind::control && (t.flags & 0xFFFF0000u) == kProtocol;
}

void post_once(const asio::any_io_executor& ex, std::optional<handler_type>& h, error_code ec) {
  if (!h) return;
  handler_type taken(std::move(*h));
  h.reset();
  asio::post(ex, asio::append(std::move(taken), ec));
}

void send_control(channel& ch, const control_message& m) {
  if (!ch.is_open()) return;
  ch.async_send(m.to_ticket(kProtocol), [](error_code) {});
}

dispatcher_impl::dispatcher_impl(const executor_type& e, dispatcher_options opts)
    : ex(e),
      o(std::move(opts)),
      pool(*this),
      retry_timer(e),
      full_timer(e),
      rebalance_timer(e),
      claim_timer(e),
      adopt_timer(e) {}

bool dispatcher_impl::eligible(const worker_rec& w) const {
  return w.live() && !w.full && w.info.in_flight < o.max_in_flight;
}

// ---- accepting --------------------------------------------------------------------------------

void dispatcher_impl::accept_next() {
  if (!accepting && may_accept()) start_accept();
}

bool dispatcher_impl::may_accept() {
  if (stopped || !running || (!acc && !src) || drain_handler) return false;
  const bool any_eligible =
      std::any_of(pool.workers.begin(), pool.workers.end(), [&](auto& w) { return eligible(*w); });
  if (!waiting.empty() || !any_eligible) {
    // Saturated: stop accepting; the kernel's backlog holds new clients until a worker frees up.
    if (!paused) {
      paused = true;
      ++st.pauses;
    }
    return false;
  }
  paused = false;
  if (o.max_peeking != 0 && peeking >= o.max_peeking) {
    // Each peek holds a descriptor until its client has sent enough or peek_timeout passes: a
    // crowd of slow clients would otherwise hold as many as it likes. The backlog holds the rest.
    if (!peek_paused) {
      peek_paused = true;
      ++st.peek_pauses;
    }
    return false;
  }
  peek_paused = false;
  return true;
}

void dispatcher_impl::start_accept() {
  accepting = true;
  if (src) {
    src([self = shared_from_this()](error_code ec, connection c) {
      self->accepting = false;
      self->on_accept(ec, std::move(c));
    });
    return;
  }
  if (!o.peek && baton::detail::can_accept_detached()) return accept_backlog();
  acc->async_accept([self = shared_from_this()](error_code ec, tcp::socket s) {
    self->accepting = false;
    self->on_accept(ec, ec ? connection() : connection(std::move(s)));
  });
}

// Linux, no peeking: takes what waits in the backlog in this turn, each connection outside the
// reactor (it is handed on at once: no epoll registration to make and undo, no completion to post
// per connection), and waits for the listener to be readable only once the backlog is empty. At
// most kAcceptsPerTurn, then the rest in the next turn, so that verdicts and timers get their turn.
void dispatcher_impl::accept_backlog() {
  for (int n = 0; n < kAcceptsPerTurn; ++n) {
    error_code ec;
    const auto h = baton::detail::accept_detached(*acc, ec);
    if (ec == asio::error::would_block) {
      acc->async_wait(tcp::acceptor::wait_read, [self = shared_from_this()](error_code e) {
        self->accepting = false;
        if (e) return self->on_accept(e, connection());
        self->accept_next();
      });
      return;
    }
    if (ec) {
      accepting = false;
      return on_accept(ec, connection());
    }
    // `accepting` stays set: on_accept's own call of accept_next() returns at once.
    on_accept(ec, baton::detail::connection_access::wrap(std::make_shared<baton::detail::connection_impl>(
                      ex, baton::detail::make_detached_stream(ex, h))));
    if (!may_accept()) {
      accepting = false;
      return;
    }
  }
  asio::post(ex, [self = shared_from_this()] {
    self->accepting = false;
    self->accept_next();
  });
}

void dispatcher_impl::on_accept(error_code ec, connection c) {
  if (stopped) return;
  if (ec) {
    if (ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor) return finish_run(ec);
    // Out of descriptors, a client that reset before we took it, ...: transient. Try again shortly.
    retry_timer.expires_after(std::chrono::milliseconds(10));
    retry_timer.async_wait([self = shared_from_this()](error_code e) {
      if (!e) self->accept_next();
    });
    return;
  }
  ++st.accepted;
  if (o.no_delay && !no_delay_inherited)
    if (auto* s = c.socket()) s->set_option(tcp::no_delay(true), ec);
  pending_conn p;
  if (o.policy == policy::client_hash || o.policy == policy::custom) {
    error_code ignored;
    p.client = c.remote_endpoint(ignored);
  }
  p.conn = std::move(c);
  if (o.peek) {
    ++peeking;
    start_peek(std::make_shared<pending_conn>(std::move(p)));
  } else {
    dispatch(std::move(p));
  }
  accept_next();
}

void dispatcher_impl::start_peek(std::shared_ptr<pending_conn> p) {
  auto timer = std::make_shared<asio::steady_timer>(ex, o.peek_timeout);
  timer->async_wait([p](error_code ec) {
    if (!ec) p->conn.cancel();
  });
  peek_more(std::move(p), std::move(timer));
}

void dispatcher_impl::peek_more(std::shared_ptr<pending_conn> p, std::shared_ptr<asio::steady_timer> timer) {
  const std::size_t have = p->first.size();
  if (have >= o.peek_max || o.peek(p->first)) return peek_done(std::move(p), std::move(timer));
  p->first.resize(o.peek_max);
  p->conn.async_read_some(asio::buffer(p->first.data() + have, o.peek_max - have),
                          [self = shared_from_this(), p, timer, have](error_code ec, std::size_t n) mutable {
                            p->first.resize(have + n);
                            if (ec || self->stopped) return self->peek_done(std::move(p), std::move(timer));
                            self->peek_more(std::move(p), std::move(timer));
                          });
}

void dispatcher_impl::peek_done(std::shared_ptr<pending_conn> p, std::shared_ptr<asio::steady_timer> timer) {
  timer->cancel();
  --peeking;
  // Whatever was read travels with the connection; a client that closed or timed out is still
  // handed over (the worker sees its bytes, then the end of the stream).
  if (!p->first.empty()) p->conn.push_front_unread(p->first.data(), p->first.size());
  if (stopped) return;
  check_drained();
  dispatch(std::move(*p));
  accept_next();  // a peek slot is free
}

// ---- handing off ----------------------------------------------------------------------------

void dispatcher_impl::dispatch(pending_conn p) {
  auto w = choose_worker(o, pool.workers, rr, p, [this](const worker_rec& w) { return eligible(w); });
  if (!w) {
    waiting.push_back(std::move(p));
    return;
  }
  send_to(w, std::move(p));
}

void dispatcher_impl::send_to(const worker_ptr& w, pending_conn p) {
  ++w->info.in_flight;
  connection c = std::move(p.conn);
  baton::async_send(w->ch, std::move(c), o.move,
                    [self = shared_from_this(), w, p = std::move(p)](error_code ec, connection back) mutable {
                      p.conn = std::move(back);
                      self->verdict(w, ec, std::move(p));
                    });
}

void dispatcher_impl::verdict(const worker_ptr& w, error_code ec, pending_conn p) {
  --w->info.in_flight;
  if (!ec) {
    ++w->info.dispatched;
    ++st.dispatched;
    w->full = false;
  } else {
    // The hand-off was a transaction: the connection is back here, intact. Give it to another.
    ++st.taken_back;
    if (ec == errc::target_died || ec == errc::channel_owner_dead) w->dead = true;
    if (ec == errc::channel_full || ec == errc::no_free_ack_slot || ec == errc::move_timeout) mark_full(w);
    if (!p.conn.is_open() || ++p.tries >= kMaxTries || stopped) {
      ++st.dropped;
      p.conn.close();
    } else {
      waiting.push_front(std::move(p));
    }
  }
  pool.maybe_erase(w);
  pump();
  check_drained();
}

// A worker whose ring is full (or that let a hand-off time out) is skipped for a moment.
void dispatcher_impl::mark_full(const worker_ptr& w) {
  w->full = true;
  if (full_timer_armed) return;
  full_timer_armed = true;
  full_timer.expires_after(std::chrono::milliseconds(5));
  full_timer.async_wait([self = shared_from_this()](error_code ec) {
    self->full_timer_armed = false;
    if (ec || self->stopped) return;
    for (auto& x : self->pool.workers) x->full = false;
    self->pump();
  });
}

void dispatcher_impl::pump() {
  if (stopped) return;
  while (!waiting.empty()) {
    auto w = choose_worker(o, pool.workers, rr, waiting.front(), [this](const worker_rec& w) { return eligible(w); });
    if (!w) break;
    pending_conn p = std::move(waiting.front());
    waiting.pop_front();
    send_to(w, std::move(p));
  }
  accept_next();
}

// ---- control ----------------------------------------------------------------------------------

void dispatcher_impl::receive_control() {
  receiving = true;
  baton::async_receive(ctl, [self = shared_from_this()](error_code ec, arrival a) {
    self->receiving = false;
    if (self->stopped || ec == asio::error::operation_aborted) return;
    if (!ec && a.kind == ticket_kind::control && is_balance_ticket(a.control)) self->on_control(a.control);
    self->receive_control();
  });
}

void dispatcher_impl::on_control(const ticket& t) {
  error_code ec;
  const auto m = control_message::parse(t, ec);
  if (ec) return;  // not a message of this build: ignored
  const auto op = m.op();
  if (op == "join") return pool.on_join(t.sender_pid, m);
  if (op == "load") {
    if (auto w = pool.by_pid(t.sender_pid)) {
      w->peer_in = std::max(w->peer_in, m.number("peer"));
      w->departed = std::max(w->departed, m.number("out"));
    }
  } else if (op == "leave") {
    if (auto w = pool.by_pid(t.sender_pid)) {
      w->info.leaving = true;
      pool.send_drains();
    }
  } else if (op == "left") {
    // The worker may have exited already: its last ticket can be read after its exit.
    if (auto w = pool.by_pid(t.sender_pid, true)) {
      w->left = true;
      w->info.leaving = true;
    }
  }
}

void dispatcher_impl::arm_auto_rebalance() {
  if (o.auto_rebalance.count() <= 0 || stopped) return;
  rebalance_timer.expires_after(o.auto_rebalance);
  rebalance_timer.async_wait([self = shared_from_this()](error_code ec) {
    if (ec || self->stopped) return;
    self->pool.rebalance();
    self->arm_auto_rebalance();
  });
}

}  // namespace detail

namespace asio = boost::asio;
using asio::ip::tcp;

// ---- public API ---------------------------------------------------------------------------------

dispatcher::dispatcher(const executor_type& ex, dispatcher_options opts, error_code& ec)
    : handle(detail::make_dispatcher(ex, std::move(opts), ec)) {}

dispatcher::dispatcher(const executor_type& ex, dispatcher_options opts)
    : handle(detail::or_throw(detail::make_dispatcher, ex, std::move(opts), "baton::balance::dispatcher")) {}

const std::string& dispatcher::name() const noexcept { return impl_->o.name; }
bool dispatcher::took_over() const noexcept { return impl_ && impl_->took_over; }

void dispatcher::dismiss_workers() {
  if (!impl_) return;
  for (auto& w : impl_->pool.workers)
    if (!w->dead) detail::send_control(w->ch, detail::control_message("dismiss"));
}

std::uint32_t dispatcher::spawn_worker(const std::string& exe, const std::vector<std::string>& args, error_code& ec) {
  return impl_->pool.spawn(exe, args, ec);
}

void dispatcher::start_run(tcp::acceptor* acc, connection_source src, detail::handler_type h) {
  if (!impl_) return std::move(h)(error_code(asio::error::bad_descriptor));  // moved-from
  if (impl_->stopped) {
    asio::post(impl_->ex, asio::append(std::move(h), error_code(asio::error::operation_aborted)));
    return;
  }
  if (impl_->running) {
    asio::post(impl_->ex, asio::append(std::move(h), make_error_code(errc::operation_in_progress)));
    return;
  }
  impl_->acc = acc;
  impl_->src = std::move(src);
  impl_->running = true;
  if (acc && impl_->o.no_delay && baton::detail::accepted_socket_inherits_no_delay()) {
    error_code ec;
    acc->set_option(tcp::no_delay(true), ec);
    impl_->no_delay_inherited = !ec;
  }
  impl_->run_handler.emplace(std::move(h));
  impl_->arm_auto_rebalance();
  impl_->accept_next();
}

void dispatcher::start_wait_workers(std::size_t n, detail::handler_type h) {
  if (!impl_) return std::move(h)(error_code(asio::error::bad_descriptor));  // moved-from
  if (impl_->stopped) {
    asio::post(impl_->ex, asio::append(std::move(h), error_code(asio::error::operation_aborted)));
    return;
  }
  impl_->pool.add_waiter(n, std::move(h));
}

void dispatcher::start_drain(detail::handler_type h) {
  if (!impl_) return std::move(h)(error_code(asio::error::bad_descriptor));  // moved-from
  if (impl_->stopped || impl_->drain_handler) {
    const error_code ec = impl_->stopped ? error_code(asio::error::operation_aborted) : make_error_code(errc::operation_in_progress);
    asio::post(impl_->ex, asio::append(std::move(h), ec));
    return;
  }
  impl_->drain_handler.emplace(std::move(h));
  // An accept of our own is cancelled; a source's pending accept is the source's to end (what it
  // delivers after the drain is closed).
  if (impl_->acc) {
    error_code ignored;
    impl_->acc->cancel(ignored);
  }
  impl_->accepting = false;
  impl_->check_drained();
}

std::vector<worker_info> dispatcher::workers() const {
  std::vector<worker_info> out;
  for (auto& w : impl_->pool.workers) {
    if (w->dead) continue;
    out.push_back(w->info);
    out.back().active = w->active();
    out.back().moved_in = w->peer_in;
    out.back().departed = w->departed;
  }
  return out;
}

dispatcher_stats dispatcher::stats() const {
  auto s = impl_->st;
  s.peeking = impl_->peeking;
  return s;
}
std::size_t dispatcher::rebalance() { return impl_->pool.rebalance(); }

bool dispatcher::rebalance(std::uint32_t from, std::uint32_t to, std::size_t count) {
  auto f = impl_->pool.by_id(from), t = impl_->pool.by_id(to);
  if (!f || !t || !f->live() || !t->live() || f == t) return false;
  impl_->pool.ask_move(f, t, count);
  return true;
}

bool dispatcher::remove_worker(std::uint32_t id) {
  auto w = impl_->pool.by_id(id);
  if (!w || w->dead) return false;
  w->info.leaving = true;
  impl_->pool.send_drains();
  return true;
}

void dispatcher::stop() {
  if (impl_) impl_->stop();
}

}  // namespace baton::balance
