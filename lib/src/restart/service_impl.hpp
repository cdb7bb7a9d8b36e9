#pragma once
// Hot restart's private pieces (see baton/restart.hpp for the protocol in brief).
//
// Messages are control tickets (detail/control_message.hpp):
//   to the service's control channel (read by the generation in charge):
//     op=hello pid inbox            a next generation announces itself
//     op=restart reply binary       batonctl asks for a restart
//     op=status reply               batonctl asks for the status
//     op=spawned pid | error        the keeper started the next generation (or could not)
//   to the keeper's channel (BATON_KEEPER, baton/keeper.hpp; from the generation in charge):
//     op=spawn reply                start the next generation, answer on `reply`
//     op=charge service pid generation   this generation took charge (or kept it: restart failed)
//   to the next generation's inbox (from N):
//     op=welcome generation listeners pid      then the listeners, then the connections, then
//     op=done ...counts and times... reply     (N owns nothing any more)
//     op=busy / op=abort reason                (refused / hand-over abandoned)
//   to a requester's reply channel:
//     op=result ok ...                          (from N+1 on success, from N on failure)
//     op=status-reply text
//
// service_impl holds what every role shares (phase, generation, report, timers, channels) and
// four cooperating pieces, one file each:
//   listener_custody (listener_custody.cpp)  the listeners, their accept loops, the duplicates
//                                            kept while they are with the next generation
//   connection_book  (connection_book.cpp)   owned connections, the ready queue, connections
//                                            parked at safe points, moves to the next generation
//   successor        (successor.cpp)         joining a running generation and taking over from it
//   handover         (handover.cpp)          the generation in charge handing everything over
// service.cpp has the control channel, the tick and the public facade; control.cpp the batonctl
// client, the status text and the report's text.
#include "baton/keeper.hpp"
#include "baton/restart.hpp"

#include "detail/control_message.hpp"
#include "detail/platform.hpp"
#include "detail/safe_point_reader.hpp"
#include "detail/socket_custody.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace baton::detail {

namespace asio = boost::asio;
using clock_type = std::chrono::steady_clock;

std::int64_t micros(clock_type::duration d);
/// The options of every restart channel: small, short timeouts.
channel_options restart_channel_options();
/// Sends one message to a channel by name, fire and forget. A channel that cannot be opened is
/// reported to the caller.
error_code send_message(const asio::any_io_executor& ex, const std::string& to, const control_message& m);
void put_report(control_message& m, const restart_report& r);
/// Receives on `ch` until it is closed or `current(ch)` is false, handing each arrival to `on`,
/// up to detail::receive_batch of them per completion.
void receive_each(std::shared_ptr<channel> ch, std::function<bool(const channel*)> current,
                  std::function<void(arrival)> on);
restart_report get_report(const control_message& m);

struct service_impl;

/// Ten characters of [0-9a-z] from the OS's random source, for channel names nobody can hold in
/// advance (a successor's inbox, the keeper's channel). successor.cpp.
std::string random_suffix();

/// Socket activation through a keeper (successor.cpp): puts `ls` in the environment of the next
/// process this one starts (BATON_LISTEN_FDS, their numbers comma-separated; BATON_LISTEN_FDNAMES,
/// their names ':'-separated as in LISTEN_FDNAMES); an empty list clears both.
void pass_activated_listeners(const std::vector<activated_listener>& ls);
/// What a keeper passed this process that way (none: an empty list), clearing the variables.
std::vector<activated_listener> take_passed_activated_listeners();

enum class service_phase {
  created,       // async_start not called yet
  joining,       // successor: hello sent, waiting for welcome and listeners
  taking_over,   // successor: started, connections arriving, predecessor not gone yet
  serving,       // in charge: owns the control channel
  spawning,      // in charge, restart started: waiting for the next generation's hello
  handing_over,  // moving listeners, then connections, to the next generation
  retired,       // handed everything over (or stopped)
  closed,
  stopping,      // in charge, stopping gracefully: connections close at their safe points
};

