#pragma once
/// Hot restart: a named service whose generations hand over their listeners and their live,
/// established connections, so that replacing the binary drops nothing and no client notices.
///
///   baton::service svc(ex, "shop", opts);
///   co_await svc.async_start(use_awaitable);          // first generation, or take over from N
///   if (svc.listener_count() == 0) svc.add_listener(listener(tcp::acceptor(ex, endpoint)));
///   for (;;) {                                        // each connection, in its own coroutine:
///     auto c = co_await svc.async_accept(use_awaitable);
///     ... serve a request ...
///     auto [ec, moved] = co_await svc.async_safe_point(c, as_tuple(use_awaitable));
///     if (ec || moved) co_return;                     // moved: the next generation has it
///   }
///
/// Generation N owns the service's control channel (named after the service). Generation N+1 —
/// started by N (on a trigger) or by the operator — finds N by that name, announces itself, and
/// receives first every listener (N keeps a duplicate, not accepting, until the hand-over has
/// succeeded; no connection attempt is refused in between), then every established connection at
/// its next safe point, with its unread bytes and its application state. N retires when it owns
/// nothing, or at its deadline, reporting whatever it could not move. If N+1 dies or does not
/// become ready, N keeps (or takes back) everything and keeps serving.
///
/// Triggers: async_restart(); Linux SIGHUP; Windows the named event Local\baton.<service>.restart;
/// on both, `batonctl restart <service>` through the control channel.
///
/// Thread safety: a service object and the connections it hands out must be used from one
/// thread (or one strand): the executor given to the constructor.

#include <baton/move.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>

#include <chrono>
#include <functional>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace baton {

struct restart_options {
  /// How long generation N waits for the next generation to announce itself after starting it.
  std::chrono::milliseconds ready_timeout{10000};
  /// How long N keeps moving connections after the listeners have moved; connections still
  /// here at the deadline are counted as not moved (and closed when N exits).
  std::chrono::milliseconds drain_deadline{30000};
  /// Options of each move (per-move timeout, transfer strategy).
  move_options move{};
  /// Moves to the next generation awaiting its verdict at once (also bounded by its inbox's ack
  /// slots); the other connections wait in a queue and go as verdicts come back, so a hand-over
  /// of any size never fails a move for want of room. Each move in flight holds its descriptor
  /// in both processes until the verdict: this is the hand-over's extra descriptor cost.
  std::size_t max_moves_in_flight = 256;
  /// The next generation's executable (empty: this process's own executable) and arguments.
  std::string next_binary;
  std::vector<std::string> next_args;
  /// Connections the service accepts ahead of the application (accepted, not yet taken by
  /// service::async_accept). At this many it stops accepting until the application takes one;
  /// the kernel's backlog holds the rest, at no descriptor cost to the process.
  std::size_t max_ready = 1024;
  /// Listen for SIGHUP (Linux) / the named event Local\baton.<service>.restart (Windows).
  bool os_triggers = true;
  /// Stop gracefully (as service::async_stop) on SIGTERM and SIGINT (on Windows, SIGINT is
  /// Ctrl+C); a second such signal during the stop ends it at once, cutting the connections still
  /// in a request (counted). Off: the application handles these signals itself (and may call
  /// async_stop).
  bool stop_signals = true;
  /// Accept a restart request that names the next generation's executable (`batonctl restart
  /// NAME --binary PATH`, request_restart's `binary`). Off: such a request is refused with
  /// errc::restart_binary_refused, so that a process able to reach the control channel cannot
  /// choose what this service runs; next_binary (or this executable) is what restarts.
  bool allow_restart_binary = false;
  /// The channel of the keeper (baton/keeper.hpp, the program `baton-run`) that starts this
  /// service's generations; empty: the environment variable BATON_KEEPER, which a keeper sets for
  /// its children. Under a keeper a restart asks it to start the next generation, with the
  /// keeper's command line (next_binary and next_args are not used; a restart request naming an
  /// executable is refused with errc::restart_binary_refused: replace the program's file instead),
  /// and each generation tells the keeper when it takes charge.
  std::string keeper;
  /// Socket activation (systemd's LISTEN_FDS, passed to generation 1 by the service manager or by
  /// its keeper): generation 1 adopts the listening sockets passed as its listeners, so the
  /// application binds nothing (listener_count() is not 0); each keeps its name (systemd's
  /// FileDescriptorName=, listener::name()) through restarts. Names here: only the sockets of
  /// these names are adopted, the others closed; a name that was not passed fails async_start with
  /// errc::activated_listener_not_found (last_report().detail lists the names passed). Empty:
  /// every socket passed. Without socket activation this has no effect.
  std::vector<std::string> activated_names;
  /// Called with one line of text for an event the service handled on its own and the caller
  /// may want to log: a reply it could not send, a control channel or OS trigger it could not
  /// own, a failed restart it recovered from (also in the restart report), a listener it could
  /// not take back. Empty (the default): the library writes nothing anywhere. Called on the
  /// service's executor.
  std::function<void(const std::string&)> log;
};

