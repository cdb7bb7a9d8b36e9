// Balancing, the worker: receives connections as sessions, reports its load, and moves sessions
// that wait at a safe point to other workers when the dispatcher asks (rebalancing) or when it
// leaves (see balance_impl.hpp).
#include "balance/balance_impl.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>

namespace baton::balance {
namespace detail {

void worker_impl::receive() {
  // A batch per completion: the hand-offs of one busy moment cost one turn of the event loop.
  baton::async_receive_some(rx, baton::detail::receive_batch, [self = shared_from_this()](error_code ec, std::vector<arrival> got) {
    if (self->stopped || self->finished || ec == asio::error::operation_aborted) return;
    for (auto& a : got) {
      if (a.kind == ticket_kind::connection)
        self->adopt(std::move(a.conn), self->from_dispatcher(a.sender_pid));
      else if (a.kind == ticket_kind::control && self->from_dispatcher(a.sender_pid) && is_balance_ticket(a.control))
        self->on_control(a.control);
    }
    self->receive();
  });
}

void worker_impl::adopt(connection c, bool from_dispatcher) {
  ++(from_dispatcher ? st.from_dispatcher : st.from_peers);
  ++st.active;
  auto s = std::make_shared<session_state>();
  s->owner = weak_from_this();
  s->conn = std::move(c);
  s->index = o.index;
  sessions.push_front(s.get());
  s->pos = sessions.begin();
  s->registered = true;
  report();
  if (on_session) on_session(balance_access::make_session(std::move(s)));
}

void worker_impl::on_control(const ticket& t) {
  error_code ec;
  const auto m = control_message::parse(t, ec);
  if (ec) return;  // not a message of this build: ignored
  const auto op = m.op();
  if (op == "rebalance") {
    quota = static_cast<std::size_t>(m.number("n"));
    quota_keep = m.number("keep");
    quota_to = m.get("to");
    quota_until = std::chrono::steady_clock::now() + rebalance_request_life;
    sweep();
  } else if (op == "drain") {
    draining = true;
    drain_to = m.list("to");
    sweep();
  } else if (op == "dismiss") {
    dismissed = true;
  }
}

std::optional<std::string> worker_impl::target() {
  if (draining) {
    if (drain_to.empty()) return std::nullopt;
    return drain_to[drain_rr++ % drain_to.size()];
  }
  if (quota > 0 && held() > quota_keep && std::chrono::steady_clock::now() < quota_until) {
    --quota;
    return quota_to;
  }
  return std::nullopt;
}

channel* worker_impl::peer(const std::string& name) {
  auto it = peers.find(name);
  if (it != peers.end() && it->second.is_open()) return &it->second;
  channel_options copts;
  copts.on_full = full_policy::fail;
  error_code ec;
  channel ch = channel::open(ex, name, copts, ec);
  if (ec) return nullptr;
  return &(peers[name] = std::move(ch));
}

bool worker_impl::start_move(const std::shared_ptr<session_state>& s, const std::string& to) {
  channel* ch = peer(to);
  if (!ch) return false;
  s->reader.set_taken(true);
  ++moves_in_flight;
  // A pending read of ours is cancelled by the move; bytes it had taken travel as unread.
  baton::async_send(*ch, std::move(s->conn), o.move, [self = shared_from_this(), s](error_code ec, connection back) {
    --self->moves_in_flight;
    s->reader.set_taken(false);
    if (!ec) {
      s->moved = true;
      ++self->st.moved_out;
      self->report();
      s->complete(errc::session_moved);
      self->check_drained();
      return;
    }
    // The peer refused, died or is full: keep serving here, try again later.
    s->conn = std::move(back);
    if (!self->draining) self->quota = 0;
    if (s->handler) s->read();
    self->arm_sweep();
  });
  return true;
}

void worker_impl::sweep() {
  if (stopped || finished) return;
  // Oldest first (new sessions go to the front): a connection that just moved in is the last
  // to move on, so rebalancing does not bounce the same connections back and forth.
  std::vector<std::shared_ptr<session_state>> idle;
  for (auto it = sessions.rbegin(); it != sessions.rend(); ++it) {
    auto& r = (*it)->reader;
    if (r.waiting() && !r.taken() && (*it)->handler) idle.push_back((*it)->shared_from_this());
  }
  for (auto& s : idle) {
    auto to = target();
    if (!to) break;
    if (!start_move(s, *to)) break;
  }
  if (draining) {
    check_drained();
    arm_sweep();
  }
}

void worker_impl::arm_sweep() {
  if (sweep_armed || !draining || finished || stopped) return;
  sweep_armed = true;
  sweep_timer.expires_after(std::chrono::milliseconds(20));
  sweep_timer.async_wait([self = shared_from_this()](error_code ec) {
    self->sweep_armed = false;
    if (!ec) self->sweep();
  });
}

void worker_impl::check_drained() {
  if (!draining || finished || !sessions.empty() || moves_in_flight != 0) return;
  send_control(to_dispatcher, control_message("left"));
  finish({});
}

std::uint64_t worker_impl::held() const {
  const std::uint64_t in = st.from_dispatcher + st.from_peers, out = st.moved_out + st.closed + static_cast<std::uint64_t>(moves_in_flight);
  return in > out ? in - out : 0;
}

void worker_impl::report() {
  if (report_armed || stopped) return;
  report_armed = true;
  report_timer.expires_after(o.report_interval);
  report_timer.async_wait([self = shared_from_this()](error_code ec) {
    self->report_armed = false;
    if (ec) return;
    control_message m("load");
    m.set("peer", self->st.from_peers).set("out", self->st.moved_out + self->st.closed);
    send_control(self->to_dispatcher, m);
  });
}

// ---- the dispatcher, and the next one ------------------------------------------------------------

void worker_impl::watch_dispatcher() {
  dwatch.async_wait([self = shared_from_this()](error_code ec) {
    if (!ec) self->on_dispatcher_exit();
  });
}

void worker_impl::on_dispatcher_exit() {
  if (finished || stopped) return;
  if (o.rejoin_within.count() <= 0 || dismissed) return finish(errc::channel_owner_dead);
  // The front is restarting (or died): serve on, and join whoever takes its name next. Until
  // then only the exited dispatcher's last tickets are taken (a dismiss ends the wait), load
  // reports go nowhere, and moves asked for go on.
  gone_dpid = dpid;
  dpid = 0;
  // Released, not only closed: on Windows a name lives as long as any handle on it, and the next
  // dispatcher cannot create it while this one maps the old channel.
  to_dispatcher = channel();
  rejoin_until = std::chrono::steady_clock::now() + o.rejoin_within;
  look_for_dispatcher();
}

bool worker_impl::from_dispatcher(std::uint32_t pid) const {
  // Between dispatchers, the last one's tickets still count: its exit can be seen before what it
  // wrote just before (a dismiss) is read.
  return pid == dpid || (dpid == 0 && pid == gone_dpid);
}

void worker_impl::look_for_dispatcher() {
  if (finished || stopped) return;
  if (dismissed) return finish(errc::channel_owner_dead);
  error_code ec;
  channel ch = channel::open(ex, o.dispatcher, {}, ec);
  if (!ec && ch.owner_pid() != gone_dpid) {
    const std::uint32_t pid = ch.owner_pid();
    auto watch = baton::detail::process_exit_wait(ex, pid, false, ec);
    if (!ec) {
      to_dispatcher = std::move(ch);
      dpid = pid;
      dwatch = std::move(watch);
      ++st.rejoins;
      send_join(true);
      watch_dispatcher();
      return;
    }
  }
  if (std::chrono::steady_clock::now() >= rejoin_until) return finish(errc::channel_owner_dead);
  rejoin_timer.expires_after(std::chrono::milliseconds(10));
  rejoin_timer.async_wait([self = shared_from_this()](error_code e) {
    if (!e) self->look_for_dispatcher();
  });
}

void worker_impl::send_join(bool rejoin) {
  control_message join("join");
  join.set("index", std::uint64_t{o.index}).set("channel", o.channel);
  // Rejoining: what it serves, so that the new dispatcher's estimate starts right.
  if (rejoin) join.set("held", held()).set("peer", st.from_peers).set("out", st.moved_out + st.closed);
  send_control(to_dispatcher, join);
}

void worker_impl::finish(error_code ec) {
  if (finished) return;
  finished = true;
  rx.close();
  // Released, not only closed: while its handle lives (Windows) or its owner does, a next
  // dispatcher would take the slot for served and wait adopt_within before starting it.
  slot_marker = channel();
  dwatch.cancel();
  sweep_timer.cancel();
  rejoin_timer.cancel();
  post_once(ex, run_handler, ec);
}

void worker_impl::stop() {
  if (stopped) return;
  stopped = true;
  report_timer.cancel();
  finish(asio::error::operation_aborted);
}

std::shared_ptr<worker_impl> make_worker(const asio::any_io_executor& ex, worker_options opts, error_code& ec) {
  auto w = std::make_shared<worker_impl>(ex);
  w->o = std::move(opts);
  w->rx = channel::create(ex, w->o.channel, w->o.rx_options, ec);
  if (!ec) {
    // The slot's marker, for a restarted dispatcher to find this worker serving (spawn_worker):
    // what a dead worker of the slot left goes first; none if the slot has a live worker already.
    const std::string marker = slot_channel(w->o.dispatcher, w->o.index);
    error_code ignored;
    channel::remove_stale(marker, ignored);
    channel_options tiny;
    tiny.ring_bytes = 4096;
    tiny.ack_slots = 1;
    w->slot_marker = channel::create(ex, marker, tiny, ignored);
  }
  if (!ec) w->to_dispatcher = channel::open(ex, w->o.dispatcher, {}, ec);
  if (!ec) {
    w->dpid = w->to_dispatcher.owner_pid();
    w->dwatch = baton::detail::process_exit_wait(ex, w->dpid, false, ec);
  }
  if (ec) return nullptr;
  w->send_join(false);
  return w;
}

// ---- sessions -------------------------------------------------------------------------------------

session_state::~session_state() {
  if (!registered) return;
  if (auto w = owner.lock()) {
    w->sessions.erase(pos);
    --w->st.active;
    if (!moved) ++w->st.closed;
    w->report();
    // Not from inside a destructor: the application may be anywhere.
    asio::post(w->ex, [w] { w->check_drained(); });
  }
}

void session_state::read() {
  reader.async_wait(conn, shared_from_this(), [this](error_code ec) { complete(ec); });
}

void session_state::complete(error_code ec) {
  if (!handler) return;
  handler_type h(std::move(*handler));
  handler.reset();
  std::move(h)(ec);
}

}  // namespace detail

namespace asio = boost::asio;
using asio::ip::tcp;

connection& session::stream() noexcept { return st_->conn; }
bool session::is_open() const noexcept { return st_ && !st_->moved && st_->conn.is_open(); }
std::uint32_t session::worker_index() const noexcept { return st_ ? st_->index : 0; }

void session::close() {
  if (st_) st_->conn.close();
}

void session::start_wait(detail::handler_type h) {
  if (!st_ || st_->moved || st_->handler) {
    const error_code ec = !st_         ? error_code(asio::error::bad_descriptor)
                          : st_->moved ? make_error_code(errc::session_moved)
                                       : make_error_code(errc::operation_in_progress);
    auto ex = st_ ? st_->conn.get_executor() : asio::any_io_executor(asio::system_executor());
    asio::post(ex, asio::append(std::move(h), ec));
    return;
  }
  st_->handler.emplace(std::move(h));
  if (auto w = st_->owner.lock()) {
    if (!w->finished && !w->stopped) {
      if (auto to = w->target(); to && w->start_move(st_, *to)) return;
    }
  }
  st_->read();
}

// ---- the worker -----------------------------------------------------------------------------------

worker::worker(const executor_type& ex, worker_options opts, error_code& ec)
    : handle(detail::make_worker(ex, std::move(opts), ec)) {}

worker::worker(const executor_type& ex, worker_options opts)
    : handle(detail::or_throw(detail::make_worker, ex, std::move(opts), "baton::balance::worker")) {}

void worker::start_run(std::function<void(session)> f, detail::handler_type h) {
  if (!impl_) return std::move(h)(error_code(asio::error::bad_descriptor));  // moved-from
  if (impl_->finished || impl_->run_handler) {
    asio::post(impl_->ex, asio::append(std::move(h), make_error_code(errc::operation_in_progress)));
    return;
  }
  impl_->on_session = std::move(f);
  impl_->run_handler.emplace(std::move(h));
  impl_->watch_dispatcher();
  impl_->receive();
}

void worker::leave() {
  if (!impl_ || impl_->finished) return;
  detail::send_control(impl_->to_dispatcher, detail::control_message("leave"));
}

void worker::stop() {
  if (impl_) impl_->stop();
}

worker_stats worker::stats() const { return impl_->st; }
std::uint32_t worker::dispatcher_pid() const noexcept { return impl_ ? impl_->dpid : 0; }

}  // namespace baton::balance
