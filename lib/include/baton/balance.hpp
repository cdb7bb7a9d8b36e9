#pragma once
/// Load balancing by handing off connections. A `balance::dispatcher` accepts each connection
/// once and moves it to a worker process chosen by policy; from then on the bytes flow directly
/// between client and worker. A `balance::worker` receives those connections as sessions, reports
/// its load, and at safe points moves idle connections to other workers when the dispatcher asks
/// (rebalancing) or when it leaves (scale-down).
///
/// The protocol between them runs over Baton channels: each worker owns a receiving channel
/// (connections and control tickets arrive there), the dispatcher owns one control channel that
/// workers join through. Control tickets carry a short "key=value" message (an op and its keys) in
/// `state`, marked as this protocol's in `flags`.
///
/// Thread safety: a dispatcher, a worker and a session are each used from one strand (the
/// executor they were made with). Hand-offs are transactions (see move.hpp): a connection handed
/// to a worker that dies or stalls before acknowledging comes back and goes to another worker.

#include <baton/move.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace baton::balance {

struct balance_access;

/// How the dispatcher chooses a worker for a new connection.
enum class policy {
  round_robin,        ///< each eligible worker in turn
  least_connections,  ///< the worker holding the fewest connections (estimate + hand-offs in flight;
                      ///< moves rebalancing asked for count as done)
  client_hash,        ///< rendezvous hash of the client's IP address: one address, one worker
                      ///< while that worker lives (and only its clients move when it dies)
  custom,             ///< dispatcher_options::pick decides
};

/// "round-robin", "least-connections", "client-hash" or "custom" (underscores also accepted).
bool parse_policy(std::string_view text, policy& out) noexcept;
const char* to_string(policy p) noexcept;

/// What the dispatcher knows about one worker.
struct worker_info {
  std::uint32_t id = 0;          ///< assigned by the dispatcher at join, never reused
  std::uint32_t index = 0;       ///< the slot the worker joined with; a restarted worker keeps it
  std::uint32_t pid = 0;
  std::string channel;           ///< the worker's receiving channel
  std::uint64_t dispatched = 0;  ///< connections handed to it and acknowledged
  std::uint64_t active = 0;      ///< connections it holds now (dispatched + moved in - closed or moved
                                 ///< out, from its latest load report)
  std::uint32_t in_flight = 0;   ///< hand-offs awaiting its acknowledgement
  std::uint64_t moved_in = 0;    ///< connections moved in from other workers (its latest load report)
  std::uint64_t departed = 0;    ///< connections closed or moved out (its latest load report)
  bool leaving = false;          ///< draining: gets no new connections
};

/// What a policy::custom callback sees. `workers` holds only eligible workers (never empty).
struct pick_context {
  boost::asio::ip::tcp::endpoint client;
  std::span<const std::byte> first_bytes;  ///< what dispatcher_options::peek read (else empty)
  std::span<const worker_info> workers;
};

