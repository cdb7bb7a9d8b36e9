// Hot restart, the new generation's side: it becomes generation 1 when none runs, or announces
// itself to the generation in charge, receives its listeners and connections, and takes charge of
// the service's name once its predecessor is done or gone (see service_impl.hpp).
#include "restart/service_impl.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>
#include <cstdlib>
#include <random>

namespace baton::detail {
namespace {

using namespace std::chrono_literals;

}  // namespace

// Ten characters of [0-9a-z] from the OS's random source (about 51 bits): with a service name of
// at most 53 characters, "<service>.<suffix>" stays within a channel name's 64.
std::string random_suffix() {
  static constexpr char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  std::random_device rd;
  std::string s(10, '0');
  for (auto& ch : s) ch = digits[rd() % 36];
  return s;
}

void pass_activated_listeners(const std::vector<activated_listener>& ls) {
  std::string numbers, names;
  for (std::size_t i = 0; i < ls.size(); ++i) {
    numbers += (i ? "," : "") + std::to_string(ls[i].handle);
    names += (i ? ":" : "") + ls[i].name;
  }
  set_environment(activated_listeners_variable, numbers);
  set_environment(activated_names_variable, names);
}

std::vector<activated_listener> take_passed_activated_listeners() {
  std::vector<activated_listener> ls;
  const char* numbers = std::getenv(activated_listeners_variable);
  if (!numbers || !*numbers) return ls;
  const char* names_env = std::getenv(activated_names_variable);
  const std::string list = numbers, names = names_env ? names_env : "";
  for (std::size_t from = 0, name_from = 0; from < list.size();) {
    const auto comma = std::min(list.find(',', from), list.size());
    const auto colon = std::min(names.find(':', name_from), names.size());
    ls.push_back({static_cast<std::uintptr_t>(std::strtoull(list.c_str() + from, nullptr, 10)),
                  name_from < names.size() ? names.substr(name_from, colon - name_from) : ""});
    from = comma + 1;
    name_from = colon + 1;
  }
  pass_activated_listeners({});  // not for the processes this one starts
  return ls;
}

void successor::start(asio::any_completion_handler<void(error_code)> h) {
  if (s_.ph != service_phase::created) {
    asio::post(s_.ex, asio::append(std::move(h), make_error_code(errc::operation_in_progress)));
    return;
  }
  start_handler_.emplace(std::move(h));
  if (!channel::valid_name(s_.name) || s_.name.size() > 53) return finish_start(make_error_code(errc::invalid_name));
  if (auto ec = take_activated()) return finish_start(ec);
  s_.ph = service_phase::joining;
  // From here on a restart request (SIGHUP's default action would kill this process and every
  // connection it already holds) is answered, and refused until this generation is in charge.
  // Where the trigger is a named object the running generation still owns (Windows), it is
  // created when taking charge instead.
  if (s_.opts.os_triggers) {
    error_code tec;
    s_.trigger = make_restart_trigger(s_.ex, s_.name, tec);
    if (tec) s_.trigger.reset();
    else s_.wait_trigger();
  }
  error_code ec;
  channel ctl;
  for (int attempt = 0;; ++attempt) {
    ctl = channel::open(s_.ex, s_.name, restart_channel_options(), ec);
    if (ec == errc::channel_owner_dead) {
      // remove_stale removes only what it verified dead; a channel created meanwhile stays,
      // and taking charge below then fails with name_in_use.
      error_code ignored;
      channel::remove_stale(s_.name, ignored);
      ec = errc::channel_not_found;
    }
    if (ec != errc::channel_not_found) break;
    s_.gen = 1;
    s_.st.generation = s_.gen;
    s_.take_charge(ec);
    if (!ec) {
      adopt_activated_listeners();
      return finish_start(ec);
    }
    s_.gen = 0;
    s_.st.generation = 0;
    // Another process became generation 1 between our look and our creation: join it instead.
    if (ec != errc::name_in_use || attempt == 3) return finish_start(ec);
  }
  if (ec) return finish_start(ec);
  close_activated("generation 1 only");
  join(std::move(ctl));
}

// A generation runs: announce ourselves on its control channel and wait for its welcome.
void successor::join(channel ctl) {
  s_.peer = process_watch(ctl.owner_pid());
  s_.report = {};
  s_.report.old_pid = ctl.owner_pid();
  s_.report.new_pid = s_.pid;
  // The inbox's name is unpredictable, so that nobody can hold it in advance and deny the
  // restart; the hello carries it. (A name of the service plus the pid could be squatted for
  // every pid to come.) A name taken by chance or on purpose is simply not used.
  error_code ec;
  std::string inbox_name;
  for (int attempt = 0; attempt < 8; ++attempt) {
    inbox_name = s_.name + "." + random_suffix();
    inbox_ = std::make_shared<channel>(channel::create(s_.ex, inbox_name, {}, ec));
    if (ec != errc::name_in_use) break;
  }
  if (ec) {
    inbox_.reset();
    return finish_start(ec);
  }
  receive_inbox();
  hello_sender_ = std::make_shared<channel>(std::move(ctl));
  s_.t_hello = clock_type::now();
  s_.ready_deadline = s_.t_hello + s_.opts.ready_timeout;
  control_message hello("hello");
  hello.set("pid", std::uint64_t{s_.pid}).set("inbox", inbox_name);
  hello_sender_->async_send(hello.to_ticket(), [self = s_.shared_from_this()](error_code ec) {
    // Holding the old control channel open would keep its names alive on Windows and stop us
    // from creating ours later.
    self->succ.hello_sender_.reset();
    if (ec && self->ph == service_phase::joining) self->succ.finish_start(ec);
  });
  s_.ensure_tick(20ms);
}

// Socket activation: the listening sockets passed to this process, by its keeper
// (BATON_LISTEN_FDS and BATON_LISTEN_FDNAMES) or, without one, by systemd (LISTEN_FDS and
// LISTEN_FDNAMES for this pid). restart_options::activated_names picks some by name; a name that
// was not passed fails the start, with the names that were in the report's detail.
error_code successor::take_activated() {
  activated_ = take_passed_activated_listeners();
  if (activated_.empty()) activated_ = take_activated_listeners();
  if (activated_.empty()) return {};
  std::string passed;
  for (const auto& a : activated_) passed += (passed.empty() ? "" : ", ") + a.name;
  for (const auto& want : s_.opts.activated_names) {
    if (std::none_of(activated_.begin(), activated_.end(), [&](const auto& a) { return a.name == want; })) {
      s_.report.detail = "none is named '" + want + "'; the names passed: " + passed;
      close_activated("");
      return make_error_code(errc::activated_listener_not_found);
    }
  }
  return {};
}

// Generation 1: the activated listeners (those named in restart_options::activated_names, or
// all) are this service's, and the application binds nothing (listener_count() is not 0). Later
// generations receive them in the hand-over, with their names.
void successor::adopt_activated_listeners() {
  const auto& want = s_.opts.activated_names;
  for (auto& a : activated_) {
    if (!want.empty() && std::find(want.begin(), want.end(), a.name) == want.end()) continue;
    error_code ec;
    auto l = kept_socket::own(std::exchange(a.handle, no_handle)).adopt(s_.ex, ec);  // under the protocol its address says
    if (ec) {
      s_.note("baton: service " + s_.name + " cannot adopt activated listener " + a.name + ": " + ec.message());
      continue;
    }
    l.set_name(a.name);
    s_.listeners.add(std::move(l), true);
  }
  close_activated("not in restart_options::activated_names");
}

// Passed sockets that no generation serves are closed rather than left with a backlog nobody
// accepts from.
void successor::close_activated(const std::string& why) {
  for (auto& a : activated_) {
    if (a.handle == no_handle) continue;
    if (!why.empty()) s_.note("baton: service " + s_.name + " closes activated listener " + a.name + ": " + why);
    kept_socket::own(a.handle).close();
  }
  activated_.clear();
}

void successor::finish_start(error_code ec) {
  if (ec) {
    s_.report.ec = ec;
    // Someone else's object under the service's name: say whose, and where, and what to do.
    if (ec == errc::name_in_use || ec == errc::not_owner) s_.report.detail = channel::describe_foreign_objects(s_.name);
    s_.ph = service_phase::closed;
    if (s_.trigger) {
      s_.trigger->cancel();
      s_.trigger.reset();
    }
    if (inbox_) {
      inbox_->close();
      asio::post(s_.ex, [self = s_.shared_from_this()] { self->succ.inbox_.reset(); });
    }
    s_.listeners.discard();
    close_activated("");
  } else {
    s_.stopper.arm_signals();
  }
  if (start_handler_) {
    auto h = std::move(*start_handler_);
    start_handler_.reset();
    asio::post(s_.ex, asio::append(std::move(h), ec));
  }
}

void successor::close() {
  if (inbox_) inbox_->close();
  if (start_handler_) finish_start(make_error_code(asio::error::operation_aborted));
}

void successor::tick(clock_type::time_point now) {
  if (s_.ph == service_phase::joining) {
    if (!s_.peer.alive()) {
      // The previous generation died in the middle of handing over its listeners. The ones
      // that arrived are this generation's now (its own copies died with it): take charge
      // with them rather than close them, since nobody else can serve them any more.
      if (s_.gen != 0 && received_listeners_ > 0) {
        started();
        return s_.tick();
      }
      return finish_start(make_error_code(errc::channel_owner_dead));
    }
    if (now >= s_.ready_deadline) return finish_start(make_error_code(errc::move_timeout));
    return s_.ensure_tick(20ms);
  }
  if (predecessor_done_) {
    if (!s_.peer.alive() || now >= take_charge_deadline_) return become_in_charge();
    return s_.ensure_tick(1ms);  // measuring the old generation's exit
  }
  if (!s_.peer.alive()) {
    // Its "done" may still be in our inbox, behind the reactor: give it a moment, since it
    // names who is waiting for the result. A crashed predecessor sent none.
    if (peer_dead_at_ == clock_type::time_point{}) peer_dead_at_ = now;
    if (now - peer_dead_at_ >= 500ms) return become_in_charge();
    return s_.ensure_tick(5ms);
  }
  s_.ensure_tick(20ms);
}

void successor::receive_inbox() {
  receive_each(
      inbox_, [self = s_.shared_from_this()](const channel* ch) { return self->succ.inbox_.get() == ch; },
      [self = s_.shared_from_this()](arrival a) { self->succ.on_inbox(std::move(a)); });
}

void successor::on_inbox(arrival a) {
  if (a.kind == ticket_kind::listener || a.kind == ticket_kind::udp_socket) {
    // While joining, a listener is held but not accepted on: if the hand-over is abandoned,
    // the previous generation takes it back, and connections still in the kernel's backlog go
    // with it instead of dying here with connections accepted for nobody. A UDP socket is read
    // by the application only once the start has completed.
    if (a.kind == ticket_kind::udp_socket) s_.listeners.add_udp(std::move(a.udp));
    else s_.listeners.add(std::move(a.lst), s_.ph != service_phase::joining);
    if (++received_listeners_ == expected_listeners_ && s_.ph == service_phase::joining) started();
    return;
  }
  if (a.kind == ticket_kind::connection) {
    ++s_.st.inherited;
    s_.conns.deliver(std::move(a.conn));
    return;
  }
  error_code ec;
  const auto m = control_message::parse(a.control, ec);
  if (ec) return s_.note("baton: service " + s_.name + " ignored a ticket in its inbox: " + ec.message());
  on_message(m);
}

void successor::on_message(const control_message& m) {
  const auto op = m.op();
  const bool joining = s_.ph == service_phase::joining;
  if (op == "welcome" && joining) {
    s_.gen = m.number("generation") + 1;
    s_.st.generation = s_.gen;
    s_.report.old_generation = s_.gen - 1;
    s_.report.new_generation = s_.gen;
    expected_listeners_ = m.number("listeners");
    if (received_listeners_ >= expected_listeners_) started();
  } else if (op == "busy" && joining) {
    finish_start(make_error_code(errc::restart_in_progress));
  } else if (op == "abort" && joining) {
    finish_start(make_error_code(errc::move_rejected));
  } else if (op == "done") {
    const auto r = get_report(m);
    auto& rep = s_.report;
    rep.connections_moved = r.connections_moved;
    rep.connections_not_moved = r.connections_not_moved;
    rep.connections_closed_gracefully = r.connections_closed_gracefully;
    s_.st.connections_lost += r.connections_not_moved;
    rep.listeners_moved = r.listeners_moved;
    rep.udp_sockets_moved = r.udp_sockets_moved;
    rep.ready_time = r.ready_time;
    rep.listeners_time = r.listeners_time;
    rep.handover_time = r.handover_time;
    s_.reply_to = m.get("reply");
    predecessor_done_ = true;
    take_charge_deadline_ = clock_type::now() + 10s;
    if (s_.ph == service_phase::taking_over) {
      s_.ticking = false;
      s_.tick_timer.cancel();
      s_.tick();
    }
  }
}

void successor::started() {
  s_.ph = service_phase::taking_over;
  s_.listeners.start_all();
  finish_start({});
  s_.ensure_tick(20ms);
}

// The previous generation is gone (or done and exiting): own the service's name.
void successor::become_in_charge() {
  s_.report.old_exit_time = std::chrono::microseconds(micros(clock_type::now() - s_.t_hello));
  s_.ph = service_phase::serving;
  if (inbox_) {
    inbox_->close();
    asio::post(s_.ex, [self = s_.shared_from_this()] { self->succ.inbox_.reset(); });
  }
  s_.try_take_charge(clock_type::now() + 5s);
  s_.stopper.resume_if_pending();
}

}  // namespace baton::detail