/// The outcome of one hand-over from generation N to N+1.
struct restart_report {
  error_code ec;                   ///< success, or why the restart failed (N keeps serving)
  /// More about `ec` where Baton can say it, e.g. for a start that failed with errc::name_in_use
  /// or errc::not_owner: the squatted objects' paths and owner uids (Linux), and what to do.
  std::string detail;
  std::uint64_t old_generation = 0, new_generation = 0;
  std::uint32_t old_pid = 0, new_pid = 0;
  std::uint64_t listeners_moved = 0;
  std::uint64_t udp_sockets_moved = 0;
  std::uint64_t connections_moved = 0;
  std::uint64_t connections_not_moved = 0;  ///< still in N at the deadline (closed as N exits)
  /// A failed restart: connections the next generation had already taken when it died (they
  /// ended with it). N keeps serving the others.
  std::uint64_t connections_lost = 0;
  /// A graceful stop (service::async_stop, SIGTERM, `batonctl stop`), not a restart: the
  /// generation fields name the stopped one; connections_not_moved counts the connections still
  /// open at the drain deadline (closed as the process exits).
  bool stopped = false;
  std::uint64_t connections_closed = 0;  ///< stop: closed at a safe point, after their last response
  /// Closed by the application (service::close_gracefully) instead of moved or cut: connections
  /// it chose not to move, after telling their clients (a WebSocket close frame, say).
  std::uint64_t connections_closed_gracefully = 0;
  std::chrono::microseconds ready_time{0};     ///< trigger to N+1's announcement (0 if not started by N)
  std::chrono::microseconds listeners_time{0}; ///< announcement to the last listener acknowledged
  std::chrono::microseconds handover_time{0};  ///< announcement to N owning nothing
  std::chrono::microseconds old_exit_time{0};  ///< announcement to N's exit, as seen by N+1
};

/// A listener of a service: where it listens, and its name (empty if it has none).
struct listener_info {
  boost::asio::ip::tcp::endpoint endpoint;
  std::string name;
};

/// Counters of one service in this process.
struct service_stats {
  std::uint64_t generation = 0;
  std::uint32_t pid = 0;
  std::uint64_t connections = 0;        ///< connections this generation owns now
  std::uint64_t accepted = 0;           ///< accepted on this generation's listeners
  std::uint64_t inherited = 0;          ///< connections received from the previous generation
  std::uint64_t moved_out = 0;          ///< connections handed to the next generation
  std::uint64_t restarts_failed = 0;    ///< hand-overs from this generation that failed
  std::uint64_t restarts_refused = 0;   ///< restart requests refused (one was in progress)
  /// Connections that hand-overs seen by this process did not carry through: left in the old
  /// generation at the drain deadline, or taken by a next generation that then died.
  std::uint64_t connections_lost = 0;
  /// Connections the application closed with close_gracefully instead of moving them.
  std::uint64_t closed_gracefully = 0;
  std::size_t listeners = 0;
  std::size_t udp_sockets = 0;
};

namespace detail {
struct service_impl;
}

class service {
 public:
  using executor_type = boost::asio::any_io_executor;

  /// `name` follows channel naming rules and must leave room for ".<pid>" (at most 53 chars).
  service(const executor_type& ex, std::string name, restart_options opts = {});
  ~service();
  service(const service&) = delete;
  service& operator=(const service&) = delete;

  executor_type get_executor() const;
  const std::string& name() const noexcept;