struct dispatcher_options {
  /// The control channel workers join through (channel::valid_name).
  std::string name;
  balance::policy policy = policy::round_robin;
  /// policy::custom: returns a position in ctx.workers (out of range: round-robin instead).
  std::function<std::size_t(const pick_context&)> pick;
  /// A worker with this many hand-offs awaiting its ack is skipped; when every worker is skipped
  /// (or its ring is full) the dispatcher stops accepting until one frees up, and the kernel's
  /// backlog holds new clients.
  std::uint32_t max_in_flight = 64;
  /// Optional: before choosing, read from the client until `peek` returns true for the bytes so
  /// far (e.g. a full HTTP request line), `peek_max` bytes arrived, or `peek_timeout` passed. The
  /// bytes travel with the connection as unread bytes and are shown to the policy.
  std::function<bool(std::span<const std::byte>)> peek;
  std::size_t peek_max = 4096;
  std::chrono::milliseconds peek_timeout{2000};
  /// Connections being peeked at once (each holds a descriptor for up to peek_timeout, however
  /// slowly its client sends). At this many the dispatcher stops accepting until a peek ends, and
  /// the kernel's backlog holds new clients, so that slow clients cannot exhaust its descriptors.
  /// 0: no limit.
  std::size_t max_peeking = 256;
  /// Per hand-off: its timeout is how long a worker may take to ack before the connection goes
  /// elsewhere.
  move_options move{};
  /// How long a hand-off re-checks for the worker's ack before sleeping (channel_options::ack_spin).
  /// The dispatcher never waits on one hand-off, so it does not spin by default: spinning would
  /// take CPU from the workers.
  std::chrono::microseconds ack_spin{0};
  /// After that, the ack is checked at this fixed interval (channel_options::ack_poll_first and
  /// ack_poll_max). A short interval sees acks sooner but re-arms the reactor's timer more often.
  std::chrono::microseconds ack_poll{500};
  /// Workers started with spawn_worker() are started again (same index) when they die.
  bool restart_dead_workers = true;
  /// TCP_NODELAY on accepted connections (it travels with the socket to the worker).
  bool no_delay = true;
  /// When non-zero, rebalance() runs at this interval: after a worker joins or comes back from a
  /// restart, the others move connections to it at their sessions' safe points (a keep-alive
  /// connection between two requests) until the spread is within one.
  std::chrono::milliseconds auto_rebalance{0};
  /// A front that restarts: when a live dispatcher still holds `name` (the generation this one
  /// replaces, exiting once it has handed its listeners over), wait up to this long for the name
  /// instead of failing with errc::name_in_use; meanwhile the dispatcher exists, takes no
  /// connections, and its workers (still the other's) are waited for. If the time passes,
  /// async_run and async_wait_workers complete with errc::name_in_use. The names a dead dispatcher
  /// left behind are removed in any case (channel::remove_stale).
  std::chrono::milliseconds take_over{0};
  /// spawn_worker does not start a process for a slot whose worker is still serving (one of an
  /// earlier dispatcher of this name: each worker holds a small channel "<name>.w<index>" that
  /// says so while it lives): it waits for that worker to rejoin (worker_options::rejoin_within),
  /// and starts a process for the slot only if it has not rejoined this long after this
  /// dispatcher took the name.
  std::chrono::milliseconds adopt_within{5000};
};

/// Where a dispatcher takes connections from, other than an acceptor: called for the next
/// connection whenever the dispatcher can take one (never twice at once; a source not called holds
/// its clients back, as the kernel's backlog does). For a front that hot-restarts, the service's
/// accept: `[&svc](auto h) { svc.async_accept(std::move(h)); }`. operation_aborted from the source
/// ends async_run; other errors are retried after 10 ms.
using connection_source = std::function<void(boost::asio::any_completion_handler<void(error_code, connection)>)>;

struct dispatcher_stats {
  std::uint64_t accepted = 0;        ///< connections accepted
  std::uint64_t dispatched = 0;      ///< hand-offs acknowledged by a worker
  std::uint64_t taken_back = 0;      ///< hand-offs that came back (worker died, refused, timed out, full)
  std::uint64_t pauses = 0;          ///< times accepting stopped because every worker was saturated
  std::uint64_t peek_pauses = 0;     ///< times accepting stopped because max_peeking peeks were under way
  std::uint64_t peeking = 0;         ///< connections being peeked now
  std::uint64_t worker_joins = 0;
  std::uint64_t worker_deaths = 0;   ///< workers that exited without leaving
  std::uint64_t restarts = 0;        ///< workers started again after dying
  std::uint64_t rebalance_moves = 0; ///< connections workers were asked to move to a lighter worker
  std::uint64_t dropped = 0;         ///< connections closed after failing to reach any worker 16 times
  std::uint64_t rejoined = 0;        ///< workers that joined with connections from an earlier dispatcher
};

namespace detail {
struct dispatcher_impl;
struct worker_impl;
struct session_state;

/// What a dispatcher and a worker share: a handle on an implementation that its pending
/// operations share too. Destroying the handle, or moving another into it, stops what it held.
template <class Impl>
class handle {
 public:
  using executor_type = boost::asio::any_io_executor;
  handle(handle&&) noexcept;
  handle& operator=(handle&&) noexcept;
  ~handle();
  executor_type get_executor() const;

