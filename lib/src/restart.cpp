// Hot restart (see baton/restart.hpp for the protocol in brief).
//
// Messages are control tickets whose state section holds "key=value" lines:
//   to the service's control channel (read by the generation in charge):
//     op=hello pid inbox            a next generation announces itself
//     op=restart reply binary       batonctl asks for a restart
//     op=status reply               batonctl asks for the status
//   to the next generation's inbox (from N):
//     op=welcome generation listeners pid      then the listeners, then the connections, then
//     op=done ...counts and times... reply     (N owns nothing any more)
//     op=busy / op=abort reason                (refused / hand-over abandoned)
//   to a requester's reply channel:
//     op=result ok ...                          (from N+1 on success, from N on failure)
//     op=status-reply text
#include "baton/restart.hpp"

#include "baton/spawn.hpp"
#include "connection_impl.hpp"
#include "detail/platform.hpp"
#include "detail/stream.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <array>
#include <cstdio>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <random>
#include <sstream>

namespace baton {

namespace asio = boost::asio;
using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace detail {
namespace {

using message = std::map<std::string, std::string>;

// Ten characters of [0-9a-z] from the OS's random source (about 51 bits): with a service name of
// at most 53 characters, "<service>.<suffix>" stays within a channel name's 64.
std::string random_suffix() {
  static constexpr char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  std::random_device rd;
  std::string s(10, '0');
  for (auto& ch : s) ch = digits[rd() % 36];
  return s;
}

ticket make_message(const message& m) {
  ticket t;
  t.kind = ticket_kind::control;
  t.method = transfer_method::none;
  t.id = ticket_id::random();
  std::string s;
  for (const auto& [k, v] : m) s += k + "=" + v + "\n";
  t.state.resize(s.size());
  std::memcpy(t.state.data(), s.data(), s.size());
  return t;
}

message parse_message(const ticket& t) {
  message m;
  std::string s(reinterpret_cast<const char*>(t.state.data()), t.state.size());
  std::size_t pos = 0;
  while (pos < s.size()) {
    auto nl = s.find('\n', pos);
    if (nl == std::string::npos) nl = s.size();
    const auto line = s.substr(pos, nl - pos);
    const auto eq = line.find('=');
    if (eq != std::string::npos) m[line.substr(0, eq)] = line.substr(eq + 1);
    pos = nl + 1;
  }
  return m;
}

std::uint64_t get_u64(const message& m, const char* key) {
  auto it = m.find(key);
  if (it == m.end()) return 0;
  return std::strtoull(it->second.c_str(), nullptr, 10);
}

std::string get(const message& m, const char* key) {
  auto it = m.find(key);
  return it == m.end() ? std::string() : it->second;
}

std::int64_t micros(clock_type::duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

// Error codes cross processes as (category, value).
void put_error(message& m, const error_code& ec) {
  m["code"] = std::to_string(ec.value());
  m["category"] = ec.category() == category() ? "baton" : "system";
  m["reason"] = ec.message();
}
error_code get_error(const message& m) {
  const int v = static_cast<int>(get_u64(m, "code"));
  if (v == 0) return {};
  if (get(m, "category") == "baton") return make_error_code(static_cast<errc>(v));
  return {v, boost::system::system_category()};
}

void put_report(message& m, const restart_report& r) {
  m["old_generation"] = std::to_string(r.old_generation);
  m["new_generation"] = std::to_string(r.new_generation);
  m["old_pid"] = std::to_string(r.old_pid);
  m["new_pid"] = std::to_string(r.new_pid);
  m["listeners"] = std::to_string(r.listeners_moved);
  m["moved"] = std::to_string(r.connections_moved);
  m["not_moved"] = std::to_string(r.connections_not_moved);
  m["ready_us"] = std::to_string(r.ready_time.count());
  m["listeners_us"] = std::to_string(r.listeners_time.count());
  m["handover_us"] = std::to_string(r.handover_time.count());
  m["old_exit_us"] = std::to_string(r.old_exit_time.count());
}
restart_report get_report(const message& m) {
  restart_report r;
  r.ec = get_error(m);
  r.old_generation = get_u64(m, "old_generation");
  r.new_generation = get_u64(m, "new_generation");
  r.old_pid = static_cast<std::uint32_t>(get_u64(m, "old_pid"));
  r.new_pid = static_cast<std::uint32_t>(get_u64(m, "new_pid"));
  r.listeners_moved = get_u64(m, "listeners");
  r.connections_moved = get_u64(m, "moved");
  r.connections_not_moved = get_u64(m, "not_moved");
  r.ready_time = std::chrono::microseconds(get_u64(m, "ready_us"));
  r.listeners_time = std::chrono::microseconds(get_u64(m, "listeners_us"));
  r.handover_time = std::chrono::microseconds(get_u64(m, "handover_us"));
  r.old_exit_time = std::chrono::microseconds(get_u64(m, "old_exit_us"));
  return r;
}

channel_options small_channel() {
  channel_options o;
  o.ring_bytes = 64u << 10;
  o.ack_slots = 64;
  o.limits.max_ticket_bytes = 16u << 10;
  o.send_timeout = 2s;
  return o;
}

// Sends one message to a channel by name, fire and forget (the sender channel lives until the
// ticket is in the ring). A channel that cannot be opened is reported to the caller.
error_code send_message(const asio::any_io_executor& ex, const std::string& to, const message& m) {
  if (to.empty()) return {};
  error_code ec;
  auto ch = std::make_shared<channel>(channel::open(ex, to, small_channel(), ec));
  if (ec) return ec;
  ch->async_send(make_message(m), [ch](error_code) {});
  return {};
}

}  // namespace

struct service_impl : std::enable_shared_from_this<service_impl> {
  enum class phase {
    created,       // async_start not called yet
    joining,       // successor: hello sent, waiting for welcome and listeners
    taking_over,   // successor: started, connections arriving, predecessor not gone yet
    serving,       // in charge: owns the control channel
    spawning,      // in charge, restart started: waiting for the next generation's hello
    handing_over,  // moving listeners, then connections, to the next generation
    retired,       // handed everything over
    closed,
  };

  struct lst_entry {
    listener l;
    bool moving = false, gone = false, restore_on_success = false;
    bool paused = false;  // not accepting: `ready` is full (see resume_accepting)
    std::uintptr_t kept = ~std::uintptr_t{0};  // duplicate held during a hand-over
  };

  struct parked {
    connection* c = nullptr;
    std::optional<asio::any_completion_handler<void(error_code, bool)>> h;
    std::array<std::byte, 4096> buf;
    bool moving = false;
    std::list<std::shared_ptr<parked>>::iterator self;
  };

  asio::any_io_executor ex;
  std::string name;
  restart_options opts;
  void note(const std::string& line) const {
    if (opts.log) opts.log(line);
  }
  void reply(const std::string& to, const message& m) const {
    if (auto ec = send_message(ex, to, m)) note("baton: service " + name + " cannot answer on channel " + to + ": " + ec.message());
  }
  phase ph = phase::created;
  std::uint64_t gen = 0;
  std::uint32_t pid = current_pid();

  std::shared_ptr<channel> control, inbox, next, hello_sender;
  std::unique_ptr<restart_trigger> trigger;
  asio::steady_timer tick_timer, trigger_retry;
  bool ticking = false;

  std::vector<std::shared_ptr<lst_entry>> listeners;
  std::vector<std::shared_ptr<lst_entry>> handed_over;  // moved; their duplicates kept until success
  std::deque<connection> ready;
  std::optional<asio::any_completion_handler<void(error_code, connection)>> accept_waiter;
  std::vector<std::weak_ptr<connection_impl>> owned;
  std::size_t owned_live_hint = 0;
  std::list<std::shared_ptr<parked>> parked_list;

  std::optional<asio::any_completion_handler<void(error_code)>> start_handler;
  std::optional<asio::any_completion_handler<void(error_code, restart_report)>> restart_handler;
  std::vector<asio::any_completion_handler<void(error_code, restart_report)>> retired_waiters;

  // Restart in progress (either side).
  restart_report report;
  std::string reply_to;
  process_watch peer;  // N: the next generation; N+1: the previous one
  clock_type::time_point t_trigger{}, t_hello{}, ready_deadline{}, drain_deadline{}, last_move_failure{},
      take_charge_deadline{}, peer_dead_at{};
  bool listeners_done = false, predecessor_done = false;
  std::size_t listener_moves_pending = 0, expected_listeners = 0, received_listeners = 0;
  std::size_t moves_in_flight = 0;  // connections on their way to the next generation

  service_stats st;

  service_impl(const asio::any_io_executor& e, std::string n, restart_options o)
      : ex(e), name(std::move(n)), opts(std::move(o)), tick_timer(e), trigger_retry(e) {}

  // ---- bookkeeping --------------------------------------------------------------------------

  std::size_t owned_count() {
    std::size_t n = 0;
    std::erase_if(owned, [&](const std::weak_ptr<connection_impl>& w) {
      auto p = w.lock();
      if (!p || !p->backend || !p->backend->is_open()) return true;
      ++n;
      return false;
    });
    owned_live_hint = n;
    return n;
  }

  void track(connection& c) {
    owned.push_back(connection_access::impl(c));
    if (owned.size() > 2 * owned_live_hint + 256) owned_count();  // prune now and then
  }

  void post_accept(error_code ec, connection c) {
    auto h = std::move(*accept_waiter);
    accept_waiter.reset();
    asio::post(ex, asio::append(std::move(h), ec, std::move(c)));
  }

  // A connection this generation now owns: to the application, or straight on to the next
  // generation if a hand-over is under way.
  void deliver(connection c) {
    track(c);
    if (ph == phase::handing_over && listeners_done) {
      move_ready(std::move(c));
      return;
    }
    if (accept_waiter) return post_accept({}, std::move(c));
    ready.push_back(std::move(c));
  }

  void ensure_tick(clock_type::duration every) {
    if (ticking) return;
    ticking = true;
    tick_timer.expires_after(every);
    tick_timer.async_wait([self = shared_from_this()](error_code ec) {
      self->ticking = false;
      if (!ec) self->tick();
    });
  }

  void tick() {
    const auto now = clock_type::now();
    switch (ph) {
      case phase::joining:
        if (!peer.alive()) {
          // The previous generation died in the middle of handing over its listeners. The ones
          // that arrived are this generation's now (its own copies died with it): take charge
          // with them rather than close them, since nobody else can serve them any more.
          if (gen != 0 && received_listeners > 0) {
            started_as_successor();
            return tick();
          }
          return finish_start(make_error_code(errc::channel_owner_dead));
        }
        if (now >= ready_deadline) return finish_start(make_error_code(errc::move_timeout));
        return ensure_tick(20ms);
      case phase::taking_over:
        if (predecessor_done) {
          if (!peer.alive() || now >= take_charge_deadline) return become_in_charge();
          return ensure_tick(1ms);  // measuring the old generation's exit
        }
        if (!peer.alive()) {
          // Its "done" may still be in our inbox, behind the reactor: give it a moment, since it
          // names who is waiting for the result. A crashed predecessor sent none.
          if (peer_dead_at == clock_type::time_point{}) peer_dead_at = now;
          if (now - peer_dead_at >= 500ms) return become_in_charge();
          return ensure_tick(5ms);
        }
        return ensure_tick(20ms);
      case phase::spawning:
        if (peer.pid() != 0 && !peer.alive()) return fail_restart(make_error_code(errc::next_generation_died));
        if (now >= ready_deadline) return fail_restart(make_error_code(errc::next_generation_not_ready));
        return ensure_tick(20ms);
      case phase::handing_over:
        drain_step();
        if (ph == phase::handing_over) ensure_tick(10ms);
        return;
      default:
        return;
    }
  }

  // ---- joining ------------------------------------------------------------------------------

  void start(asio::any_completion_handler<void(error_code)> h) {
    if (ph != phase::created) {
      asio::post(ex, asio::append(std::move(h), make_error_code(errc::operation_in_progress)));
      return;
    }
    start_handler.emplace(std::move(h));
    if (!channel::valid_name(name) || name.size() > 53) return finish_start(make_error_code(errc::invalid_name));
    ph = phase::joining;
    // From here on a restart request (SIGHUP's default action would kill this process and every
    // connection it already holds) is answered, and refused until this generation is in charge.
    // Where the trigger is a named object the running generation still owns (Windows), it is
    // created when taking charge instead.
    if (opts.os_triggers) {
      error_code tec;
      trigger = make_restart_trigger(ex, name, tec);
      if (tec) trigger.reset();
      else wait_trigger();
    }
    error_code ec;
    channel ctl;
    for (int attempt = 0;; ++attempt) {
      ctl = channel::open(ex, name, small_channel(), ec);
      if (ec == errc::channel_owner_dead) {
        // remove_stale removes only what it verified dead; a channel created meanwhile stays,
        // and taking charge below then fails with name_in_use.
        error_code ignored;
        channel::remove_stale(name, ignored);
        ec = errc::channel_not_found;
      }
      if (ec != errc::channel_not_found) break;
      gen = 1;
      st.generation = gen;
      take_charge(ec);
      if (!ec) return finish_start(ec);
      gen = 0;
      st.generation = 0;
      // Another process became generation 1 between our look and our creation: join it instead.
      if (ec != errc::name_in_use || attempt == 3) return finish_start(ec);
    }
    if (ec) return finish_start(ec);

    // A generation runs: announce ourselves on its control channel and wait for its welcome.
    peer = process_watch(ctl.owner_pid());
    report = {};
    report.old_pid = ctl.owner_pid();
    report.new_pid = pid;
    // The inbox's name is unpredictable, so that nobody can hold it in advance and deny the
    // restart; the hello carries it. (A name of the service plus the pid could be squatted for
    // every pid to come.) A name taken by chance or on purpose is simply not used.
    std::string inbox_name;
    for (int attempt = 0; attempt < 8; ++attempt) {
      inbox_name = name + "." + random_suffix();
      inbox = std::make_shared<channel>(channel::create(ex, inbox_name, {}, ec));
      if (ec != errc::name_in_use) break;
    }
    if (ec) {
      inbox.reset();
      return finish_start(ec);
    }
    receive_inbox();
    hello_sender = std::make_shared<channel>(std::move(ctl));
    t_hello = clock_type::now();
    ready_deadline = t_hello + opts.ready_timeout;
    hello_sender->async_send(make_message({{"op", "hello"}, {"pid", std::to_string(pid)}, {"inbox", inbox_name}}),
                             [self = shared_from_this()](error_code ec) {
                               // Holding the old control channel open would keep its names
                               // alive on Windows and stop us from creating ours later.
                               self->hello_sender.reset();
                               if (ec && self->ph == phase::joining) self->finish_start(ec);
                             });
    ensure_tick(20ms);
  }

  void finish_start(error_code ec) {
    if (ec) {
      report.ec = ec;
      // Someone else's object under the service's name: say whose, and where, and what to do.
      if (ec == errc::name_in_use || ec == errc::not_owner) report.detail = channel::describe_foreign_objects(name);
      ph = phase::closed;
      if (trigger) {
        trigger->cancel();
        trigger.reset();
      }
      if (inbox) {
        inbox->close();
        asio::post(ex, [self = shared_from_this()] { self->inbox.reset(); });
      }
      for (auto& e : listeners) e->l.close();
      listeners.clear();
    }
    if (start_handler) {
      auto h = std::move(*start_handler);
      start_handler.reset();
      asio::post(ex, asio::append(std::move(h), ec));
    }
  }

  void receive_inbox() {
    auto ib = inbox;
    baton::async_receive(*ib, [self = shared_from_this(), ib](error_code ec, arrival a) {
      if (ec == asio::error::operation_aborted || self->inbox != ib) return;
      if (!ec) self->on_inbox(std::move(a));
      if (self->inbox == ib && ib->is_open()) self->receive_inbox();
    });
  }

  void on_inbox(arrival a) {
    if (a.kind == ticket_kind::listener) {
      // While joining, a listener is held but not accepted on: if the hand-over is abandoned,
      // the previous generation takes it back, and connections still in the kernel's backlog go
      // with it instead of dying here with connections accepted for nobody.
      add_listener(std::move(a.lst), ph != phase::joining);
      if (++received_listeners == expected_listeners && ph == phase::joining) started_as_successor();
      return;
    }
    if (a.kind == ticket_kind::connection) {
      ++st.inherited;
      deliver(std::move(a.conn));
      return;
    }
    const auto m = parse_message(a.control);
    const auto op = get(m, "op");
    if (op == "welcome" && ph == phase::joining) {
      gen = get_u64(m, "generation") + 1;
      st.generation = gen;
      report.old_generation = gen - 1;
      report.new_generation = gen;
      expected_listeners = get_u64(m, "listeners");
      if (received_listeners >= expected_listeners) started_as_successor();
    } else if (op == "busy" && ph == phase::joining) {
      finish_start(make_error_code(errc::restart_in_progress));
    } else if (op == "abort" && ph == phase::joining) {
      finish_start(make_error_code(errc::move_rejected));
    } else if (op == "done") {
      const auto r = get_report(m);
      report.connections_moved = r.connections_moved;
      report.connections_not_moved = r.connections_not_moved;
      report.listeners_moved = r.listeners_moved;
      report.ready_time = r.ready_time;
      report.listeners_time = r.listeners_time;
      report.handover_time = r.handover_time;
      reply_to = get(m, "reply");
      predecessor_done = true;
      take_charge_deadline = clock_type::now() + 10s;
      if (ph == phase::taking_over) {
        ticking = false;
        tick_timer.cancel();
        tick();
      }
    }
  }

  void started_as_successor() {
    ph = phase::taking_over;
    for (auto& e : listeners) accept_loop(e);
    finish_start({});
    ensure_tick(20ms);
  }

  // The previous generation is gone (or done and exiting): own the service's name.
  void become_in_charge() {
    report.old_exit_time = std::chrono::microseconds(micros(clock_type::now() - t_hello));
    ph = phase::serving;
    if (inbox) {
      inbox->close();
      asio::post(ex, [self = shared_from_this()] { self->inbox.reset(); });
    }
    try_take_charge(clock_type::now() + 5s);
  }

  void try_take_charge(clock_type::time_point until) {
    error_code ec;
    take_charge(ec);
    if (ec == errc::name_in_use && clock_type::now() < until) {
      // The old generation's objects are still on their way out.
      trigger_retry.expires_after(20ms);
      trigger_retry.async_wait([self = shared_from_this(), until](error_code e) {
        if (!e && self->ph == phase::serving && !self->control) self->try_take_charge(until);
      });
      return;
    }
    if (ec) {
      note("baton: service " + name + " generation " + std::to_string(gen) +
           " cannot own its control channel: " + ec.message());
    }
    if (!reply_to.empty()) {
      message m{{"op", "result"}, {"ok", ec ? "0" : "1"}};
      put_report(m, report);
      if (ec) put_error(m, ec);
      reply(reply_to, m);
      reply_to.clear();
    }
  }

  void take_charge(error_code& ec) {
    auto ctl = channel::create(ex, name, small_channel(), ec);
    if (ec == errc::name_in_use) {
      // A dead owner's leftovers (POSIX) are removed; a live owner's are not.
      error_code rs;
      channel::remove_stale(name, rs);
      if (!rs) ctl = channel::create(ex, name, small_channel(), ec);
    }
    if (ec) return;
    control = std::make_shared<channel>(std::move(ctl));
    ph = phase::serving;
    receive_control();
    if (opts.os_triggers && !trigger) arm_trigger(clock_type::now() + 5s);
  }

  void arm_trigger(clock_type::time_point until) {
    error_code ec;
    trigger = make_restart_trigger(ex, name, ec);
    if (ec == errc::name_in_use && clock_type::now() < until) {
      trigger_retry.expires_after(50ms);
      trigger_retry.async_wait([self = shared_from_this(), until](error_code e) {
        if (!e && self->ph != phase::closed && self->ph != phase::retired) self->arm_trigger(until);
      });
      return;
    }
    if (ec) {
      note("baton: service " + name + ": OS restart trigger unavailable (" + ec.message() + "); batonctl still works");
      return;
    }
    wait_trigger();
  }

  void wait_trigger() {
    trigger->async_wait([self = shared_from_this()](error_code ec) {
      if (ec || !self->trigger) return;
      self->begin_restart(std::nullopt, "", "");
      if (self->trigger && self->ph != phase::retired && self->ph != phase::closed) self->wait_trigger();
    });
  }

  void receive_control() {
    auto ctl = control;
    baton::async_receive(*ctl, [self = shared_from_this(), ctl](error_code ec, arrival a) {
      if (ec == asio::error::operation_aborted || self->control != ctl) return;
      if (!ec) self->on_control(std::move(a));
      if (self->control == ctl && ctl->is_open()) self->receive_control();
    });
  }

  void on_control(arrival a) {
    if (a.kind != ticket_kind::control) return;  // nobody moves sockets to a control channel
    const auto m = parse_message(a.control);
    const auto op = get(m, "op");
    if (op == "hello") {
      on_hello(get(m, "inbox"));
    } else if (op == "restart") {
      begin_restart(std::nullopt, get(m, "reply"), get(m, "binary"));
    } else if (op == "status") {
      reply(get(m, "reply"), {{"op", "status-reply"}, {"text", status_text()}});
    }
  }

  std::string status_text() {
    const auto s = stats();
    const auto ms = get_move_stats();
    std::ostringstream o;
    static const char* names[] = {"created", "joining", "taking-over", "serving", "starting-next",
                                  "handing-over", "retired", "closed"};
    o << "service " << name << ";generation " << s.generation << ";pid " << s.pid << ";state "
      << names[static_cast<int>(ph)] << ";listeners " << s.listeners << ";connections " << s.connections
      << ";accepted " << s.accepted << ";inherited " << s.inherited << ";moved_out " << s.moved_out
      << ";restarts_failed " << s.restarts_failed << ";restarts_refused " << s.restarts_refused
      << ";moves_sent " << ms.sent << ";moves_received " << ms.received << ";rollbacks " << ms.rollbacks;
    return o.str();
  }

  // ---- the old generation's side of a restart ----------------------------------------------

  void begin_restart(std::optional<asio::any_completion_handler<void(error_code, restart_report)>> h,
                     std::string reply, std::string binary) {
    if (!binary.empty() && !opts.allow_restart_binary) {
      // Whoever can write to the control channel would otherwise choose what this service runs.
      ++st.restarts_refused;
      refuse(reply, make_error_code(errc::restart_binary_refused));
      return;
    }
    if (ph != phase::serving) {
      const error_code ec = make_error_code(ph == phase::spawning || ph == phase::handing_over ||
                                                    ph == phase::taking_over || ph == phase::joining
                                                ? errc::restart_in_progress
                                                : errc::service_not_found);
      ++st.restarts_refused;
      refuse(reply, ec);
      if (h) {
        restart_report r;
        r.ec = ec;
        asio::post(ex, asio::append(std::move(*h), ec, r));
      }
      return;
    }
    if (h) restart_handler.emplace(std::move(*h));
    reply_to = std::move(reply);
    report = {};
    report.old_generation = gen;
    report.old_pid = pid;
    ph = phase::spawning;
    t_trigger = clock_type::now();
    ready_deadline = t_trigger + opts.ready_timeout;
    error_code ec;
    const std::string bin =
        !binary.empty() ? binary : !opts.next_binary.empty() ? opts.next_binary : current_executable_path();
    const auto child = spawn_with_handles(bin, opts.next_args, {}, ec);
    if (ec) return fail_restart(ec);
    peer = process_watch(child.pid);
    ensure_tick(20ms);
  }

  void refuse(const std::string& reply, const error_code& ec) {
    if (reply.empty()) return;
    message m{{"op", "result"}, {"ok", "0"}};
    put_error(m, ec);
    this->reply(reply, m);
  }

  void on_hello(const std::string& inbox_name) {
    if (ph != phase::serving && ph != phase::spawning) {
      ++st.restarts_refused;
      reply(inbox_name, {{"op", "busy"}});
      return;
    }
    if (ph == phase::serving) {
      // Started by the operator rather than by us: a restart all the same.
      report = {};
      report.old_generation = gen;
      report.old_pid = pid;
      t_trigger = clock_type::now();
      ph = phase::spawning;
    }
    error_code ec;
    next = std::make_shared<channel>(channel::open(ex, inbox_name, {}, ec));
    if (ec) {
      next.reset();
      return fail_restart(ec);
    }
    // The next generation is the process that owns the inbox we just opened (the only process
    // its tickets are for), whatever pid the hello names.
    const std::uint32_t from = next->owner_pid();
    if (peer.pid() != from) peer = process_watch(from);  // not the one we started: it answered first
    t_hello = clock_type::now();
    report.ready_time = std::chrono::microseconds(micros(t_hello - t_trigger));
    report.new_pid = from;
    report.new_generation = gen + 1;
    ph = phase::handing_over;
    listeners_done = false;
    drain_deadline = t_hello + opts.drain_deadline;
    auto nx = next;
    nx->async_send(make_message({{"op", "welcome"},
                                 {"generation", std::to_string(gen)},
                                 {"pid", std::to_string(pid)},
                                 {"listeners", std::to_string(listeners.size())}}),
                   [self = shared_from_this(), nx](error_code ec) {
                     if (self->next != nx || self->ph != phase::handing_over) return;
                     if (ec) return self->fail_restart(ec);
                     self->send_listeners();
                   });
    ensure_tick(10ms);
  }

  void send_listeners() {
    listener_moves_pending = listeners.size();
    if (listener_moves_pending == 0) return listeners_moved();
    for (auto& e : listeners) {
      error_code ec;
      e->kept = duplicate_socket_handle(e->l.native_handle(), ec);
      if (ec) {
        e->kept = ~std::uintptr_t{0};
        return fail_restart(ec);
      }
      e->moving = true;
      auto nx = next;
      baton::async_send(*nx, std::move(e->l), opts.move, [self = shared_from_this(), e, nx](error_code ec, listener back) {
        self->on_listener_sent(e, ec, std::move(back));
      });
    }
  }

  void on_listener_sent(const std::shared_ptr<lst_entry>& e, error_code ec, listener back) {
    e->moving = false;
    if (!ec) {
      e->gone = true;
      ++report.listeners_moved;
      if (e->restore_on_success) restore_listener(e);  // the restart failed meanwhile
    } else {
      e->l = std::move(back);
      close_kept(*e);
      if (e->restore_on_success || ph != phase::handing_over) {
        e->restore_on_success = false;
        accept_loop(e);
      }
      if (ph == phase::handing_over) fail_restart(ec);
    }
    if (ph == phase::handing_over && --listener_moves_pending == 0) listeners_moved();
  }

  void listeners_moved() {
    for (auto& e : listeners)
      if (e->gone) handed_over.push_back(e);
    std::erase_if(listeners, [](const std::shared_ptr<lst_entry>& e) { return e->gone; });
    st.listeners = listeners.size();
    listeners_done = true;
    report.listeners_time = std::chrono::microseconds(micros(clock_type::now() - t_hello));
    // Connections accepted but not yet taken by the application go straight on.
    while (!ready.empty()) {
      auto c = std::move(ready.front());
      ready.pop_front();
      move_ready(std::move(c));
    }
    drain_step();
  }

  void move_ready(connection c) {
    auto nx = next;
    ++moves_in_flight;
    baton::async_send(*nx, std::move(c), opts.move, [self = shared_from_this(), nx](error_code ec, connection back) {
      --self->moves_in_flight;
      if (!ec) {
        ++self->report.connections_moved;
        ++self->st.moved_out;
        return;
      }
      self->last_move_failure = clock_type::now();
      if (self->accept_waiter) return self->post_accept({}, std::move(back));
      self->ready.push_back(std::move(back));
    });
  }

  void move_parked(const std::shared_ptr<parked>& p) {
    p->moving = true;
    auto nx = next;
    ++moves_in_flight;
    baton::async_send(*nx, std::move(*p->c), opts.move, [self = shared_from_this(), p, nx](error_code ec, connection back) {
      --self->moves_in_flight;
      if (!ec) {
        ++self->report.connections_moved;
        ++self->st.moved_out;
        return self->finish_parked(p, {}, true);
      }
      *p->c = std::move(back);
      p->moving = false;
      self->last_move_failure = clock_type::now();
      self->read_parked(p);  // keep waiting; the drain retries the move
    });
  }

  void drain_step() {
    if (ph != phase::handing_over) return;
    if (!peer.alive()) return fail_restart(make_error_code(errc::next_generation_died));
    if (!listeners_done) return;
    const auto now = clock_type::now();
    const bool past_deadline = now >= drain_deadline;
    if (!past_deadline && now - last_move_failure > 100ms) {
      for (auto& p : parked_list)
        if (!p->moving) move_parked(p);
      while (!ready.empty()) {
        auto c = std::move(ready.front());
        ready.pop_front();
        move_ready(std::move(c));
      }
    }
    // A connection in the middle of its move is in neither process's count (its descriptor
    // waits in the move): wait for every verdict, past the deadline too (bounded by the move
    // timeout), before saying that nothing is left.
    if (moves_in_flight > 0) return;
    const auto left = owned_count();
    if (left == 0 || past_deadline) retire(left);
  }

  void retire(std::size_t not_moved) {
    ph = phase::retired;
    ticking = false;
    tick_timer.cancel();
    trigger_retry.cancel();
    if (trigger) trigger->cancel();
    report.connections_not_moved = not_moved;
    report.handover_time = std::chrono::microseconds(micros(clock_type::now() - t_hello));
    for (auto& e : listeners) close_kept(*e);
    for (auto& e : handed_over) close_kept(*e);
    handed_over.clear();
    // Give up the service's name first, so the next generation can take it as soon as it hears.
    if (control) {
      control->close();
      asio::post(ex, [self = shared_from_this()] { self->control.reset(); });
    }
    message m{{"op", "done"}, {"reply", reply_to}};
    put_report(m, report);
    auto nx = next;
    nx->async_send(make_message(m), [self = shared_from_this(), nx](error_code) {
      self->complete_restart({});
      if (self->accept_waiter) self->post_accept(make_error_code(asio::error::operation_aborted), connection());
    });
  }

  void complete_restart(error_code ec) {
    report.ec = ec;
    if (restart_handler) {
      auto h = std::move(*restart_handler);
      restart_handler.reset();
      asio::post(ex, asio::append(std::move(h), ec, report));
    }
    if (!ec) {
      for (auto& w : retired_waiters) asio::post(ex, asio::append(std::move(w), ec, report));
      retired_waiters.clear();
    }
  }

  void fail_restart(error_code ec) {
    if (ph != phase::spawning && ph != phase::handing_over) return;
    ++st.restarts_failed;
    note("baton: restart of " + name + " failed: " + ec.message() + "; generation " + std::to_string(gen) +
         " keeps serving");
    if (next) {
      auto nx = next;
      nx->async_send(make_message({{"op", "abort"}, {"reason", ec.message()}}), [nx](error_code) {});
    }
    next.reset();
    ph = phase::serving;
    listeners_done = false;
    peer = process_watch();
    // Listeners already with the next generation come back from the duplicates we kept.
    for (auto& e : handed_over) {
      listeners.push_back(e);
      restore_listener(e);
    }
    handed_over.clear();
    for (auto& e : listeners) {
      if (e->gone) restore_listener(e);
      else if (e->moving) e->restore_on_success = true;
    }
    st.listeners = listeners.size();
    refuse(reply_to, ec);
    reply_to.clear();
    complete_restart(ec);
  }

  void restore_listener(const std::shared_ptr<lst_entry>& e) {
    e->gone = false;
    e->restore_on_success = false;
    if (e->kept == ~std::uintptr_t{0}) return;
    error_code ec;
    auto b = adopt_listener(ex, e->kept, ec);
    e->kept = ~std::uintptr_t{0};
    if (ec) {
      note("baton: service " + name + " cannot take a listener back: " + ec.message());
      return;
    }
    e->l = connection_access::wrap(std::make_shared<listener_impl>(ex, std::move(b)));
    accept_loop(e);
  }

  void close_kept(lst_entry& e) {
    if (e.kept != ~std::uintptr_t{0}) close_socket_handle(e.kept);
    e.kept = ~std::uintptr_t{0};
  }

  // ---- listeners and connections ------------------------------------------------------------

  void add_listener(listener l, bool accepting = true) {
    auto e = std::make_shared<lst_entry>();
    e->l = std::move(l);
    listeners.push_back(e);
    st.listeners = listeners.size();
    if (accepting) accept_loop(e);
  }

  void accept_loop(const std::shared_ptr<lst_entry>& e) {
    e->paused = false;
    if (!e->l.is_open()) return;
    e->l.async_accept([self = shared_from_this(), e](error_code ec, asio::ip::tcp::socket s) {
      if (!ec) {
        ++self->st.accepted;
        self->deliver(connection(std::move(s)));
      }
      if (e->moving || e->gone || self->ph == phase::closed || self->ph == phase::retired) return;
      if (ec == asio::error::operation_aborted || !e->l.is_open()) return;
      if (self->ready.size() >= std::max<std::size_t>(self->opts.max_ready, 1)) {
        // The application is behind: leave further connections in the kernel's backlog, where
        // they cost this process no descriptor, until it takes some of these.
        e->paused = true;
        return;
      }
      if (ec) {
        // Out of descriptors and the like: do not spin; the backlog holds the connections.
        auto t = std::make_shared<asio::steady_timer>(self->ex, 20ms);
        t->async_wait([self, e, t](error_code) { self->accept_loop(e); });
        return;
      }
      self->accept_loop(e);
    });
  }

  void accept(asio::any_completion_handler<void(error_code, connection)> h) {
    if (accept_waiter) {
      asio::post(ex, asio::append(std::move(h), make_error_code(errc::operation_in_progress), connection()));
      return;
    }
    accept_waiter.emplace(std::move(h));
    if (ph == phase::retired || ph == phase::closed)
      return post_accept(make_error_code(asio::error::operation_aborted), connection());
    if (!ready.empty()) {
      auto c = std::move(ready.front());
      ready.pop_front();
      post_accept({}, std::move(c));
      resume_accepting();
    }
  }

  // Restarts the accept loops that a full `ready` paused, once it has room again.
  void resume_accepting() {
    if (ready.size() >= std::max<std::size_t>(opts.max_ready, 1)) return;
    for (auto& e : listeners) {
      if (!e->paused) continue;
      e->paused = false;
      if (!e->moving && !e->gone && ph != phase::closed && ph != phase::retired && ph != phase::joining) accept_loop(e);
    }
  }

  void safe_point(connection& c, asio::any_completion_handler<void(error_code, bool)> h) {
    if (!c.is_open()) {
      asio::post(ex, asio::append(std::move(h), error_code(asio::error::bad_descriptor), false));
      return;
    }
    auto p = std::make_shared<parked>();
    p->c = &c;
    p->h.emplace(std::move(h));
    parked_list.push_front(p);
    p->self = parked_list.begin();
    if (ph == phase::handing_over && listeners_done) move_parked(p);
    else read_parked(p);
  }

  // Waits for the client's next bytes; they are put back for the application to read.
  void read_parked(const std::shared_ptr<parked>& p) {
    p->c->async_read_some(asio::buffer(p->buf), [self = shared_from_this(), p](error_code ec, std::size_t n) {
      if (p->moving) return;  // a move took the connection; its completion answers
      if (!ec && n > 0) {
        p->c->push_front_unread(p->buf.data(), n);
        return self->finish_parked(p, {}, false);
      }
      if (!ec) return self->read_parked(p);
      self->finish_parked(p, ec, false);
    });
  }

  void finish_parked(const std::shared_ptr<parked>& p, error_code ec, bool moved) {
    parked_list.erase(p->self);
    auto h = std::move(*p->h);
    p->h.reset();
    asio::post(ex, asio::append(std::move(h), ec, moved));
  }

  void wait_retired(asio::any_completion_handler<void(error_code, restart_report)> h) {
    if (ph == phase::retired) {
      asio::post(ex, asio::append(std::move(h), error_code(), report));
      return;
    }
    retired_waiters.push_back(std::move(h));
  }

  service_stats stats() {
    service_stats s = st;
    s.pid = pid;
    s.generation = gen;
    s.connections = owned_count();
    s.listeners = listeners.size();
    return s;
  }

  void close() {
    if (ph == phase::closed) return;
    const bool was_retired = ph == phase::retired;
    ph = phase::closed;
    ticking = false;
    tick_timer.cancel();
    trigger_retry.cancel();
    if (trigger) trigger->cancel();
    for (auto& e : listeners) {
      close_kept(*e);
      e->l.close();
    }
    if (control) control->close();
    if (inbox) inbox->close();
    const auto aborted = make_error_code(asio::error::operation_aborted);
    if (accept_waiter) post_accept(aborted, connection());
    if (start_handler) finish_start(aborted);
    restart_report r = report;
    r.ec = aborted;
    if (restart_handler) {
      auto h = std::move(*restart_handler);
      restart_handler.reset();
      asio::post(ex, asio::append(std::move(h), aborted, r));
    }
    for (auto& w : retired_waiters) asio::post(ex, asio::append(std::move(w), was_retired ? error_code() : aborted, r));
    retired_waiters.clear();
    for (auto& p : parked_list)
      if (!p->moving && p->c->is_open()) p->c->cancel();
  }
};

}  // namespace detail

// ---- public API ---------------------------------------------------------------------------

service::service(const executor_type& ex, std::string name, restart_options opts)
    : impl_(std::make_shared<detail::service_impl>(ex, std::move(name), std::move(opts))) {}
service::~service() {
  if (impl_) impl_->close();
}
service::executor_type service::get_executor() const { return impl_->ex; }
const std::string& service::name() const noexcept { return impl_->name; }
std::uint64_t service::generation() const noexcept { return impl_->gen; }
void service::add_listener(listener l) { impl_->add_listener(std::move(l)); }
std::size_t service::listener_count() const noexcept { return impl_->listeners.size(); }
std::vector<asio::ip::tcp::endpoint> service::local_endpoints() const {
  std::vector<asio::ip::tcp::endpoint> v;
  for (auto& e : impl_->listeners) {
    error_code ec;
    auto ep = e->l.local_endpoint(ec);
    if (!ec) v.push_back(ep);
  }
  return v;
}
restart_report service::last_report() const { return impl_->report; }
service_stats service::stats() const { return impl_->stats(); }
void service::close() { impl_->close(); }

void service::start_start(asio::any_completion_handler<void(error_code)> h) { impl_->start(std::move(h)); }
void service::start_accept(asio::any_completion_handler<void(error_code, connection)> h) {
  impl_->accept(std::move(h));
}
void service::start_safe_point(connection& c, asio::any_completion_handler<void(error_code, bool)> h) {
  impl_->safe_point(c, std::move(h));
}
void service::start_restart(asio::any_completion_handler<void(error_code, restart_report)> h) {
  impl_->begin_restart(std::move(h), "", "");
}
void service::start_wait_retired(asio::any_completion_handler<void(error_code, restart_report)> h) {
  impl_->wait_retired(std::move(h));
}

std::string to_string(const restart_report& r, const std::string& service_name) {
  char buf[512];
  if (r.ec) {
    std::snprintf(buf, sizeof buf, "restart of %s failed: %s", service_name.c_str(), r.ec.message().c_str());
    return r.detail.empty() ? std::string(buf) : std::string(buf) + " (" + r.detail + ")";
  }
  std::snprintf(buf, sizeof buf,
                "restarted %s: generation %llu -> %llu, pid %u -> %u, %llu connections moved, hand-over %.1f ms, "
                "old generation exited after %.1f ms",
                service_name.c_str(), static_cast<unsigned long long>(r.old_generation),
                static_cast<unsigned long long>(r.new_generation), r.old_pid, r.new_pid,
                static_cast<unsigned long long>(r.connections_moved), r.handover_time.count() / 1000.0,
                r.old_exit_time.count() / 1000.0);
  std::string s = buf;
  if (r.connections_not_moved)
    s += ", " + std::to_string(r.connections_not_moved) + " connections NOT moved (deadline)";
  return s;
}

namespace {

// One request/answer exchange with a service's control channel, on a private io_context.
detail::message control_exchange(const std::string& service, detail::message req, const std::string& answer_op,
                                 std::chrono::milliseconds timeout, error_code& ec) {
  ec.clear();
  asio::io_context ioc;
  std::mt19937_64 rng(std::random_device{}());
  const std::string reply = "ctl-" + std::to_string(detail::current_pid()) + "-" + std::to_string(rng() % 1000000000);
  auto rx = channel::create(ioc.get_executor(), reply, detail::small_channel(), ec);
  if (ec) return {};
  auto tx = channel::open(ioc.get_executor(), service, detail::small_channel(), ec);
  if (ec == errc::channel_not_found || ec == errc::channel_owner_dead) ec = errc::service_not_found;
  if (ec) return {};
  req["reply"] = reply;
  detail::message answer;
  bool done = false;
  tx.async_send(detail::make_message(req), [&](error_code e) {
    if (e) {
      ec = e;
      done = true;
      ioc.stop();
      return;
    }
    // Let go of the service's control channel at once: on Windows an open handle keeps its
    // names alive, and the next generation must create them anew before it reports back to us.
    asio::post(ioc, [&] { tx = channel(); });
  });
  std::function<void()> receive = [&] {
    rx.async_receive([&](error_code e, ticket t) {
      if (e == asio::error::operation_aborted) return;
      if (!e && t.kind == ticket_kind::control) {
        auto m = detail::parse_message(t);
        if (detail::get(m, "op") == answer_op) {
          answer = std::move(m);
          done = true;
          ioc.stop();
          return;
        }
      }
      receive();
    });
  };
  receive();
  ioc.run_for(timeout);
  if (!done) ec = errc::move_timeout;
  return answer;
}

}  // namespace

restart_report request_restart(const std::string& service, const std::string& binary,
                               std::chrono::milliseconds timeout, error_code& ec) {
  detail::message req{{"op", "restart"}};
  if (!binary.empty()) req["binary"] = binary;
  auto m = control_exchange(service, req, "result", timeout, ec);
  if (ec) {
    restart_report r;
    r.ec = ec;
    return r;
  }
  auto r = detail::get_report(m);
  ec = r.ec;
  return r;
}

std::string request_status(const std::string& service, std::chrono::milliseconds timeout, error_code& ec) {
  auto m = control_exchange(service, {{"op", "status"}}, "status-reply", timeout, ec);
  auto text = detail::get(m, "text");
  for (auto& ch : text)
    if (ch == ';') ch = '\n';
  return text;
}

}  // namespace baton
