#pragma once
// Balancing's private pieces (see baton/balance.hpp).
//
// Messages are control tickets (detail/control_message.hpp) marked with kProtocol in `flags`:
//   worker -> dispatcher: op=join index channel [held peer out: rejoining with connections]
//                         op=load peer out (monotonic totals)
//                         op=leave (stop sending, tell me where to drain) | op=left (drained)
//   dispatcher -> worker: op=rebalance n keep to | op=drain to=CH1,CH2,... (possibly empty: wait)
//                         op=dismiss (do not wait for a next dispatcher after this one)
//
// dispatcher.cpp: accepting, peeking and handing off (dispatcher_impl); dispatcher_life.cpp: its
// creation (name take-over), drain and stop, the shared handle; worker_pool.cpp: the
// workers the dispatcher knows, their joins, exits and restarts, rebalancing and draining;
// balance_policy.cpp: choosing a worker; worker.cpp: the worker and its sessions.
#include "baton/balance.hpp"

#include "detail/control_message.hpp"
#include "detail/platform.hpp"
#include "detail/safe_point_reader.hpp"

#include <boost/asio/steady_timer.hpp>

#include <deque>
#include <list>
#include <map>
#include <optional>
#include <set>

namespace baton::balance::detail {

namespace asio = boost::asio;
using asio::ip::tcp;
using baton::detail::control_message;
using handler_type = asio::any_completion_handler<void(error_code)>;

/// Posts the handler `h` holds, if any, with `ec` on `ex`, leaving `h` empty.
void post_once(const asio::any_io_executor& ex, std::optional<handler_type>& h, error_code ec);

/// A worker's default receiving channel: "<dispatcher>.w<index>".
std::string slot_channel(const std::string& dispatcher, std::uint32_t index);

/// Marks this protocol's control tickets.
constexpr std::uint32_t kProtocol = 0xBA1A0000u;
bool is_balance_ticket(const ticket& t);
/// Control messages are advisory or repeated on the next change; a full ring only delays them.
void send_control(channel& ch, const control_message& m);

/// How long a rebalance request stands: the worker moves connections for it this long (busy ones
/// now, not much later, when the balance may have changed), and the dispatcher counts the
/// requested moves as planned for as long.
constexpr std::chrono::seconds rebalance_request_life{2};

struct worker_rec {
  worker_info info;
  channel ch;
  baton::detail::process_exit_wait exit;
  std::uint64_t peer_in = 0, departed = 0;  // from the worker's latest load report
  std::uint64_t carried = 0;  // a rejoining worker's connections not in its totals (see on_join)
  bool dead = false, left = false, full = false, removed = false;
  bool judged = false;  // after its exit, decided whether it left or died

  std::uint64_t active() const {
    const std::uint64_t in = carried + info.dispatched + peer_in;
    return in > departed ? in - departed : 0;
  }

  /// Moves the dispatcher asked for that the reports do not show yet: `n` more than `base` of a
  /// report total (peer_in for moves in, departed for moves out), until `until`.
  struct planned_moves {
    std::uint64_t n = 0, base = 0;
    std::chrono::steady_clock::time_point until{};
    std::uint64_t pending(std::uint64_t total, std::chrono::steady_clock::time_point now) const {
      if (n == 0 || now >= until) return 0;
      const std::uint64_t done = total > base ? total - base : 0;
      return done >= n ? 0 : n - done;
    }
  };
  planned_moves moving_in, moving_out;
  /// active() with the moves asked for by rebalance() counted as done: what least-connections
  /// compares, so that new connections do not go to a worker that moves are already filling
  /// (they would then have to be moved back).
  std::uint64_t expected(std::chrono::steady_clock::time_point now) const {
    const std::uint64_t with_in = active() + moving_in.pending(peer_in, now), out = moving_out.pending(departed, now);
    return with_in > out ? with_in - out : 0;
  }
  /// Neither dead, gone nor leaving.
  bool live() const { return !dead && !left && !info.leaving; }
};
using worker_ptr = std::shared_ptr<worker_rec>;

// An accepted connection on its way to a worker.
struct pending_conn {
  connection conn;
  tcp::endpoint client;
  std::vector<std::byte> first;
  int tries = 0;
};

/// The worker `opts.policy` chooses for `p` among `workers` that `eligible` accepts (null if
/// none); `rr` is the round-robin position.
worker_ptr choose_worker(const dispatcher_options& opts, const std::vector<worker_ptr>& workers, std::size_t& rr,
                         const pending_conn& p, const std::function<bool(const worker_rec&)>& eligible);

struct dispatcher_impl;
std::shared_ptr<dispatcher_impl> make_dispatcher(const asio::any_io_executor& ex, dispatcher_options opts,
                                                 error_code& ec);
struct worker_impl;
std::shared_ptr<worker_impl> make_worker(const asio::any_io_executor& ex, worker_options opts, error_code& ec);

/// `make(ex, opts, ec)`, throwing system_error(ec, what) on failure.
template <class Make, class Options>
auto or_throw(Make make, const asio::any_io_executor& ex, Options opts, const char* what) {
  error_code ec;
  auto p = make(ex, std::move(opts), ec);
  if (ec) throw system_error(ec, what);
  return p;
}

/// The workers a dispatcher knows: joins, exits (left or died), restarts of the ones it started,
/// waits for enough workers, rebalancing and draining.
class worker_pool {
 public:
  explicit worker_pool(dispatcher_impl& d) : d_(d) {}