  /// Joins the service: becomes its first generation if none runs, or takes over from the
  /// running generation (its listeners have arrived when this completes; its connections follow
  /// through async_accept). Signature: void(error_code). errc::restart_in_progress if the
  /// running generation is already handing over to another process.
  template <class Token>
  auto async_start(Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code)>(
        [this](auto h) { start_start(std::move(h)); }, token);
  }

  /// Generation number (1 for the first), valid after async_start.
  std::uint64_t generation() const noexcept;
  /// Adds a listener of this generation (a first generation opens its own; later ones inherit).
  void add_listener(listener l);
  std::size_t listener_count() const noexcept;
  /// Local endpoints of the listeners.
  std::vector<boost::asio::ip::tcp::endpoint> local_endpoints() const;
  /// The listeners with their names (listener::name(): systemd's FileDescriptorName= for a
  /// socket-activated one, kept across restarts).
  std::vector<listener_info> listeners() const;

  /// Adds a bound UDP socket of this generation (a first generation opens its own; later ones
  /// receive them with the listeners). At a restart it moves to the next generation with the
  /// datagrams queued in the kernel; a receive the application has pending on it waits out the
  /// hand-over and then ends with errc::socket_moved (or carries on if the restart fails).
  /// See docs/udp.md.
  void add_udp_socket(udp_socket u);
  std::size_t udp_socket_count() const noexcept;
  /// Handles to this generation's UDP sockets, for the application to serve (read each with one
  /// receive at a time; send the reply to a datagram before awaiting anything else). Valid after
  /// async_start; each keeps its name (udp_socket::name()).
  std::vector<udp_socket> udp_sockets();

  /// The next connection: accepted here, or moved in from the previous generation with its
  /// unread bytes and state. Signature: void(error_code, connection). operation_aborted once this
  /// generation has retired.
  template <class Token>
  auto async_accept(Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code, connection)>(
        [this](auto h) { start_accept(std::move(h)); }, token);
  }

  /// Call where `c` is between requests (the last response written, the next request not yet
  /// read; bytes already read of the next request pushed back with push_front_unread). Completes
  /// when the client has sent more (moved == false: read the next request) or when `c` has moved
  /// to the next generation (moved == true: `c` is empty; stop serving it). Signature:
  /// void(error_code, bool moved); an error (e.g. eof) means the client is gone.
  template <class Token>
  auto async_safe_point(connection& c, Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code, bool)>(
        [this, &c](auto h) { start_safe_point(c, std::move(h)); }, token);
  }

  /// Connections only the server writes on (server push, server-sent events, a WebSocket feeding
  /// a silent client, a long download) never come to async_safe_point by themselves: their writer
  /// learns of a hand-over here (or polls handing_over()), stops at a boundary of its own (a whole
  /// message written, nothing outstanding), puts what it still has to send in `c.state()` and
  /// calls async_handover, or closes the connection itself with close_gracefully.
  ///
  /// Completes when this generation starts moving connections to the next (the listeners are
  /// there: success), when a graceful stop begins (errc::service_stopping: close the connection)
  /// or when the service closes or has retired (operation_aborted); at once if one of these is
  /// already the case. Any number may wait. Signature: void(error_code).
  template <class Token>
  auto async_wait_handover(Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code)>(
        [this](auto h) { start_wait_handover(std::move(h)); }, token);
  }

  /// True while this generation moves connections to the next: what async_wait_handover waits for.
  bool handing_over() const noexcept;

  /// Moves `c` to the next generation now, at a boundary the application chose, without waiting
  /// for its client (no read or write of `c` may be outstanding). Completes with moved == true when
  /// the next generation has it (`c` is empty: stop serving it), or moved == false with `c` still
  /// here when no hand-over is moving connections (none was, or it failed meanwhile: go on
  /// serving) or, with errc::service_stopping, when a graceful stop began (close it). Signature:
  /// void(error_code, bool moved).
  template <class Token>
  auto async_handover(connection& c, Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code, bool)>(
        [this, &c](auto h) { start_handover(c, std::move(h)); }, token);
  }

  /// Closes `c` (its send side first, after everything written) and counts it as closed
  /// gracefully (restart_report::connections_closed_gracefully, service_stats::closed_gracefully),
  /// so that a hand-over or a stop waits for it no longer. For connections the application chose
  /// not to move, once it has told their client (a WebSocket close frame, an HTTP/2 GOAWAY).
  void close_gracefully(connection& c);

  /// Starts the next generation (restart_options::next_binary/next_args) and hands everything
  /// over to it. Completes with the report when this generation owns nothing (success: exit
  /// now) or when the restart failed (this generation keeps serving). Signature:
  /// void(error_code, restart_report). errc::restart_in_progress if one is already running.
  template <class Token>
  auto async_restart(Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code, restart_report)>(
        [this](auto h) { start_restart(std::move(h)); }, token);
  }

  /// Completes once this generation has handed everything over, however the restart was
  /// triggered (signal, event, batonctl, async_restart). The application should then exit.
  /// Signature: void(error_code, restart_report).
  template <class Token>
  auto async_wait_retired(Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code, restart_report)>(
        [this](auto h) { start_wait_retired(std::move(h)); }, token);
  }

  /// Stops this generation gracefully: it stops accepting (its listeners close), connections
  /// parked at a safe point are woken and every later async_safe_point completes with
  /// errc::service_stopping (close the connection: its last response is written), connections a
  /// request is still running on finish it first. When none is left, or at the drain deadline,
  /// the service gives up its name (control channel, OS trigger, their shared-memory objects), and
  /// this and async_wait_retired complete with a report (stopped = true): the application exits.
  /// Also started by SIGTERM/SIGINT (restart_options::stop_signals) and `batonctl stop NAME`
  /// (request_stop). During a restart the stop waits for it: if the restart succeeds this
  /// generation retires anyway; if it fails, the stop follows. Signature:
  /// void(error_code, restart_report).
  template <class Token>
  auto async_stop(Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code, restart_report)>(
        [this](auto h) { start_stop(std::move(h)); }, token);
  }

  /// The last restart's report (from either side of it).
  restart_report last_report() const;
  service_stats stats() const;
  /// Stops everything: pending operations complete with operation_aborted.
  void close();

 private:
  void start_start(boost::asio::any_completion_handler<void(error_code)> h);
  void start_accept(boost::asio::any_completion_handler<void(error_code, connection)> h);
  void start_safe_point(connection& c, boost::asio::any_completion_handler<void(error_code, bool)> h);
  void start_handover(connection& c, boost::asio::any_completion_handler<void(error_code, bool)> h);
  void start_wait_handover(boost::asio::any_completion_handler<void(error_code)> h);
  void start_restart(boost::asio::any_completion_handler<void(error_code, restart_report)> h);
  void start_wait_retired(boost::asio::any_completion_handler<void(error_code, restart_report)> h);
  void start_stop(boost::asio::any_completion_handler<void(error_code, restart_report)> h);
  std::shared_ptr<detail::service_impl> impl_;
};

