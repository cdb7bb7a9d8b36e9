// Hot restart, the side of the generation in charge: it starts the next generation (or hears
// from one the operator started), welcomes it, sends the listeners and then the connections, and
// retires; or, when anything fails, abandons the hand-over, takes its listeners back and keeps
// serving (see service_impl.hpp).
#include "restart/service_impl.hpp"

#include "baton/spawn.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>

namespace baton::detail {

using namespace std::chrono_literals;

bool handover::forwarding() const noexcept { return s_.ph == service_phase::handing_over && listeners_done_; }

void handover::begin(std::optional<asio::any_completion_handler<void(error_code, restart_report)>> h,
                     std::string reply, std::string binary) {
  if (!binary.empty() && (!s_.opts.allow_restart_binary || !s_.opts.keeper.empty())) {
    // Whoever can write to the control channel would otherwise choose what this service runs.
    ++s_.st.restarts_refused;
    refuse(reply, make_error_code(errc::restart_binary_refused));
    return;
  }
  const auto ph = s_.ph;
  if (ph != service_phase::serving) {
    const bool busy = ph == service_phase::spawning || ph == service_phase::handing_over ||
                      ph == service_phase::taking_over || ph == service_phase::joining;
    const error_code ec = make_error_code(busy                                 ? errc::restart_in_progress
                                          : ph == service_phase::stopping ? errc::service_stopping
                                                                          : errc::service_not_found);
    ++s_.st.restarts_refused;
    refuse(reply, ec);
    if (h) {
      restart_report r;
      r.ec = ec;
      asio::post(s_.ex, asio::append(std::move(*h), ec, r));
    }
    return;
  }
  if (h) restart_handler_.emplace(std::move(*h));
  s_.reply_to = std::move(reply);
  s_.report = {};
  s_.report.old_generation = s_.gen;
  s_.report.old_pid = s_.pid;
  s_.ph = service_phase::spawning;
  t_trigger_ = clock_type::now();
  s_.ready_deadline = t_trigger_ + s_.opts.ready_timeout;
  s_.tell_systemd(supervisor_state::reloading, "generation " + std::to_string(s_.gen) + " hands over to a new one");
  error_code ec;
  if (!s_.opts.keeper.empty()) {
    // The keeper starts every generation, so that the process a supervisor watches stays; its
    // answer (op=spawned) names the next generation's pid, whose death then fails the restart.
    control_message m("spawn");
    m.set("reply", s_.name);
    if ((ec = send_message(s_.ex, s_.opts.keeper, m))) {
      if (ec == errc::channel_not_found || ec == errc::channel_owner_dead) ec = errc::keeper_gone;
      return fail(ec);
    }
    s_.peer = process_watch();
    return s_.ensure_tick(20ms);
  }
  const std::string bin = !binary.empty()               ? binary
                          : !s_.opts.next_binary.empty() ? s_.opts.next_binary
                                                         : current_executable_path();
  const auto child = spawn_with_handles(bin, s_.opts.next_args, {}, ec);
  if (ec) return fail(ec);
  s_.peer = process_watch(child.pid);
  s_.ensure_tick(20ms);
}

void handover::on_spawned(const control_message& m) {
  if (s_.ph != service_phase::spawning) return;  // the next generation announced itself first
  if (const auto ec = m.error()) return fail(ec);
  if (s_.peer.pid() == 0) s_.peer = process_watch(static_cast<std::uint32_t>(m.number("pid")));
}

void handover::refuse(const std::string& reply, const error_code& ec) {
  if (reply.empty()) return;
  control_message m("result");
  m.set("ok", "0").set_error(ec);
  s_.reply(reply, m);
}

void handover::on_hello(const std::string& inbox_name) {
  if (s_.ph != service_phase::serving && s_.ph != service_phase::spawning) {
    ++s_.st.restarts_refused;
    s_.reply(inbox_name, control_message("busy"));
    return;
  }
  if (s_.ph == service_phase::serving) {
    // Started by the operator rather than by us: a restart all the same.
    s_.report = {};
    s_.report.old_generation = s_.gen;
    s_.report.old_pid = s_.pid;
    t_trigger_ = clock_type::now();
    s_.ph = service_phase::spawning;
    s_.tell_systemd(supervisor_state::reloading, "generation " + std::to_string(s_.gen) + " hands over to a new one");
  }
  error_code ec;
  s_.next = std::make_shared<channel>(channel::open(s_.ex, inbox_name, {}, ec));
  if (ec) {
    s_.next.reset();
    return fail(ec);
  }
  // The next generation is the process that owns the inbox we just opened (the only process
  // its tickets are for), whatever pid the hello names.
  const std::uint32_t from = s_.next->owner_pid();
  if (s_.peer.pid() != from) s_.peer = process_watch(from);  // not the one we started: it answered first
  s_.t_hello = clock_type::now();
  s_.report.ready_time = std::chrono::microseconds(micros(s_.t_hello - t_trigger_));
  s_.report.new_pid = from;
  s_.report.new_generation = s_.gen + 1;
  s_.ph = service_phase::handing_over;
  listeners_done_ = false;
  drain_deadline_ = s_.t_hello + s_.opts.drain_deadline;
  control_message welcome("welcome");
  welcome.set("generation", s_.gen).set("pid", std::uint64_t{s_.pid}).set("listeners", s_.listeners.sockets());
  auto nx = s_.next;
  nx->async_send(welcome.to_ticket(), [self = s_.shared_from_this(), nx](error_code ec) {
    if (self->next != nx || self->ph != service_phase::handing_over) return;
    if (ec) return self->hand.fail(ec);
    self->listeners.send_all();
  });
  s_.ensure_tick(10ms);
}

void handover::listeners_sent() {
  listeners_done_ = true;
  s_.report.listeners_time = std::chrono::microseconds(micros(clock_type::now() - s_.t_hello));
  // Connections accepted but not yet taken by the application, and those parked at a safe
  // point, go on now, a window of moves at a time.
  s_.conns.move_all();
  // Connections only the server writes on never reach a safe point: their writers hear it now.
  s_.conns.notify_handover({});
  drain_step(clock_type::now());
}

void handover::moves_settled() {
  if (!forwarding()) return;
  asio::post(s_.ex, [self = s_.shared_from_this()] { self->hand.drain_step(clock_type::now()); });
}

void handover::tick(clock_type::time_point now) {
  if (s_.ph == service_phase::spawning) {
    if (s_.peer.pid() != 0 && !s_.peer.alive()) return fail(make_error_code(errc::next_generation_died));
    if (now >= s_.ready_deadline) return fail(make_error_code(errc::next_generation_not_ready));
    return s_.ensure_tick(20ms);
  }
  drain_step(now);
  if (s_.ph == service_phase::handing_over) s_.ensure_tick(10ms);
}

void handover::drain_step(clock_type::time_point now) {
  if (s_.ph != service_phase::handing_over) return;
  if (!s_.peer.alive()) {
    // Its death shows in the moves still awaiting a verdict within a poll (<1 ms): wait for
    // them, so that the report counts the connections it had taken (they ended with it).
    if (s_.conns.moves_in_flight() > 0) return;
    return fail(make_error_code(errc::next_generation_died));
  }
  if (!listeners_done_) return;
  const bool past_deadline = now >= drain_deadline_;
  if (!past_deadline && now - s_.conns.last_move_failure() > 100ms) s_.conns.retry_refused();
  // A connection in the middle of its move is in neither process's count (its descriptor
  // waits in the move): wait for every verdict, past the deadline too (bounded by the move
  // timeout), before saying that nothing is left.
  if (s_.conns.moves_in_flight() > 0) return;
  const auto left = s_.conns.owned_count();
  if (left == 0 || past_deadline) retire(left);
}

void handover::retire(std::size_t not_moved) {
  s_.ph = service_phase::retired;
  s_.stop_timers();
  s_.report.connections_not_moved = not_moved;
  s_.st.connections_lost += not_moved;
  s_.report.handover_time = std::chrono::microseconds(micros(clock_type::now() - s_.t_hello));
  s_.listeners.close_kept();
  // Give up the service's name first, so the next generation can take it as soon as it hears.
  if (s_.control) {
    s_.control->close();
    asio::post(s_.ex, [self = s_.shared_from_this()] { self->control.reset(); });
  }
  // Without a keeper systemd watches this process: it must follow the next generation before
  // this one exits (which it would otherwise take for the service's end). From here, not from
  // the next generation, so that it is said before the exit.
  s_.tell_systemd(supervisor_state::status,
                  "generation " + std::to_string(s_.gen + 1) + " (pid " + std::to_string(s_.report.new_pid) + ") takes over",
                  s_.report.new_pid);
  control_message m("done");
  m.set("reply", s_.reply_to);
  put_report(m, s_.report);
  auto nx = s_.next;
  nx->async_send(m.to_ticket(), [self = s_.shared_from_this(), nx](error_code) {
    self->hand.complete({});
    self->conns.abort_accept();
  });
}

void handover::complete(error_code ec) {
  s_.report.ec = ec;
  if (restart_handler_) {
    auto h = std::move(*restart_handler_);
    restart_handler_.reset();
    asio::post(s_.ex, asio::append(std::move(h), ec, s_.report));
  }
  if (!ec) notify_retired();
}

void handover::notify_retired() {
  for (auto& w : retired_waiters_) asio::post(s_.ex, asio::append(std::move(w), error_code(), s_.report));
  retired_waiters_.clear();
}

void handover::fail(error_code ec) {
  if (s_.ph != service_phase::spawning && s_.ph != service_phase::handing_over) return;
  ++s_.st.restarts_failed;
  // Connections the next generation had taken ended with it if it died; if it is alive (a
  // deadline, an abort), it keeps them and serves them until it exits on hearing the abort.
  if (ec == errc::next_generation_died) {
    s_.report.connections_lost = s_.report.connections_moved;
    s_.st.connections_lost += s_.report.connections_moved;
  }
  std::string line = "baton: restart of " + s_.name + " failed: " + ec.message() + "; generation " +
                     std::to_string(s_.gen) + " keeps serving";
  if (s_.report.connections_lost)
    line += "; " + std::to_string(s_.report.connections_lost) + " connections had moved and were lost";
  s_.note(line);
  if (s_.next) {
    auto nx = s_.next;
    nx->async_send(control_message("abort").set("reason", ec.message()).to_ticket(), [nx](error_code) {});
  }
  s_.next.reset();
  s_.ph = service_phase::serving;
  listeners_done_ = false;
  s_.peer = process_watch();
  s_.conns.abandon_moves();
  s_.listeners.take_back();
  if (!s_.reply_to.empty()) {
    control_message m("result");
    m.set("ok", "0").set_error(ec);
    put_report(m, s_.report);
    s_.reply(s_.reply_to, m);
  }
  s_.reply_to.clear();
  s_.tell_in_charge();
  complete(ec);
  s_.stopper.resume_if_pending();
}

void handover::wait_retired(asio::any_completion_handler<void(error_code, restart_report)> h) {
  if (s_.ph == service_phase::retired) {
    asio::post(s_.ex, asio::append(std::move(h), error_code(), s_.report));
    return;
  }
  retired_waiters_.push_back(std::move(h));
}

void handover::close(bool was_retired, const restart_report& r) {
  if (restart_handler_) {
    auto h = std::move(*restart_handler_);
    restart_handler_.reset();
    asio::post(s_.ex, asio::append(std::move(h), r.ec, r));
  }
  for (auto& w : retired_waiters_) asio::post(s_.ex, asio::append(std::move(w), was_retired ? error_code() : r.ec, r));
  retired_waiters_.clear();
}

}  // namespace baton::detail