  std::vector<worker_ptr> workers;

  worker_ptr by_pid(std::uint32_t pid, bool even_dead = false);
  worker_ptr by_id(std::uint32_t id);
  void on_join(std::uint32_t pid, const control_message& m);
  /// Drops a dead worker once its exit is judged and no hand-off to it is in flight.
  void maybe_erase(const worker_ptr& w);
  /// Tells every leaving worker where its connections may go (re-sent when workers come and go).
  void send_drains();
  void notify_waiters();
  void add_waiter(std::size_t n, handler_type h);
  void abort_waiters(error_code ec);
  std::uint32_t spawn(const std::string& exe, const std::vector<std::string>& args, error_code& ec);
  /// Starts the slots no worker rejoined within adopt_within of taking the name.
  void arm_adoption();
  /// A live worker (of an earlier dispatcher) owns the slot's default channel.
  bool slot_serving(std::uint32_t index);
  std::size_t rebalance();
  /// Asks `from` to move up to `n` connections to `to`, and to stop when it holds `keep`.
  void ask_move(const worker_ptr& from, const worker_ptr& to, std::size_t n, std::uint64_t keep = 0);
  void cancel_exits();

 private:
  struct spawn_slot {
    std::string exe;
    std::vector<std::string> args;
  };
  void on_exit(const worker_ptr& w);
  void on_death(const worker_ptr& w);
  bool start_process(std::uint32_t index, const spawn_slot& s, error_code& ec);

  dispatcher_impl& d_;
  std::map<std::uint32_t, spawn_slot> slots_;
  std::set<std::uint32_t> children_;  // pids this dispatcher started (reaped on exit)
  std::uint32_t next_slot_ = 0, next_id_ = 1;
  std::set<std::uint32_t> adopting_;  // slots waiting for a rejoining worker (took_over())
  bool adoption_armed_ = false;
  std::list<std::pair<std::size_t, handler_type>> waiters_;
};

struct dispatcher_impl : std::enable_shared_from_this<dispatcher_impl> {
  using executor_type = asio::any_io_executor;
  dispatcher_impl(const executor_type& e, dispatcher_options opts);

  bool eligible(const worker_rec& w) const;
  void accept_next();
  bool may_accept();  // not stopped, draining or saturated (counting pauses)
  void start_accept();
  void accept_backlog();
  void on_accept(error_code ec, connection c);
  /// took_over() while the name is held: tries again every 10 ms until o.take_over has passed.
  void claim_name();
  void on_claimed();
  void start_peek(std::shared_ptr<pending_conn> p);
  void peek_more(std::shared_ptr<pending_conn> p, std::shared_ptr<asio::steady_timer> timer);
  void peek_done(std::shared_ptr<pending_conn> p, std::shared_ptr<asio::steady_timer> timer);
  void dispatch(pending_conn p);
  void send_to(const worker_ptr& w, pending_conn p);
  void verdict(const worker_ptr& w, error_code ec, pending_conn p);
  void mark_full(const worker_ptr& w);
  void pump();
  void receive_control();
  void on_control(const ticket& t);
  void arm_auto_rebalance();
  void finish_run(error_code ec);
  /// async_drain: completes it once nothing accepted is left here.
  void check_drained();
  void stop();