 protected:
  explicit handle(std::shared_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};
}  // namespace detail

/// Accepts, chooses, hands off. Construction creates the control channel. Destruction stops;
/// workers notice through their dispatcher watch.
class dispatcher : public detail::handle<detail::dispatcher_impl> {
 public:
  /// Fails like channel::create for the control channel (errc::name_in_use, errc::invalid_name).
  dispatcher(const executor_type& ex, dispatcher_options opts, error_code& ec);
  dispatcher(const executor_type& ex, dispatcher_options opts);

  const std::string& name() const noexcept;

  /// Starts `exe args...` as a worker process that inherits no handle. In `args`, "{index}" is
  /// replaced by the worker's slot index and "{dispatcher}" by the control channel name. Returns
  /// the slot index. The process is this process's child and is reaped when it exits. If a worker
  /// of an earlier dispatcher still serves the slot (see dispatcher_options::adopt_within), no
  /// process is started: that worker is adopted when it rejoins.
  std::uint32_t spawn_worker(const std::string& exe, const std::vector<std::string>& args, error_code& ec);

  /// Accepts on `acc` and hands connections to workers until stop() (operation_aborted) or an
  /// accept error that is not transient. Signature: void(error_code).
  template <class Token>
  auto async_run(boost::asio::ip::tcp::acceptor& acc, Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code)>(
        [this, &acc](auto h) { start_run(&acc, {}, std::move(h)); }, token);
  }
  /// The same, taking connections from `source` (e.g. a hot-restarted service's accept). stop()
  /// does not cancel the source: a connection it delivers afterwards is closed.
  template <class Token>
  auto async_run(connection_source source, Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code)>(
        [this, s = std::move(source)](auto h) mutable { start_run(nullptr, std::move(s), std::move(h)); }, token);
  }

  /// True when an earlier dispatcher held the name (one being replaced, or a dead one's
  /// leftovers): its workers, if still serving, rejoin this one.
  bool took_over() const noexcept;
  /// For a front that stops for good (not a restart): tells every worker not to wait for a next
  /// dispatcher once this one exits (worker_options::rejoin_within), so that they end with it.
  void dismiss_workers();

  /// Stops accepting; every connection already accepted still goes to a worker. Completes when
  /// none is queued, peeked at or awaiting a worker's ack (then the dispatcher is stopped): what
  /// a front that hot-restarts does before its process exits. Signature: void(error_code).
  template <class Token>
  auto async_drain(Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code)>([this](auto h) { start_drain(std::move(h)); },
                                                                token);
  }

  /// Completes when at least `n` workers have joined and are not leaving, or with
  /// operation_aborted on stop(). Signature: void(error_code).
  template <class Token>
  auto async_wait_workers(std::size_t n, Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code)>(
        [this, n](auto h) { start_wait_workers(n, std::move(h)); }, token);
  }

  std::vector<worker_info> workers() const;
  dispatcher_stats stats() const;

  /// Asks the most loaded worker to move idle connections to the least loaded one, if they
  /// differ by two or more (hand-offs in flight count), until it holds half their sum (rounded up): asking again before the
  /// moves are reported does not move more. Returns how many it asked to move.
  std::size_t rebalance();
  /// Asks worker `from` to move up to `count` idle connections to worker `to` (ids). False if
  /// either is unknown, dead or leaving.
  bool rebalance(std::uint32_t from, std::uint32_t to, std::size_t count);
  /// Scale down: worker `id` gets no new connections, moves its connections to the other
  /// workers at safe points, then leaves (and is not restarted). False if unknown.
  bool remove_worker(std::uint32_t id);
  /// Stops accepting and completes async_run and waits with operation_aborted. Connections
  /// still queued for a worker are closed; hand-offs in flight finish (one that comes back is
  /// closed and counted in `dropped`). Workers notice the dispatcher's exit, not its stop.
  void stop();

 private:
  void start_run(boost::asio::ip::tcp::acceptor* acc, connection_source src,
                 boost::asio::any_completion_handler<void(error_code)> h);
  void start_wait_workers(std::size_t n, boost::asio::any_completion_handler<void(error_code)> h);
  void start_drain(boost::asio::any_completion_handler<void(error_code)> h);
};