/// The service's listeners and UDP sockets: accepting on the listeners, moving both to the next
/// generation with a kept duplicate each, and taking them back from the duplicates when the
/// restart fails. The application reads the UDP sockets through handles of its own
/// (udp_handles()); their receives wait out a move, and end once the restart has succeeded.
class listener_custody {
 public:
  struct entry {
    listener l;
    udp_socket u;         // a UDP socket's entry (`udp`): `l` is empty
    bool udp = false;
    bool moving = false, gone = false, restore_on_success = false;
    bool paused = false;  // not accepting: the ready queue is full (see resume_accepting)
    kept_socket kept;   // held during a hand-over
    std::string name;     // the listener's, for the one taken back from `kept`
  };
  using entry_ptr = std::shared_ptr<entry>;

  explicit listener_custody(service_impl& s) : s_(s) {}

  void add(listener l, bool accepting);
  void add_udp(udp_socket u);
  void accept_loop(const entry_ptr& e);
  /// Restarts the accept loops that a full ready queue paused, once it has room again.
  void resume_accepting();
  void start_all();
  /// Sends every listener to the next generation, keeping a duplicate of each.
  void send_all();
  /// The restart failed: take back what went, resume what did not.
  void take_back();
  void close_kept();
  /// Closes every listener (and what is kept of them).
  void close();
  /// close(), and forgets them: a start that failed.
  void discard();
  /// Listeners (TCP), UDP sockets, and both: what the next generation is to receive.
  std::size_t count() const noexcept { return listeners_.size() - udp_count(); }
  std::size_t udp_count() const noexcept;
  std::size_t sockets() const noexcept { return listeners_.size(); }
  std::vector<udp_socket> udp_handles();
  std::vector<asio::ip::tcp::endpoint> local_endpoints() const;
  std::vector<listener_info> info() const;

 private:
  void on_sent(const entry_ptr& e, error_code ec);
  void all_sent();
  void restore(const entry_ptr& e);

  service_impl& s_;
  std::vector<entry_ptr> listeners_;  // with the UDP sockets
  std::vector<entry_ptr> handed_over_;  // moved; their duplicates kept until success
  std::size_t moves_pending_ = 0;
};

/// The connections this generation owns: counted, queued for the application, parked at safe
/// points, and moved to the next generation during a hand-over.
class connection_book {
 public:
  using accept_handler = asio::any_completion_handler<void(error_code, connection)>;
  using safe_point_handler = asio::any_completion_handler<void(error_code, bool)>;

  explicit connection_book(service_impl& s) : s_(s) {}

  /// A connection this generation now owns: to the application, or straight on to the next
  /// generation if a hand-over is under way.
  void deliver(connection c);
  void accept(accept_handler h);
  void abort_accept();
  void safe_point(connection& c, safe_point_handler h);
  /// service::async_handover: `c` goes to the next generation now, within the window, without
  /// waiting for its client; moved == false (and `c` back) when no hand-over is moving
  /// connections or it was abandoned.
  void handover_now(connection& c, safe_point_handler h);
  /// service::close_gracefully.
  void close_gracefully(connection& c);
  /// service::async_wait_handover: completes when connections start moving (success), when a
  /// graceful stop begins (errc::service_stopping) or when the service closes (operation_aborted).
  void wait_handover(asio::any_completion_handler<void(error_code)> h);
  void notify_handover(error_code ec);
  /// Queues what is ready and what is parked for the next generation and starts moving it, at
  /// most a window of moves in flight (restart_options::max_moves_in_flight, bounded by the next
  /// generation's ack slots); each verdict that comes back starts the next move.
  void move_all();
  /// Connections whose move was refused are queued again by the drain once it retries
  /// (at most every 100 ms); the others go on meanwhile.
  void retry_refused();
  /// The hand-over was abandoned: what waited to move goes back to the application.
  void abandon_moves();
  /// Connections still open here (pruning the ones that are gone).
  std::size_t owned_count();
  bool ready_full() const;
  std::size_t moves_in_flight() const noexcept { return moves_in_flight_; }
  void move_ended();
  clock_type::time_point last_move_failure() const noexcept { return last_move_failure_; }
  void cancel_parked();
  /// A graceful stop begins: ready connections close, the accept waiter and every parked
  /// connection's waiter hear errc::service_stopping (a later safe point too, at once).
  void stop_all();
  std::uint64_t closed_at_stop() const noexcept { return closed_at_stop_; }