  executor_type ex;
  dispatcher_options o;
  channel ctl;
  worker_pool pool;
  std::deque<pending_conn> waiting;  // accepted, not yet with a worker
  tcp::acceptor* acc = nullptr;
  connection_source src;
  bool took_over = false, claimed = false;
  std::chrono::steady_clock::time_point claim_until{}, claimed_at{};
  bool accepting = false, paused = false, running = false, stopped = false, receiving = false;
  bool peek_paused = false;
  std::size_t peeking = 0;  // accepted connections whose first bytes are being read
  std::optional<handler_type> run_handler, drain_handler;
  dispatcher_stats st;
  std::size_t rr = 0;
  asio::steady_timer retry_timer, full_timer, rebalance_timer, claim_timer, adopt_timer;
  bool full_timer_armed = false;
  bool no_delay_inherited = false;  // set on the acceptor, inherited by accepted sockets
};

struct session_state : std::enable_shared_from_this<session_state> {
  std::weak_ptr<worker_impl> owner;
  connection conn;
  std::list<session_state*>::iterator pos;
  bool registered = false;
  bool moved = false;
  std::uint32_t index = 0;
  std::optional<handler_type> handler;
  baton::detail::safe_point_reader reader;  // waiting(): idle at a safe point; taken(): moving

  ~session_state();
  void read();
  void complete(error_code ec);
};

struct worker_impl : std::enable_shared_from_this<worker_impl> {
  using executor_type = asio::any_io_executor;
  explicit worker_impl(const executor_type& e) : ex(e), report_timer(e), sweep_timer(e), rejoin_timer(e) {}

  void receive();
  void adopt(connection c, bool from_dispatcher);
  void on_control(const ticket& t);
  /// Where a session at a safe point should go now, if anywhere.
  std::optional<std::string> target();
  channel* peer(const std::string& name);
  /// Moves a session that sits at a safe point (its application waits in async_wait_request).
  bool start_move(const std::shared_ptr<session_state>& s, const std::string& to);
  /// Moves idle sessions as the dispatcher asked.
  void sweep();
  void arm_sweep();
  void check_drained();
  void report();
  /// Sessions here that are neither moving nor moved.
  std::uint64_t held() const;
  void finish(error_code ec);
  void stop();
  void watch_dispatcher();
  void on_dispatcher_exit();
  /// Between dispatchers: opens the dispatcher's name and rejoins whoever holds it now.
  void look_for_dispatcher();
  void send_join(bool rejoin);
  /// Control tickets are taken from the dispatcher only (and, between two, from the last one).
  bool from_dispatcher(std::uint32_t pid) const;

  executor_type ex;
  worker_options o;
  channel rx, to_dispatcher;
  channel slot_marker;  // "<dispatcher>.w<index>", held while the worker lives (see slot_serving)
  std::uint32_t dpid = 0;
  baton::detail::process_exit_wait dwatch;
  std::list<session_state*> sessions;
  std::map<std::string, channel> peers;
  worker_stats st;
  std::function<void(session)> on_session;
  std::optional<handler_type> run_handler;
  bool stopped = false, finished = false;
  // What the dispatcher asked for.
  std::size_t quota = 0;
  std::uint64_t quota_keep = 0;  // stop moving when this many sessions are left here
  std::string quota_to;
  std::chrono::steady_clock::time_point quota_until{};
  bool draining = false;
  std::vector<std::string> drain_to;
  std::size_t drain_rr = 0;
  int moves_in_flight = 0;
  asio::steady_timer report_timer, sweep_timer, rejoin_timer;
  bool report_armed = false, sweep_armed = false;
  bool dismissed = false;        // the dispatcher said not to wait for a next one
  std::uint32_t gone_dpid = 0;   // the dispatcher that exited, while looking for the next
  std::chrono::steady_clock::time_point rejoin_until{};
};

}  // namespace baton::balance::detail

namespace baton::balance {
/// What the public classes let the implementation reach.
struct balance_access {
  static session make_session(std::shared_ptr<detail::session_state> s) { return session(std::move(s)); }
};
}  // namespace baton::balance
