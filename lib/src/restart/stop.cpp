// Hot restart's other ending: a graceful stop (see service_impl.hpp). The generation in charge
// stops accepting, lets every connection finish the request it is in and closes it at its next
// safe point, then gives up the service's name and reports how each connection ended. A stop
// asked for during a restart waits for it: a successful restart retires this generation anyway.
#include "restart/service_impl.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>

#include <csignal>

namespace baton::detail {

using namespace std::chrono_literals;

void graceful_stop::request(std::optional<handler> h, std::string reply, bool from_signal) {
  const auto ph = s_.ph;
  if (!from_signal && (ph == service_phase::spawning || ph == service_phase::handing_over ||
                       ph == service_phase::joining || ph == service_phase::taking_over)) {
    // Asked by someone who can ask again: say so rather than stop whichever generation ends up
    // in charge. (A signal, from a supervisor, waits for the restart to end instead.)
    restart_report r = s_.report;
    r.ec = make_error_code(errc::restart_in_progress);
    if (!reply.empty()) {
      control_message m("result");
      m.set("ok", "0").set_error(r.ec);
      s_.reply(reply, m);
    }
    if (h) asio::post(s_.ex, asio::append(std::move(*h), r.ec, r));
    return;
  }
  if (h) waiters_.push_back(std::move(*h));
  if (!reply.empty()) replies_.push_back(std::move(reply));
  switch (ph) {
    case service_phase::serving:
      return begin();
    case service_phase::stopping:
      return;  // already stopping: answered when it ends
    case service_phase::retired:
    case service_phase::closed:
    case service_phase::created:
      return finish(0);  // nothing to stop: answer at once
    default:
      pending_ = true;  // joining, taking over, or handing over: once that has ended
      return;
  }
}

void graceful_stop::arm_signals() {
  if (!s_.opts.stop_signals || signals_) return;
  signals_.emplace(s_.ex);
  error_code ec;
  signals_->add(SIGINT, ec);
  signals_->add(SIGTERM, ec);
  wait_signal();
}

void graceful_stop::wait_signal() {
  signals_->async_wait([self = s_.shared_from_this()](error_code ec, int) {
    if (ec || !self->stopper.signals_) return;
    // A second signal while stopping: stop now, cutting what is left (an operator's second Ctrl+C).
    if (self->ph == service_phase::stopping) return self->stopper.finish(self->conns.owned_count());
    self->stopper.request(std::nullopt, "", true);
    self->stopper.wait_signal();
  });
}

void graceful_stop::resume_if_pending() {
  if (pending_ && s_.ph == service_phase::serving) {
    pending_ = false;
    begin();
  }
}

void graceful_stop::begin() {
  s_.ph = service_phase::stopping;
  started_ = clock_type::now();
  deadline_ = started_ + s_.opts.drain_deadline;
  s_.report = {};
  s_.report.stopped = true;
  s_.report.old_generation = s_.report.new_generation = s_.gen;
  s_.report.old_pid = s_.report.new_pid = s_.pid;
  s_.note("baton: service " + s_.name + " generation " + std::to_string(s_.gen) +
          " stopping: no new connections, open ones close after their current request");
  s_.tell_systemd(supervisor_state::stopping, "generation " + std::to_string(s_.gen) + " stopping");
  s_.listeners.close();
  s_.conns.stop_all();
  tick(clock_type::now());
}

void graceful_stop::tick(clock_type::time_point now) {
  if (s_.ph != service_phase::stopping) return;
  const auto left = s_.conns.owned_count();
  if (left == 0 || now >= deadline_) return finish(left);
  s_.ensure_tick(10ms);
}

void graceful_stop::finish(std::size_t left) {
  const bool was_stopping = s_.ph == service_phase::stopping;
  if (was_stopping) {
    s_.ph = service_phase::retired;
    s_.stop_timers();
    s_.report.connections_closed = s_.conns.closed_at_stop();
    s_.report.connections_not_moved = left;
    s_.st.connections_lost += left;
    s_.report.handover_time = std::chrono::microseconds(micros(clock_type::now() - started_));
    // Give up the name: the control channel's objects go with it.
    if (s_.control) {
      s_.control->close();
      asio::post(s_.ex, [self = s_.shared_from_this()] { self->control.reset(); });
    }
    if (s_.trigger) {
      s_.trigger->cancel();
      s_.trigger.reset();
    }
  }
  pending_ = false;
  if (signals_) {
    error_code ignored;
    signals_->cancel(ignored);
  }
  restart_report r = s_.report;
  if (!was_stopping && !r.stopped) r.ec = make_error_code(errc::service_not_found);
  // Answered after the control channel is gone (posted behind its release above), so that a
  // requester who hears "stopped" finds the name free.
  for (auto& to : replies_)
    asio::post(s_.ex, [self = s_.shared_from_this(), to, r] {
      control_message m("result");
      m.set("ok", r.ec ? "0" : "1");
      put_report(m, r);
      m.set_error(r.ec);
      self->reply(to, m);
    });
  replies_.clear();
  for (auto& w : waiters_) asio::post(s_.ex, asio::append(std::move(w), r.ec, r));
  waiters_.clear();
  if (was_stopping) {
    s_.conns.abort_accept();
    s_.hand.notify_retired();
  }
}

void graceful_stop::close() {
  pending_ = false;
  if (signals_) {
    error_code ignored;
    signals_->cancel(ignored);
    signals_.reset();
  }
  restart_report r = s_.report;
  r.ec = make_error_code(asio::error::operation_aborted);
  for (auto& w : waiters_) asio::post(s_.ex, asio::append(std::move(w), r.ec, r));
  waiters_.clear();
}

}  // namespace baton::detail