/// Text format of a restart report, one line (what batonctl prints).
std::string to_string(const restart_report& r, const std::string& service_name);

/// Client side of a service's control channel (what batonctl uses): asks the running generation
/// of `service` to restart and waits (up to `timeout`) for the new generation's report, or asks for
/// its status as "key value" lines. Blocking; runs its own io_context.
restart_report request_restart(const std::string& service, const std::string& binary,
                               std::chrono::milliseconds timeout, error_code& ec);
std::string request_status(const std::string& service, std::chrono::milliseconds timeout, error_code& ec);
/// Asks the running generation of `service` to stop gracefully (service::async_stop) and waits up
/// to `timeout` for its report.
restart_report request_stop(const std::string& service, std::chrono::milliseconds timeout, error_code& ec);
/// Names of the services of this user on this host whose running generation holds its control
/// channel (sorted; a generation in the middle of a hand-over may be missing). Reads no service:
/// ask each with request_status. Linux: found in /dev/shm. Windows cannot list the named objects
/// of a session simply: fails with boost::asio::error::operation_not_supported. Thread-safe.
std::vector<std::string> list_services(error_code& ec);
/// Removes what killed services of this user left in shared memory (Linux /dev/shm:
/// baton.<channel>.ring, .bell, .sock): the channels of `service` (its control channel and its
/// generations' inboxes, `<service>.<10 characters>`), or every Baton channel of this user when
/// `service` is empty; only channels whose owner process is dead (channel::remove_stale), never a
/// live service's. Returns the channel names removed. Windows: named objects vanish with their
/// last handle, there is nothing to remove: fails with boost::asio::error::operation_not_supported.
/// Thread-safe.
std::vector<std::string> remove_dead_channels(const std::string& service, error_code& ec);

}  // namespace baton
