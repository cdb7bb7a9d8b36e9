// Hot restart: the state every role shares, the control channel of the generation in charge,
// the tick that drives the time-outs, and the public facade (see service_impl.hpp).
#include "restart/service_impl.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>

#include <cstdlib>

namespace baton {
namespace detail {

using namespace std::chrono_literals;

service_impl::service_impl(const asio::any_io_executor& e, std::string n, restart_options o)
    : ex(e),
      name(std::move(n)),
      opts(std::move(o)),
      tick_timer(e),
      trigger_retry(e),
      listeners(*this),
      conns(*this),
      succ(*this),
      hand(*this),
      stopper(*this) {
  if (opts.keeper.empty())
    if (const char* k = std::getenv(keeper_environment_variable)) opts.keeper = k;
}

void service_impl::reply(const std::string& to, const control_message& m) const {
  if (auto ec = send_message(ex, to, m)) note("baton: service " + name + " cannot answer on channel " + to + ": " + ec.message());
}

void service_impl::ensure_tick(clock_type::duration every) {
  if (ticking) return;
  ticking = true;
  tick_timer.expires_after(every);
  tick_timer.async_wait([self = shared_from_this()](error_code ec) {
    self->ticking = false;
    if (!ec) self->tick();
  });
}

void service_impl::tick() {
  const auto now = clock_type::now();
  switch (ph) {
    case service_phase::joining:
    case service_phase::taking_over:
      return succ.tick(now);
    case service_phase::spawning:
    case service_phase::handing_over:
      return hand.tick(now);
    case service_phase::stopping:
      return stopper.tick(now);
    default:
      return;
  }
}

void service_impl::stop_timers() {
  ticking = false;
  tick_timer.cancel();
  trigger_retry.cancel();
  if (trigger) trigger->cancel();
}

void receive_each(std::shared_ptr<channel> ch, std::function<bool(const channel*)> current,
                  std::function<void(arrival)> on) {
  auto& c = *ch;
  // A batch per completion: under load, one arrival per turn of the event loop made a hand-over
  // of 15,000 idle connections beside 200 busy ones take 20-25 s (1.3-1.6 ms each).
  baton::async_receive_some(c, receive_batch, [ch = std::move(ch), current = std::move(current),
                                               on = std::move(on)](error_code ec, std::vector<arrival> got) mutable {
    if (ec == asio::error::operation_aborted || !current(ch.get())) return;
    for (auto& a : got) on(std::move(a));
    if (current(ch.get()) && ch->is_open()) receive_each(std::move(ch), std::move(current), std::move(on));
  });
}

// ---- the control channel -----------------------------------------------------------------------

void service_impl::take_charge(error_code& ec) {
  auto ctl = channel::create(ex, name, restart_channel_options(), ec);
  if (ec == errc::name_in_use) {
    // A dead owner's leftovers (POSIX) are removed; a live owner's are not.
    error_code rs;
    channel::remove_stale(name, rs);
    if (!rs) ctl = channel::create(ex, name, restart_channel_options(), ec);
  }
  if (ec) return;
  control = std::make_shared<channel>(std::move(ctl));
  ph = service_phase::serving;
  receive_control();
  tell_in_charge();
  if (opts.os_triggers && !trigger) arm_trigger(clock_type::now() + 5s);
}

void service_impl::tell_in_charge() {
  // Once the application accepts, so that generation 1 has its listeners when it is reported ready.
  in_charge_untold = !accepting;
  if (in_charge_untold) return;
  if (opts.keeper.empty()) {
    // Without a keeper this process is the one systemd watches from now on (MAINPID=).
    return tell_systemd(supervisor_state::ready,
                        "generation " + std::to_string(gen) + " (pid " + std::to_string(pid) + ") serving", pid);
  }
  control_message m("charge");
  m.set("service", name).set("pid", std::uint64_t{pid}).set("generation", gen);
  if (auto ec = send_message(ex, opts.keeper, m)) note("baton: service " + name + " cannot reach its keeper: " + ec.message());
}

void service_impl::application_serves() {
  if (accepting) return;
  accepting = true;
  if (in_charge_untold) tell_in_charge();
}

void service_impl::tell_systemd(supervisor_state s, const std::string& status, std::uint32_t main_pid) {
  if (opts.keeper.empty()) systemd.tell(s, status, main_pid);  // under a keeper, the keeper speaks
}

void service_impl::try_take_charge(clock_type::time_point until) {
  error_code ec;
  take_charge(ec);
  if (ec == errc::name_in_use && clock_type::now() < until) {
    // The old generation's objects are still on their way out.
    trigger_retry.expires_after(20ms);
    trigger_retry.async_wait([self = shared_from_this(), until](error_code e) {
      if (!e && self->ph == service_phase::serving && !self->control) self->try_take_charge(until);
    });
    return;
  }
  if (ec) {
    note("baton: service " + name + " generation " + std::to_string(gen) +
         " cannot own its control channel: " + ec.message());
  }
  if (!reply_to.empty()) {
    control_message m("result");
    m.set("ok", ec ? "0" : "1");
    put_report(m, report);
    m.set_error(ec);
    reply(reply_to, m);
    reply_to.clear();
  }
}

void service_impl::arm_trigger(clock_type::time_point until) {
  error_code ec;
  trigger = make_restart_trigger(ex, name, ec);
  if (ec == errc::name_in_use && clock_type::now() < until) {
    trigger_retry.expires_after(50ms);
    trigger_retry.async_wait([self = shared_from_this(), until](error_code e) {
      if (!e && self->ph != service_phase::closed && self->ph != service_phase::retired) self->arm_trigger(until);
    });
    return;
  }
  if (ec) {
    note("baton: service " + name + ": OS restart trigger unavailable (" + ec.message() + "); batonctl still works");
    return;
  }
  wait_trigger();
}

void service_impl::wait_trigger() {
  trigger->async_wait([self = shared_from_this()](error_code ec) {
    if (ec || !self->trigger) return;
    self->hand.begin(std::nullopt, "", "");
    if (self->trigger && self->ph != service_phase::retired && self->ph != service_phase::closed) self->wait_trigger();
  });
}

void service_impl::receive_control() {
  receive_each(
      control, [self = shared_from_this()](const channel* ch) { return self->control.get() == ch; },
      [self = shared_from_this()](arrival a) { self->on_control(std::move(a)); });
}

void service_impl::on_control(arrival a) {
  if (a.kind != ticket_kind::control) return;  // nobody moves sockets to a control channel
  error_code ec;
  const auto m = control_message::parse(a.control, ec);
  if (ec) return note("baton: service " + name + " ignored a control ticket: " + ec.message());
  const auto op = m.op();
  if (op == "hello") {
    hand.on_hello(m.get("inbox"));
  } else if (op == "restart") {
    hand.begin(std::nullopt, m.get("reply"), m.get("binary"));
  } else if (op == "spawned") {
    hand.on_spawned(m);
  } else if (op == "stop") {
    stopper.request(std::nullopt, m.get("reply"));
  } else if (op == "status") {
    reply(m.get("reply"), control_message("status-reply").set("text", status_text()));
  }
}

// ---- the service as a whole ----------------------------------------------------------------------

service_stats service_impl::stats() {
  service_stats s = st;
  s.pid = pid;
  s.generation = gen;
  s.connections = conns.owned_count();
  s.listeners = listeners.count();
  s.udp_sockets = listeners.udp_count();
  return s;
}

void service_impl::close() {
  if (ph == service_phase::closed) return;
  const bool was_retired = ph == service_phase::retired;
  ph = service_phase::closed;
  stop_timers();
  listeners.close();
  if (control) control->close();
  conns.abort_accept();
  succ.close();
  stopper.close();
  restart_report r = report;
  r.ec = make_error_code(asio::error::operation_aborted);
  hand.close(was_retired, r);
  conns.cancel_parked();
}

}  // namespace detail

// ---- public API ---------------------------------------------------------------------------------

service::service(const executor_type& ex, std::string name, restart_options opts)
    : impl_(std::make_shared<detail::service_impl>(ex, std::move(name), std::move(opts))) {}
service::~service() {
  if (impl_) impl_->close();
}
service::executor_type service::get_executor() const { return impl_->ex; }
const std::string& service::name() const noexcept { return impl_->name; }
std::uint64_t service::generation() const noexcept { return impl_->gen; }
void service::add_listener(listener l) { impl_->listeners.add(std::move(l), true); }
std::size_t service::listener_count() const noexcept { return impl_->listeners.count(); }
std::vector<boost::asio::ip::tcp::endpoint> service::local_endpoints() const {
  return impl_->listeners.local_endpoints();
}
std::vector<listener_info> service::listeners() const { return impl_->listeners.info(); }
void service::add_udp_socket(udp_socket u) { impl_->listeners.add_udp(std::move(u)); }
std::size_t service::udp_socket_count() const noexcept { return impl_->listeners.udp_count(); }
std::vector<udp_socket> service::udp_sockets() {
  impl_->application_serves();  // one that serves only UDP never accepts
  return impl_->listeners.udp_handles();
}
restart_report service::last_report() const { return impl_->report; }
service_stats service::stats() const { return impl_->stats(); }
void service::close() { impl_->close(); }

void service::start_start(boost::asio::any_completion_handler<void(error_code)> h) {
  impl_->succ.start(std::move(h));
}
void service::start_accept(boost::asio::any_completion_handler<void(error_code, connection)> h) {
  impl_->application_serves();
  impl_->conns.accept(std::move(h));
}
void service::start_safe_point(connection& c, boost::asio::any_completion_handler<void(error_code, bool)> h) {
  impl_->conns.safe_point(c, std::move(h));
}
void service::start_handover(connection& c, boost::asio::any_completion_handler<void(error_code, bool)> h) {
  impl_->conns.handover_now(c, std::move(h));
}
void service::start_wait_handover(boost::asio::any_completion_handler<void(error_code)> h) {
  impl_->conns.wait_handover(std::move(h));
}
bool service::handing_over() const noexcept { return impl_->hand.forwarding(); }
void service::close_gracefully(connection& c) { impl_->conns.close_gracefully(c); }
void service::start_restart(boost::asio::any_completion_handler<void(error_code, restart_report)> h) {
  impl_->hand.begin(std::move(h), "", "");
}
void service::start_stop(boost::asio::any_completion_handler<void(error_code, restart_report)> h) {
  impl_->stopper.request(std::move(h), "");
}
void service::start_wait_retired(boost::asio::any_completion_handler<void(error_code, restart_report)> h) {
  impl_->hand.wait_retired(std::move(h));
}

}  // namespace baton
