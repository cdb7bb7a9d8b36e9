#include "baton/balance.hpp"

#include "baton/spawn.hpp"
#include "detail/platform.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <set>

namespace baton::balance {

namespace asio = boost::asio;
using asio::ip::tcp;
using handler_type = asio::any_completion_handler<void(error_code)>;

namespace {

// Control tickets of this protocol carry kMagic in the high half of `flags` and the opcode in
// the low half; `state` holds "key=value" words separated by spaces.
constexpr std::uint32_t kMagic = 0xBA1A0000u;
enum op : std::uint32_t {
  op_join = 1,       // worker -> dispatcher: index=N channel=NAME
  op_load = 2,       // worker -> dispatcher: peer=N out=N (monotonic totals)
  op_leave = 3,      // worker -> dispatcher: please stop sending, tell me where to drain
  op_left = 4,       // worker -> dispatcher: drained, leaving
  op_rebalance = 5,  // dispatcher -> worker: n=N to=CHANNEL
  op_drain = 6,      // dispatcher -> worker: to=CH1,CH2,... (possibly empty: wait for a peer)
};

ticket control_ticket(op o, const std::string& text) {
  ticket t;
  t.kind = ticket_kind::control;
  t.method = transfer_method::none;
  t.id = ticket_id::random();
  t.flags = kMagic | o;
  t.state.resize(text.size());
  if (!text.empty()) std::memcpy(t.state.data(), text.data(), text.size());  // data() may be null
  return t;
}

std::string text_of(const ticket& t) {
  return std::string(reinterpret_cast<const char*>(t.state.data()), t.state.size());
}

// The value of `key` in a "k=v k=v" message, or "".
std::string field(const std::string& msg, std::string_view key) {
  std::size_t pos = 0;
  while (pos < msg.size()) {
    std::size_t end = msg.find(' ', pos);
    if (end == std::string::npos) end = msg.size();
    std::string_view word(msg.data() + pos, end - pos);
    if (word.size() > key.size() && word.substr(0, key.size()) == key && word[key.size()] == '=')
      return std::string(word.substr(key.size() + 1));
    pos = end + 1;
  }
  return {};
}

std::uint64_t number(const std::string& s) {
  std::uint64_t v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  return v;
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < s.size()) {
    std::size_t end = s.find(',', pos);
    if (end == std::string::npos) end = s.size();
    if (end > pos) out.emplace_back(s.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

// Rendezvous hashing: each (client address, worker index) pair gets a score and the highest
// wins, so a worker that leaves moves only its own clients.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
std::uint64_t address_key(const tcp::endpoint& ep) {
  std::uint64_t h = 0xCBF29CE484222325ull;
  if (ep.address().is_v4()) {
    h = mix(h ^ ep.address().to_v4().to_uint());
  } else {
    for (auto b : ep.address().to_v6().to_bytes()) h = (h ^ b) * 0x100000001B3ull;
  }
  return h;
}

void send_control(channel& ch, op o, const std::string& text) {
  if (!ch.is_open()) return;
  // Control messages are advisory or repeated on the next change; a full ring only delays them.
  ch.async_send(control_ticket(o, text), [](error_code) {});
}

}  // namespace

bool parse_policy(std::string_view text, policy& out) noexcept {
  std::string s(text);
  std::replace(s.begin(), s.end(), '_', '-');
  if (s == "round-robin" || s == "rr") out = policy::round_robin;
  else if (s == "least-connections" || s == "least-conn" || s == "lc") out = policy::least_connections;
  else if (s == "client-hash" || s == "hash") out = policy::client_hash;
  else if (s == "custom") out = policy::custom;
  else return false;
  return true;
}

const char* to_string(policy p) noexcept {
  switch (p) {
    case policy::round_robin: return "round-robin";
    case policy::least_connections: return "least-connections";
    case policy::client_hash: return "client-hash";
    case policy::custom: return "custom";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// Dispatcher

namespace {

struct worker_rec {
  worker_info info;
  channel ch;
  detail::process_exit_wait exit;
  std::uint64_t peer_in = 0, departed = 0;  // from the worker's latest load report
  bool dead = false, left = false, full = false, removed = false;
  bool judged = false;  // after its exit, decided whether it left or died

  std::uint64_t active() const {
    const std::uint64_t in = info.dispatched + peer_in;
    return in > departed ? in - departed : 0;
  }
};

// An accepted connection on its way to a worker.
struct pending_conn {
  connection conn;
  tcp::endpoint client;
  std::vector<std::byte> first;
  int tries = 0;
};

struct spawn_slot {
  std::string exe;
  std::vector<std::string> args;
};

constexpr int kMaxTries = 16;

}  // namespace

struct dispatcher::impl : std::enable_shared_from_this<dispatcher::impl> {
  executor_type ex;
  dispatcher_options o;
  channel ctl;
  std::vector<std::shared_ptr<worker_rec>> workers;
  std::map<std::uint32_t, spawn_slot> slots;
  std::set<std::uint32_t> children;  // pids this dispatcher started (reaped on exit)
  std::uint32_t next_slot = 0, next_id = 1;
  std::deque<pending_conn> waiting;  // accepted, not yet with a worker
  tcp::acceptor* acc = nullptr;
  bool accepting = false, paused = false, running = false, stopped = false, receiving = false;
  bool peek_paused = false;
  std::size_t peeking = 0;  // accepted connections whose first bytes are being read
  std::optional<handler_type> run_handler;
  std::list<std::pair<std::size_t, handler_type>> worker_waiters;
  dispatcher_stats st;
  std::size_t rr = 0;
  asio::steady_timer retry_timer, full_timer, rebalance_timer;
  bool full_timer_armed = false;
  bool no_delay_inherited = false;  // set on the acceptor, inherited by accepted sockets

  impl(const executor_type& e, dispatcher_options opts)
      : ex(e), o(std::move(opts)), retry_timer(e), full_timer(e), rebalance_timer(e) {}

  // -- choosing ---------------------------------------------------------------------------
  bool eligible(const worker_rec& w) const {
    return !w.dead && !w.left && !w.info.leaving && !w.full && w.info.in_flight < o.max_in_flight;
  }
  bool any_eligible() const {
    return std::any_of(workers.begin(), workers.end(), [&](auto& w) { return eligible(*w); });
  }

  std::shared_ptr<worker_rec> pick(const pending_conn& p) {
    const std::size_t n = workers.size();
    if (n == 0) return nullptr;
    switch (o.policy) {
      case policy::least_connections: {
        std::shared_ptr<worker_rec> best;
        std::uint64_t best_load = 0;
        for (std::size_t k = 0; k < n; ++k) {
          auto& w = workers[(rr + k) % n];
          if (!eligible(*w)) continue;
          const std::uint64_t load = w->active() + w->info.in_flight;
          if (!best || load < best_load) {
            best = w;
            best_load = load;
          }
        }
        ++rr;
        return best;
      }
      case policy::client_hash: {
        std::shared_ptr<worker_rec> best;
        std::uint64_t best_score = 0;
        const std::uint64_t key = address_key(p.client);
        for (auto& w : workers) {
          if (!eligible(*w)) continue;
          const std::uint64_t score = mix(key ^ mix(w->info.index + 1));
          if (!best || score > best_score) {
            best = w;
            best_score = score;
          }
        }
        return best;
      }
      case policy::custom:
        if (o.pick) {
          std::vector<worker_info> infos;
          std::vector<std::shared_ptr<worker_rec>> recs;
          for (auto& w : workers) {
            if (!eligible(*w)) continue;
            infos.push_back(w->info);
            infos.back().active = w->active();
            recs.push_back(w);
          }
          if (recs.empty()) return nullptr;
          const std::size_t k = o.pick(pick_context{p.client, p.first, infos});
          if (k < recs.size()) return recs[k];
        }
        [[fallthrough]];
      case policy::round_robin:
        for (std::size_t k = 0; k < n; ++k) {
          auto& w = workers[(rr + k) % n];
          if (eligible(*w)) {
            rr = (rr + k + 1) % n;
            return w;
          }
        }
        return nullptr;
    }
    return nullptr;
  }

  // -- accepting --------------------------------------------------------------------------
  void accept_next() {
    if (stopped || !running || accepting || !acc) return;
    if (!waiting.empty() || !any_eligible()) {
      // Saturated: stop accepting; the kernel's backlog holds new clients until a worker frees up.
      if (!paused) {
        paused = true;
        ++st.pauses;
      }
      return;
    }
    paused = false;
    if (o.max_peeking != 0 && peeking >= o.max_peeking) {
      // Each peek holds a descriptor until its client has sent enough or peek_timeout passes: a
      // crowd of slow clients would otherwise hold as many as it likes. The backlog holds the rest.
      if (!peek_paused) {
        peek_paused = true;
        ++st.peek_pauses;
      }
      return;
    }
    peek_paused = false;
    accepting = true;
    acc->async_accept([self = shared_from_this()](error_code ec, tcp::socket s) {
      self->accepting = false;
      self->on_accept(ec, std::move(s));
    });
  }

  void on_accept(error_code ec, tcp::socket s) {
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
    if (o.no_delay && !no_delay_inherited) s.set_option(tcp::no_delay(true), ec);
    pending_conn p;
    if (o.policy == policy::client_hash || o.policy == policy::custom) {
      error_code ignored;
      p.client = s.remote_endpoint(ignored);
    }
    p.conn = connection(std::move(s));
    if (o.peek) {
      ++peeking;
      start_peek(std::make_shared<pending_conn>(std::move(p)));
    }
    else
      dispatch(std::move(p));
    accept_next();
  }

  void start_peek(std::shared_ptr<pending_conn> p) {
    auto timer = std::make_shared<asio::steady_timer>(ex, o.peek_timeout);
    timer->async_wait([p](error_code ec) {
      if (!ec) p->conn.cancel();
    });
    peek_more(std::move(p), std::move(timer));
  }

  void peek_more(std::shared_ptr<pending_conn> p, std::shared_ptr<asio::steady_timer> timer) {
    const std::size_t have = p->first.size();
    if (have >= o.peek_max || o.peek(p->first)) return peek_done(std::move(p), std::move(timer));
    p->first.resize(o.peek_max);
    p->conn.async_read_some(
        asio::buffer(p->first.data() + have, o.peek_max - have),
        [self = shared_from_this(), p, timer, have](error_code ec, std::size_t n) mutable {
          p->first.resize(have + n);
          if (ec || self->stopped) return self->peek_done(std::move(p), std::move(timer));
          self->peek_more(std::move(p), std::move(timer));
        });
  }

  void peek_done(std::shared_ptr<pending_conn> p, std::shared_ptr<asio::steady_timer> timer) {
    timer->cancel();
    --peeking;
    // Whatever was read travels with the connection; a client that closed or timed out is still
    // handed over (the worker sees its bytes, then the end of the stream).
    if (!p->first.empty()) p->conn.push_front_unread(p->first.data(), p->first.size());
    if (stopped) return;
    dispatch(std::move(*p));
    accept_next();  // a peek slot is free
  }

  void dispatch(pending_conn p) {
    auto w = pick(p);
    if (!w) {
      waiting.push_back(std::move(p));
      return;
    }
    send_to(w, std::move(p));
  }

  void send_to(const std::shared_ptr<worker_rec>& w, pending_conn p) {
    ++w->info.in_flight;
    connection c = std::move(p.conn);
    baton::async_send(w->ch, std::move(c), o.move,
                      [self = shared_from_this(), w, p = std::move(p)](error_code ec, connection back) mutable {
                        p.conn = std::move(back);
                        self->verdict(w, ec, std::move(p));
                      });
  }

  void verdict(const std::shared_ptr<worker_rec>& w, error_code ec, pending_conn p) {
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
    maybe_erase(w);
    pump();
  }

  // A worker whose ring is full (or that let a hand-off time out) is skipped for a moment.
  void mark_full(const std::shared_ptr<worker_rec>& w) {
    w->full = true;
    if (full_timer_armed) return;
    full_timer_armed = true;
    full_timer.expires_after(std::chrono::milliseconds(5));
    full_timer.async_wait([self = shared_from_this()](error_code ec) {
      self->full_timer_armed = false;
      if (ec || self->stopped) return;
      for (auto& x : self->workers) x->full = false;
      self->pump();
    });
  }

  void pump() {
    if (stopped) return;
    while (!waiting.empty()) {
      auto w = pick(waiting.front());
      if (!w) break;
      pending_conn p = std::move(waiting.front());
      waiting.pop_front();
      send_to(w, std::move(p));
    }
    accept_next();
  }

  // -- workers ----------------------------------------------------------------------------
  std::shared_ptr<worker_rec> by_pid(std::uint32_t pid, bool even_dead = false) {
    for (auto& w : workers)
      if (w->info.pid == pid && (even_dead || !w->dead)) return w;
    return nullptr;
  }
  std::shared_ptr<worker_rec> by_id(std::uint32_t id) {
    for (auto& w : workers)
      if (w->info.id == id) return w;
    return nullptr;
  }

  void receive_control() {
    receiving = true;
    baton::async_receive(ctl, [self = shared_from_this()](error_code ec, arrival a) {
      self->receiving = false;
      if (self->stopped || ec == asio::error::operation_aborted) return;
      if (!ec && a.kind == ticket_kind::control && (a.control.flags & 0xFFFF0000u) == kMagic)
        self->on_control(a.control);
      self->receive_control();
    });
  }

  void on_control(const ticket& t) {
    const std::string msg = text_of(t);
    switch (t.flags & 0xFFFFu) {
      case op_join: return on_join(t.sender_pid, msg);
      case op_load:
        if (auto w = by_pid(t.sender_pid)) {
          w->peer_in = std::max(w->peer_in, number(field(msg, "peer")));
          w->departed = std::max(w->departed, number(field(msg, "out")));
        }
        return;
      case op_leave:
        if (auto w = by_pid(t.sender_pid)) {
          w->info.leaving = true;
          send_drains();
        }
        return;
      case op_left:
        // The worker may have exited already: its last ticket can be read after its exit.
        if (auto w = by_pid(t.sender_pid, true)) {
          w->left = true;
          w->info.leaving = true;
        }
        return;
      default:
        return;
    }
  }

  void on_join(std::uint32_t pid, const std::string& msg) {
    auto w = std::make_shared<worker_rec>();
    w->info.id = next_id++;
    w->info.index = static_cast<std::uint32_t>(number(field(msg, "index")));
    w->info.pid = pid;
    w->info.channel = field(msg, "channel");
    channel_options copts;
    copts.on_full = full_policy::fail;  // a full worker is skipped, not waited for
    copts.ack_spin = o.ack_spin;
    copts.ack_poll_first = copts.ack_poll_max = o.ack_poll;
    error_code ec;
    w->ch = channel::open(ex, w->info.channel, copts, ec);
    if (ec) return;  // gone already, or not a channel of ours: ignore the join
    w->exit = detail::process_exit_wait(ex, pid, children.count(pid) != 0, ec);
    if (ec) return;
    w->exit.async_wait([self = shared_from_this(), w](error_code e) {
      if (!e) self->on_exit(w);
    });
    workers.push_back(w);
    ++st.worker_joins;
    notify_waiters();
    send_drains();
    pump();
  }

  void on_exit(const std::shared_ptr<worker_rec>& w) {
    if (w->removed) return;
    w->dead = true;
    children.erase(w->info.pid);
    // A worker that left wrote its "left" ticket before exiting, but the exit may be seen before
    // the ticket: read what is in the control ring now, then tell leaving from dying.
    ticket t;
    error_code ec;
    while (ctl.try_receive(t, ec))
      if (!ec && t.kind == ticket_kind::control && (t.flags & 0xFFFF0000u) == kMagic) on_control(t);
    w->judged = true;
    if (!w->left && !stopped) on_death(w);
    maybe_erase(w);
    send_drains();
    pump();
  }

  void on_death(const std::shared_ptr<worker_rec>& w) {
    ++st.worker_deaths;
    // Only workers this dispatcher started can be started again: it knows their command.
    auto it = slots.find(w->info.index);
    if (!o.restart_dead_workers || w->info.leaving || it == slots.end()) return;
    error_code ec;
    if (start_process(w->info.index, it->second, ec)) ++st.restarts;
  }

  void maybe_erase(const std::shared_ptr<worker_rec>& w) {
    if (!w->dead || !w->judged || w->info.in_flight != 0 || w->removed) return;
    w->removed = true;
    w->exit.cancel();
    w->ch.close();
    // A worker that was killed could not remove its channel's names; its owner is dead now, so
    // remove_stale may (it refuses while an owner lives).
    error_code ignored;
    channel::remove_stale(w->info.channel, ignored);
    workers.erase(std::remove(workers.begin(), workers.end(), w), workers.end());
  }

  // Tells every leaving worker where its connections may go (re-sent when workers come and go).
  void send_drains() {
    for (auto& w : workers) {
      if (!w->info.leaving || w->dead || w->left) continue;
      std::string to;
      for (auto& x : workers) {
        if (x == w || x->dead || x->left || x->info.leaving) continue;
        if (!to.empty()) to += ',';
        to += x->info.channel;
      }
      send_control(w->ch, op_drain, "to=" + to);
    }
  }

  void notify_waiters() {
    std::size_t live = 0;
    for (auto& w : workers)
      if (!w->dead && !w->left && !w->info.leaving) ++live;
    for (auto it = worker_waiters.begin(); it != worker_waiters.end();) {
      if (it->first <= live) {
        handler_type h(std::move(it->second));
        it = worker_waiters.erase(it);
        asio::post(ex, asio::append(std::move(h), error_code()));
      } else {
        ++it;
      }
    }
  }

  bool start_process(std::uint32_t index, const spawn_slot& s, error_code& ec) {
    std::vector<std::string> args = s.args;
    for (auto& a : args) {
      for (auto [key, value] : {std::pair<std::string, std::string>{"{index}", std::to_string(index)},
                                std::pair<std::string, std::string>{"{dispatcher}", ctl.name()}}) {
        for (auto pos = a.find(key); pos != std::string::npos; pos = a.find(key, pos + value.size()))
          a.replace(pos, key.size(), value);
      }
    }
    auto p = spawn_with_handles(s.exe, args, {}, ec);
    if (ec) return false;
    children.insert(p.pid);
    return true;
  }

  std::size_t rebalance() {
    std::shared_ptr<worker_rec> hi, lo;
    for (auto& w : workers) {
      if (w->dead || w->left || w->info.leaving) continue;
      if (!hi || w->active() > hi->active()) hi = w;
      if (!lo || w->active() < lo->active()) lo = w;
    }
    if (!hi || hi == lo || hi->active() < lo->active() + 2) return 0;
    const std::size_t n = (hi->active() - lo->active()) / 2;
    ask_move(hi, lo, n);
    return n;
  }

  void ask_move(const std::shared_ptr<worker_rec>& from, const std::shared_ptr<worker_rec>& to, std::size_t n) {
    st.rebalance_moves += n;
    send_control(from->ch, op_rebalance, "n=" + std::to_string(n) + " to=" + to->info.channel);
  }

  void arm_auto_rebalance() {
    if (o.auto_rebalance.count() <= 0 || stopped) return;
    rebalance_timer.expires_after(o.auto_rebalance);
    rebalance_timer.async_wait([self = shared_from_this()](error_code ec) {
      if (ec || self->stopped) return;
      self->rebalance();
      self->arm_auto_rebalance();
    });
  }

  void finish_run(error_code ec) {
    running = false;
    if (run_handler) {
      handler_type h(std::move(*run_handler));
      run_handler.reset();
      asio::post(ex, asio::append(std::move(h), ec));
    }
  }

  void stop() {
    if (stopped) return;
    stopped = true;
    if (acc) {
      error_code ignored;
      acc->cancel(ignored);
    }
    retry_timer.cancel();
    full_timer.cancel();
    rebalance_timer.cancel();
    for (auto& w : workers) w->exit.cancel();
    ctl.close();
    waiting.clear();  // connections no worker could take: closed
    finish_run(asio::error::operation_aborted);
    for (auto& [n, h] : worker_waiters) asio::post(ex, asio::append(std::move(h), error_code(asio::error::operation_aborted)));
    worker_waiters.clear();
  }
};

dispatcher::dispatcher(const executor_type& ex, dispatcher_options opts, error_code& ec)
    : impl_(std::make_shared<impl>(ex, std::move(opts))) {
  impl_->ctl = channel::create(ex, impl_->o.name, {}, ec);
  if (ec) {
    impl_.reset();
    return;
  }
  impl_->receive_control();
}

dispatcher::dispatcher(const executor_type& ex, dispatcher_options opts) {
  error_code ec;
  dispatcher d(ex, std::move(opts), ec);
  if (ec) throw system_error(ec, "baton::balance::dispatcher");
  impl_ = std::move(d.impl_);
}

dispatcher::dispatcher(dispatcher&&) noexcept = default;
dispatcher& dispatcher::operator=(dispatcher&& o) noexcept {
  if (this != &o) {
    if (impl_) impl_->stop();
    impl_ = std::move(o.impl_);
  }
  return *this;
}
dispatcher::~dispatcher() {
  if (impl_) impl_->stop();
}

dispatcher::executor_type dispatcher::get_executor() const { return impl_->ex; }
const std::string& dispatcher::name() const noexcept { return impl_->ctl.name(); }

std::uint32_t dispatcher::spawn_worker(const std::string& exe, const std::vector<std::string>& args, error_code& ec) {
  const std::uint32_t index = impl_->next_slot++;
  spawn_slot s{exe, args};
  if (!impl_->start_process(index, s, ec)) return index;
  impl_->slots.emplace(index, std::move(s));
  return index;
}

void dispatcher::start_run(tcp::acceptor& acc, handler_type h) {
  if (!impl_ || impl_->stopped) {
    const error_code ec = impl_ ? error_code(asio::error::operation_aborted) : error_code(asio::error::bad_descriptor);
    asio::post(impl_ ? impl_->ex : acc.get_executor(), asio::append(std::move(h), ec));
    return;
  }
  if (impl_->running) {
    asio::post(impl_->ex, asio::append(std::move(h), make_error_code(errc::operation_in_progress)));
    return;
  }
  impl_->acc = &acc;
  impl_->running = true;
  if (impl_->o.no_delay && detail::accepted_socket_inherits_no_delay()) {
    error_code ec;
    acc.set_option(tcp::no_delay(true), ec);
    impl_->no_delay_inherited = !ec;
  }
  impl_->run_handler.emplace(std::move(h));
  impl_->arm_auto_rebalance();
  impl_->accept_next();
}

void dispatcher::start_wait_workers(std::size_t n, handler_type h) {
  if (!impl_) return std::move(h)(error_code(asio::error::bad_descriptor));  // moved-from
  if (impl_->stopped) {
    asio::post(impl_->ex, asio::append(std::move(h), error_code(asio::error::operation_aborted)));
    return;
  }
  impl_->worker_waiters.emplace_back(n, std::move(h));
  impl_->notify_waiters();
}

std::vector<worker_info> dispatcher::workers() const {
  std::vector<worker_info> out;
  for (auto& w : impl_->workers) {
    if (w->dead) continue;
    out.push_back(w->info);
    out.back().active = w->active();
  }
  return out;
}

dispatcher_stats dispatcher::stats() const {
  auto s = impl_->st;
  s.peeking = impl_->peeking;
  return s;
}
std::size_t dispatcher::rebalance() { return impl_->rebalance(); }

bool dispatcher::rebalance(std::uint32_t from, std::uint32_t to, std::size_t count) {
  auto f = impl_->by_id(from), t = impl_->by_id(to);
  auto usable = [](const std::shared_ptr<worker_rec>& w) { return w && !w->dead && !w->left && !w->info.leaving; };
  if (!usable(f) || !usable(t) || f == t) return false;
  impl_->ask_move(f, t, count);
  return true;
}

bool dispatcher::remove_worker(std::uint32_t id) {
  auto w = impl_->by_id(id);
  if (!w || w->dead) return false;
  w->info.leaving = true;
  impl_->send_drains();
  return true;
}

void dispatcher::stop() {
  if (impl_) impl_->stop();
}

// ---------------------------------------------------------------------------------------------
// Worker and sessions

struct session::state : std::enable_shared_from_this<session::state> {
  std::weak_ptr<worker::impl> owner;
  connection conn;
  std::list<state*>::iterator pos;
  bool registered = false;
  bool waiting = false;  // our read is pending: the session is idle at a safe point
  bool moving = false, moved = false;
  std::uint32_t index = 0;
  std::optional<handler_type> handler;
  std::array<std::byte, 4096> buf;

  ~state();
  void read();
  void complete(error_code ec) {
    if (!handler) return;
    handler_type h(std::move(*handler));
    handler.reset();
    std::move(h)(ec);
  }
};

struct worker::impl : std::enable_shared_from_this<worker::impl> {
  executor_type ex;
  worker_options o;
  channel rx, to_dispatcher;
  std::uint32_t dpid = 0;
  detail::process_exit_wait dwatch;
  std::list<session::state*> sessions;
  std::map<std::string, channel> peers;
  worker_stats st;
  std::function<void(session)> on_session;
  std::optional<handler_type> run_handler;
  bool stopped = false, finished = false;
  // What the dispatcher asked for.
  std::size_t quota = 0;
  std::string quota_to;
  std::chrono::steady_clock::time_point quota_until{};
  bool draining = false;
  std::vector<std::string> drain_to;
  std::size_t drain_rr = 0;
  int moves_in_flight = 0;
  asio::steady_timer report_timer, sweep_timer;
  bool report_armed = false, sweep_armed = false;

  explicit impl(const executor_type& e) : ex(e), report_timer(e), sweep_timer(e) {}

  void receive() {
    baton::async_receive(rx, [self = shared_from_this()](error_code ec, arrival a) {
      if (self->stopped || self->finished || ec == asio::error::operation_aborted) return;
      if (!ec) {
        if (a.kind == ticket_kind::connection)
          self->adopt(std::move(a.conn), a.sender_pid == self->dpid);
        else if (a.kind == ticket_kind::control && a.sender_pid == self->dpid &&
                 (a.control.flags & 0xFFFF0000u) == kMagic)
          self->on_control(a.control);
      }
      self->receive();
    });
  }

  void adopt(connection c, bool from_dispatcher) {
    ++(from_dispatcher ? st.from_dispatcher : st.from_peers);
    ++st.active;
    auto s = std::make_shared<session::state>();
    s->owner = weak_from_this();
    s->conn = std::move(c);
    s->index = o.index;
    sessions.push_front(s.get());
    s->pos = sessions.begin();
    s->registered = true;
    report();
    if (on_session) on_session(session(std::move(s)));
  }

  void on_control(const ticket& t) {
    const std::string msg = text_of(t);
    switch (t.flags & 0xFFFFu) {
      case op_rebalance:
        quota = static_cast<std::size_t>(number(field(msg, "n")));
        quota_to = field(msg, "to");
        // A request is good for a short while: connections that are busy now are not moved
        // much later, when the balance may have changed.
        quota_until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
        sweep();
        return;
      case op_drain:
        draining = true;
        drain_to = split_commas(field(msg, "to"));
        sweep();
        return;
      default:
        return;
    }
  }

  // Where a session at a safe point should go now, if anywhere.
  std::optional<std::string> target() {
    if (draining) {
      if (drain_to.empty()) return std::nullopt;
      return drain_to[drain_rr++ % drain_to.size()];
    }
    if (quota > 0 && std::chrono::steady_clock::now() < quota_until) {
      --quota;
      return quota_to;
    }
    return std::nullopt;
  }

  channel* peer(const std::string& name) {
    auto it = peers.find(name);
    if (it != peers.end() && it->second.is_open()) return &it->second;
    channel_options copts;
    copts.on_full = full_policy::fail;
    error_code ec;
    channel ch = channel::open(ex, name, copts, ec);
    if (ec) return nullptr;
    return &(peers[name] = std::move(ch));
  }

  // Moves a session that sits at a safe point (its application waits in async_wait_request).
  bool start_move(const std::shared_ptr<session::state>& s, const std::string& to) {
    channel* ch = peer(to);
    if (!ch) return false;
    s->moving = true;
    ++moves_in_flight;
    // A pending read of ours is cancelled by the move; bytes it had taken travel as unread.
    baton::async_send(*ch, std::move(s->conn), o.move,
                      [self = shared_from_this(), s](error_code ec, connection back) {
                        --self->moves_in_flight;
                        s->moving = false;
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

  // Moves idle sessions as the dispatcher asked.
  void sweep() {
    if (stopped || finished) return;
    // Oldest first (new sessions go to the front): a connection that just moved in is the last
    // to move on, so rebalancing does not bounce the same connections back and forth.
    std::vector<std::shared_ptr<session::state>> idle;
    for (auto it = sessions.rbegin(); it != sessions.rend(); ++it)
      if ((*it)->waiting && !(*it)->moving && (*it)->handler) idle.push_back((*it)->shared_from_this());
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

  void arm_sweep() {
    if (sweep_armed || !draining || finished || stopped) return;
    sweep_armed = true;
    sweep_timer.expires_after(std::chrono::milliseconds(20));
    sweep_timer.async_wait([self = shared_from_this()](error_code ec) {
      self->sweep_armed = false;
      if (!ec) self->sweep();
    });
  }

  void check_drained() {
    if (!draining || finished || !sessions.empty() || moves_in_flight != 0) return;
    send_control(to_dispatcher, op_left, "");
    finish({});
  }

  void report() {
    if (report_armed || stopped) return;
    report_armed = true;
    report_timer.expires_after(o.report_interval);
    report_timer.async_wait([self = shared_from_this()](error_code ec) {
      self->report_armed = false;
      if (ec) return;
      send_control(self->to_dispatcher, op_load,
                   "peer=" + std::to_string(self->st.from_peers) +
                       " out=" + std::to_string(self->st.moved_out + self->st.closed));
    });
  }

  void finish(error_code ec) {
    if (finished) return;
    finished = true;
    rx.close();
    dwatch.cancel();
    sweep_timer.cancel();
    if (run_handler) {
      handler_type h(std::move(*run_handler));
      run_handler.reset();
      asio::post(ex, asio::append(std::move(h), ec));
    }
  }
};

session::state::~state() {
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

void session::state::read() {
  waiting = true;
  conn.async_read_some(asio::buffer(buf), [self = shared_from_this()](error_code ec, std::size_t n) {
    self->waiting = false;
    if (self->moving) return;  // cancelled by our own move; its verdict completes the wait
    if (!ec && n > 0) self->conn.push_front_unread(self->buf.data(), n);
    self->complete(ec);
  });
}

connection& session::stream() noexcept { return st_->conn; }
bool session::is_open() const noexcept { return st_ && !st_->moved && st_->conn.is_open(); }
std::uint32_t session::worker_index() const noexcept { return st_ ? st_->index : 0; }

void session::close() {
  if (st_) st_->conn.close();
}

void session::start_wait(handler_type h) {
  if (!st_ || st_->moved || st_->handler) {
    const error_code ec = !st_ ? error_code(asio::error::bad_descriptor)
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

worker::worker(const executor_type& ex, worker_options opts, error_code& ec) : impl_(std::make_shared<impl>(ex)) {
  auto& im = *impl_;
  im.o = std::move(opts);
  im.rx = channel::create(ex, im.o.channel, im.o.rx_options, ec);
  if (!ec) im.to_dispatcher = channel::open(ex, im.o.dispatcher, {}, ec);
  if (!ec) {
    im.dpid = im.to_dispatcher.owner_pid();
    im.dwatch = detail::process_exit_wait(ex, im.dpid, false, ec);
  }
  if (ec) {
    impl_.reset();
    return;
  }
  send_control(im.to_dispatcher, op_join, "index=" + std::to_string(im.o.index) + " channel=" + im.o.channel);
}

worker::worker(const executor_type& ex, worker_options opts) {
  error_code ec;
  worker w(ex, std::move(opts), ec);
  if (ec) throw system_error(ec, "baton::balance::worker");
  impl_ = std::move(w.impl_);
}

worker::worker(worker&&) noexcept = default;
worker& worker::operator=(worker&& o) noexcept {
  if (this != &o) {
    stop();
    impl_ = std::move(o.impl_);
  }
  return *this;
}
worker::~worker() { stop(); }

void worker::start_run(std::function<void(session)> f, handler_type h) {
  if (!impl_) return std::move(h)(error_code(asio::error::bad_descriptor));  // moved-from
  if (impl_->finished || impl_->run_handler) {
    asio::post(impl_->ex, asio::append(std::move(h), make_error_code(errc::operation_in_progress)));
    return;
  }
  impl_->on_session = std::move(f);
  impl_->run_handler.emplace(std::move(h));
  impl_->dwatch.async_wait([self = impl_](error_code ec) {
    if (!ec) self->finish(errc::channel_owner_dead);
  });
  impl_->receive();
}

void worker::leave() {
  if (!impl_ || impl_->finished) return;
  send_control(impl_->to_dispatcher, op_leave, "");
}

void worker::stop() {
  if (!impl_ || impl_->stopped) return;
  impl_->stopped = true;
  impl_->report_timer.cancel();
  impl_->finish(asio::error::operation_aborted);
}

worker_stats worker::stats() const { return impl_->st; }
std::uint32_t worker::dispatcher_pid() const noexcept { return impl_ ? impl_->dpid : 0; }

}  // namespace baton::balance