 private:
  struct parked {
    connection* c = nullptr;
    std::optional<safe_point_handler> h;
    safe_point_reader reader;
    std::list<std::shared_ptr<parked>>::iterator self;
    bool queued = false;    // in to_move_
    bool finished = false;  // handler called; no longer in parked_
    bool stopping = false;  // a graceful stop cancelled its read
    bool move_requested = false;  // a move cancelled its read and starts when the read has ended
    bool pushed = false;    // from handover_now: no read pending, waits for nothing but its move
  };

  void track(connection& c);
  void post_accept(error_code ec, connection c);
  void queue_parked(const std::shared_ptr<parked>& p);
  /// Starts queued moves while the window has room.
  void pump();
  /// The moves in flight allowed now: window_bound(), narrowed while moves time out (on_verdict).
  std::size_t window() const;
  std::size_t window_bound() const;
  void on_verdict(std::uint64_t seq, const error_code& ec);
  /// A move's verdict: frees its place in the window (on_verdict), counts a moved connection or
  /// notes the failure's time. True if the connection moved.
  bool on_sent(std::uint64_t seq, const error_code& ec);
  void move_ready(connection c);
  void move_parked(const std::shared_ptr<parked>& p);
  void send_parked(const std::shared_ptr<parked>& p);
  void read_parked(const std::shared_ptr<parked>& p);
  void finish_parked(const std::shared_ptr<parked>& p, error_code ec, bool moved);
  /// Completes the pushed connections (handover_now) not in the middle of their move with `ec`,
  /// moved == false (one in its move hears from its verdict).
  void finish_pushed(error_code ec);

  service_impl& s_;
  std::deque<connection> ready_;
  std::optional<accept_handler> accept_waiter_;
  std::vector<connection_watch> owned_;
  std::size_t owned_live_hint_ = 0;
  std::list<std::shared_ptr<parked>> parked_;
  std::size_t moves_in_flight_ = 0;  // on their way to the next generation
  std::size_t congestion_window_ = SIZE_MAX;  // see on_verdict
  std::uint64_t sent_seq_ = 0, cut_at_seq_ = 0;
  std::size_t verdicts_in_time_ = 0;
  std::deque<std::shared_ptr<parked>> to_move_;  // parked connections waiting for the window
  std::deque<connection> outbound_;  // ready connections waiting for the window
  std::deque<connection> refused_;   // ready connections whose move failed, until the next retry
  bool parked_refused_ = false;      // a parked connection's move failed since the last retry
  std::uint64_t closed_at_stop_ = 0;
  clock_type::time_point last_move_failure_{};
  std::vector<asio::any_completion_handler<void(error_code)>> handover_waiters_;
};

/// A new generation: announces itself to the one in charge (or becomes generation 1), receives
/// the listeners and connections, and takes charge once its predecessor is done or gone.
class successor {
 public:
  explicit successor(service_impl& s) : s_(s) {}

  void start(asio::any_completion_handler<void(error_code)> h);
  void finish_start(error_code ec);
  void tick(clock_type::time_point now);
  /// Closes the inbox; a start still under way completes with operation_aborted.
  void close();

 private:
  void join(channel ctl);
  error_code take_activated();
  void adopt_activated_listeners();
  void close_activated(const std::string& why);
  void receive_inbox();
  void on_inbox(arrival a);
  void on_message(const control_message& m);
  void started();
  void become_in_charge();

  service_impl& s_;
  std::optional<asio::any_completion_handler<void(error_code)>> start_handler_;
  std::shared_ptr<channel> inbox_, hello_sender_;
  clock_type::time_point take_charge_deadline_{}, peer_dead_at_{};
  bool predecessor_done_ = false;
  std::size_t expected_listeners_ = 0, received_listeners_ = 0;
  static constexpr std::uintptr_t no_handle = ~std::uintptr_t{0};
  std::vector<activated_listener> activated_;  // passed by the service manager, until adopted
};

/// A graceful stop (stop.cpp): from service::async_stop, `batonctl stop` or a signal; waits for a
/// restart under way to end; drains the connections at their safe points; gives up the names.
class graceful_stop {
 public:
  using handler = asio::any_completion_handler<void(error_code, restart_report)>;
  explicit graceful_stop(service_impl& s) : s_(s) {}

  /// A stop asked for by the API or batonctl (`reply`: the requester's channel) during a restart
  /// is refused (errc::restart_in_progress); one from a signal waits for the restart to end.
  void request(std::optional<handler> h, std::string reply, bool from_signal = false);
  /// SIGTERM/SIGINT, if restart_options::stop_signals.
  void arm_signals();
  /// The service is (again) in charge and serving: begin a stop that waited.
  void resume_if_pending();
  void tick(clock_type::time_point now);
  void close();