struct worker_options {
  std::string dispatcher;  ///< the dispatcher's control channel
  std::string channel;     ///< this worker's receiving channel (unique, created by the worker)
  std::uint32_t index = 0; ///< slot index (spawn_worker's "{index}")
  move_options move{};     ///< for moves to other workers (rebalancing, leaving)
  channel_options rx_options{};  ///< of the worker's own channel
  /// Load reports to the dispatcher are coalesced to at most one per interval.
  std::chrono::milliseconds report_interval{2};
  /// When the dispatcher exits: 0 ends async_run with errc::channel_owner_dead. Otherwise the
  /// worker keeps serving its sessions, looks for the next dispatcher under the same name (a
  /// restarted front, dispatcher_options::take_over) every 10 ms and rejoins it with its
  /// connections, ending with channel_owner_dead only if none appears within this time or the
  /// dispatcher dismissed its workers before exiting.
  std::chrono::milliseconds rejoin_within{0};
};

struct worker_stats {
  std::uint64_t from_dispatcher = 0;  ///< connections received from the dispatcher
  std::uint64_t from_peers = 0;       ///< connections moved in from other workers
  std::uint64_t moved_out = 0;        ///< connections moved to other workers
  std::uint64_t closed = 0;           ///< sessions ended here
  std::uint64_t active = 0;           ///< sessions alive now
  std::uint64_t rejoins = 0;          ///< times it joined a next dispatcher after its own exited
};

/// One connection served by a worker. The application reads and writes `stream()` and calls
/// async_wait_request() whenever it has answered everything it read (its own buffers are
/// empty): that is the safe point at which the worker may move the connection elsewhere.
/// Dropping the last session object closes the connection.
class session {
 public:
  session() noexcept = default;

  connection& stream() noexcept;
  bool is_open() const noexcept;
  std::uint32_t worker_index() const noexcept;

  /// Waits for the next request's first bytes (they stay in the stream, unread). Completes with
  /// success, with the stream's error (eof when the client closed), or with errc::session_moved
  /// when the worker handed the connection to another process at this safe point: the
  /// application must then stop using the session. Signature: void(error_code).
  template <class Token>
  auto async_wait_request(Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code)>(
        [this](auto h) { start_wait(std::move(h)); }, token);
  }

  /// Ends the session (closes the connection).
  void close();

 private:
  friend struct balance_access;
  explicit session(std::shared_ptr<detail::session_state> s) noexcept : st_(std::move(s)) {}
  void start_wait(boost::asio::any_completion_handler<void(error_code)> h);
  std::shared_ptr<detail::session_state> st_;
};

/// The worker side. Construction creates the worker's channel and joins the dispatcher;
/// destruction stops.
class worker : public detail::handle<detail::worker_impl> {
 public:
  /// Fails like channel::create (own channel) and channel::open (the dispatcher's).
  worker(const executor_type& ex, worker_options opts, error_code& ec);
  worker(const executor_type& ex, worker_options opts);

  /// Receives connections and hands each to `on_session`, until the worker has left (success),
  /// the dispatcher exits (errc::channel_owner_dead; see worker_options::rejoin_within), or
  /// stop() (operation_aborted).
  /// Signature: void(error_code).
  template <class Token>
  auto async_run(std::function<void(session)> on_session, Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code)>(
        [this, f = std::move(on_session)](auto h) mutable { start_run(std::move(f), std::move(h)); }, token);
  }

  /// Scale down from the worker's side: asks the dispatcher to stop sending, moves every session
  /// to the other workers at its next safe point, then async_run completes with success.
  void leave();
  void stop();
  worker_stats stats() const;
  /// The dispatcher it serves now (0 between an exited dispatcher and the next).
  std::uint32_t dispatcher_pid() const noexcept;

 private:
  void start_run(std::function<void(session)> f, boost::asio::any_completion_handler<void(error_code)> h);
};

}  // namespace baton::balance