 private:
  void begin();
  void finish(std::size_t left);
  void wait_signal();

  service_impl& s_;
  std::optional<asio::signal_set> signals_;
  std::vector<handler> waiters_;
  std::vector<std::string> replies_;
  bool pending_ = false;
  clock_type::time_point deadline_{}, started_{};
};

/// The generation in charge handing over to the next: starts it, welcomes it, sends the
/// listeners then the connections, and retires, or abandons and keeps serving.
class handover {
 public:
  explicit handover(service_impl& s) : s_(s) {}

  void begin(std::optional<asio::any_completion_handler<void(error_code, restart_report)>> h, std::string reply,
             std::string binary);
  void on_hello(const std::string& inbox_name);
  /// The keeper's answer to this generation's op=spawn: the next generation's pid, or an error.
  void on_spawned(const control_message& m);
  void listeners_sent();
  /// No move is in flight any more: the hand-over may be over (checked from the executor).
  void moves_settled();
  void fail(error_code ec);
  void tick(clock_type::time_point now);
  void refuse(const std::string& reply, const error_code& ec);
  /// Listeners are with the next generation: connections follow them at once.
  bool forwarding() const noexcept;
  void complete(error_code ec);
  /// Completes what waits on the restart: `r` carries operation_aborted.
  void close(bool was_retired, const restart_report& r);
  void wait_retired(asio::any_completion_handler<void(error_code, restart_report)> h);
  /// Completes what waits for this generation's end with s_.report (after a restart or a stop).
  void notify_retired();

 private:
  void drain_step(clock_type::time_point now);
  void retire(std::size_t not_moved);

  service_impl& s_;
  std::optional<asio::any_completion_handler<void(error_code, restart_report)>> restart_handler_;
  std::vector<asio::any_completion_handler<void(error_code, restart_report)>> retired_waiters_;
  clock_type::time_point t_trigger_{}, drain_deadline_{};
  bool listeners_done_ = false;
};

struct service_impl : std::enable_shared_from_this<service_impl> {
  service_impl(const asio::any_io_executor& e, std::string n, restart_options o);

  void note(const std::string& line) const {
    if (opts.log) opts.log(line);
  }
  void reply(const std::string& to, const control_message& m) const;
  void ensure_tick(clock_type::duration every);
  void tick();
  /// Creates the service's control channel and serves it.
  void take_charge(error_code& ec);
  /// take_charge, retried while the old generation's objects are on their way out; then answers
  /// whoever asked for the restart.
  void try_take_charge(clock_type::time_point until);
  /// Tells the keeper (op=charge), or without one systemd (READY=1, MAINPID= this process), that
  /// this generation is in charge (again, after a failed restart); deferred until the application
  /// first accepts.
  void tell_in_charge();
  /// The application accepts, or takes its UDP sockets: the moment tell_in_charge waits for.
  void application_serves();
  /// Tells systemd, unless a keeper does (supervisor_notes; a no-op without NOTIFY_SOCKET).
  void tell_systemd(supervisor_state s, const std::string& status, std::uint32_t main_pid = 0);
  void wait_trigger();
  void stop_timers();
  std::string status_text();
  service_stats stats();
  void close();

  asio::any_io_executor ex;
  std::string name;
  restart_options opts;
  service_phase ph = service_phase::created;
  std::uint64_t gen = 0;
  std::uint32_t pid = current_pid();
  service_stats st;

  std::shared_ptr<channel> control, next;
  std::unique_ptr<restart_trigger> trigger;
  asio::steady_timer tick_timer, trigger_retry;
  bool ticking = false;
  bool accepting = false, in_charge_untold = false;  // see tell_in_charge
  supervisor_notes systemd;

  // Restart in progress (either side).
  restart_report report;
  std::string reply_to;
  process_watch peer;  // N: the next generation; N+1: the previous one
  clock_type::time_point t_hello{}, ready_deadline{};

  listener_custody listeners;
  connection_book conns;
  class successor succ;
  class handover hand;
  graceful_stop stopper;

 private:
  void arm_trigger(clock_type::time_point until);
  void receive_control();
  void on_control(arrival a);
};

}  // namespace baton::detail
