// The keeper (baton/keeper.hpp): starts the generations of a service as its own children, starts
// the next one when the generation in charge asks (op=spawn on the keeper's channel), forwards
// stops, reaps, and ends with the last generation's status. The OS side (signals, reaping, exit
// statuses) is detail::keeper_os, in lib/src/posix/ and lib/src/win/.
//
// Messages on the keeper's channel "keeper-<pid>-<random>" (control tickets, see
// restart/service_impl.hpp for the service's own):
//   op=spawn reply            the generation in charge wants its successor; answered on `reply`
//                             (the service's control channel) with op=spawned pid, or an error
//   op=charge service pid generation   a generation took charge of the service
//   op=result ...             the answer to a restart or stop the keeper asked for
#include "baton/keeper.hpp"

#include "baton/restart.hpp"
#include "baton/spawn.hpp"
#include "detail/socket_custody.hpp"
#include "detail/windows_service.hpp"
#include "restart/service_impl.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <set>

namespace baton {
namespace detail {

using namespace std::chrono_literals;

struct keeper_impl : std::enable_shared_from_this<keeper_impl> {
  keeper_impl(const asio::any_io_executor& e, keeper_options o) : ex(e), opts(std::move(o)), timer(e) {}

  using run_handler = asio::any_completion_handler<void(error_code, int)>;

  void note(const std::string& line) const {
    if (opts.log) opts.log(line);
  }

  void run(run_handler h) {
    if (handler || finished) {
      asio::post(ex, asio::append(std::move(h), make_error_code(errc::operation_in_progress), 1));
      return;
    }
    handler.emplace(std::move(h));
    error_code ec;
    auto weak = weak_from_this();
    const auto on_restart = [weak] {
      if (auto self = weak.lock()) self->restart();
    };
    const auto on_stop = [weak] {
      if (auto self = weak.lock()) self->stop();
    };
    // First, so that the SCM hears from its service at once (it waits 30 s at most).
    if (!opts.windows_service.empty()) {
      scm = make_windows_service(ex, opts.windows_service, {on_restart, on_stop, keeper_service_control_restart}, ec);
      if (ec) return finish(ec, 1);
    }
    // The channel's name is unpredictable, so that nobody can hold it in advance.
    for (int attempt = 0; attempt < 8; ++attempt) {
      name = "keeper-" + std::to_string(current_pid()) + "-" + random_suffix();
      auto o = restart_channel_options();
      o.ack_slots = 16;  // not the control channel's geometry: `batonctl list` must not take it for a service
      ch = std::make_shared<channel>(channel::create(ex, name, o, ec));
      if (ec != errc::name_in_use) break;
    }
    if (ec) return finish(ec, 1);
    receive();
    keeper_os::events ev;
    ev.exited = [weak](std::uint32_t pid, int status) {
      if (auto self = weak.lock()) self->on_exit(pid, status);
    };
    if (opts.os_signals) {
      ev.restart = on_restart;
      ev.stop = on_stop;
    }
    os = make_keeper_os(ex, std::move(ev), ec);
    if (ec) return finish(ec, 1);
    set_environment(keeper_environment_variable, name);
    // Socket activation: the listeners systemd passed go to generation 1 (which adopts them
    // instead of binding) and only to it; the keeper keeps no copy (it holds no listener).
    // Their names (FileDescriptorName=) go with them.
    const auto activated = take_activated_listeners();
    std::vector<std::uintptr_t> handles;
    for (const auto& a : activated) handles.push_back(a.handle);
    pass_activated_listeners(activated);
    spawn(ec, handles);
    pass_activated_listeners({});
    for (auto h : handles) kept_socket::own(h).close();  // the keeper holds no listener
    if (ec) return finish(ec, 127);
  }

  std::uint32_t spawn(error_code& ec, const std::vector<std::uintptr_t>& handles = {}) {
    const auto child = spawn_with_handles(opts.program, opts.args, handles, ec);
    if (ec) {
      note("baton: keeper: cannot start " + opts.program + ": " + ec.message());
      return 0;
    }
    ++st.generations_started;
    children.insert(child.pid);
    note("baton: keeper: started " + opts.program + " (pid " + std::to_string(child.pid) + ")");
    os->watch(child.pid);
    return child.pid;
  }

  // systemd (sd_notify): READY=1 when the first generation takes charge; RELOADING=1 when a
  // restart starts a new generation, READY=1 when it has taken charge (or the restart failed);
  // STOPPING=1. Each with a STATUS= line. The keeper stays the main process: no MAINPID=. The
  // Windows SCM: RUNNING from the first READY on, STOP_PENDING on a stop.
  void tell(supervisor_state s, const std::string& status) {
    systemd.tell(s, status);
    if (scm) scm->tell(s);
  }

  void receive() {
    auto c = ch;
    c->async_receive([self = shared_from_this(), c](error_code ec, ticket t) {
      if (ec == asio::error::operation_aborted || self->ch != c || self->finished) return;
      if (!ec && t.kind == ticket_kind::control) {
        error_code pe;
        auto m = control_message::parse(t, pe);
        if (pe) self->note("baton: keeper: ignored a ticket on its channel: " + pe.message());
        else self->on_message(m);
      }
      if (self->ch == c && c->is_open()) self->receive();
    });
  }

  void on_message(const control_message& m) {
    const auto op = m.op();
    if (op == "spawn") {
      control_message a("spawned");
      if (stopping) {
        a.set_error(make_error_code(errc::service_stopping));
      } else {
        error_code ec;
        const auto pid = spawn(ec);
        if (ec) a.set_error(ec);
        else a.set("pid", std::uint64_t{pid});
        if (!ec) tell(supervisor_state::reloading, "generation " + std::to_string(st.in_charge_generation) +
                                                       " hands over to a new one (pid " + std::to_string(pid) + ")");
        else tell(supervisor_state::ready, "restart failed: " + ec.message());
      }
      if (auto ec = send_message(ex, m.get("reply"), a)) note("baton: keeper: cannot answer a spawn request: " + ec.message());
    } else if (op == "charge") {
      const auto svc = m.get("service");
      if (opts.service.empty()) opts.service = svc;
      else if (svc != opts.service)
        note("baton: keeper: a generation took charge of service " + svc + ", expected " + opts.service);
      st.in_charge_pid = static_cast<std::uint32_t>(m.number("pid"));
      st.in_charge_generation = m.number("generation");
      note("baton: keeper: generation " + std::to_string(st.in_charge_generation) + " (pid " +
           std::to_string(st.in_charge_pid) + ") is in charge of " + svc);
      if (stopping) stop_sent_to = 0;  // a restart ended during the stop: stop the new generation too
      else tell(supervisor_state::ready, "generation " + std::to_string(st.in_charge_generation) + " (pid " +
                                            std::to_string(st.in_charge_pid) + ") serving");
    } else if (op == "result") {
      const auto r = get_report(m);
      if (r.stopped || (stopping && r.ec)) {
        if (r.ec == errc::restart_in_progress) stop_sent_to = 0;  // asked again once the restart is over
        else if (r.ec) note("baton: keeper: stop of " + opts.service + " failed: " + r.ec.message());
        else note("baton: keeper: " + to_string(r, opts.service));
      } else {
        note("baton: keeper: " + to_string(r, opts.service));
        if (r.ec && !stopping) tell(supervisor_state::ready, "restart failed: " + r.ec.message());
      }
    }
  }

  void on_exit(std::uint32_t pid, int status) {
    if (children.erase(pid) == 0) return;
    last_status = status;
    if (pid == st.in_charge_pid) st.in_charge_pid = 0;
    if (status != 0) {
      note("baton: keeper: generation pid " + std::to_string(pid) + " exited with status " + std::to_string(status));
      // A next generation that died before taking charge: its predecessor serves on.
      if (systemd.reloading() && !stopping && !children.empty())
        tell(supervisor_state::ready, "restart failed: the new generation exited with status " + std::to_string(status));
    }
    if (children.empty()) {
      // A generation ending with no successor alive ends the keeper: a crash is the supervisor's
      // to handle (restarting it here would hide it), a stop is the service's end.
      if (status != 0 && !stopping) note("baton: keeper: no generation left; not restarting a failed service");
      finish({}, last_status);
    }
  }

  void restart() {
    if (finished) return;
    if (stopping) return note("baton: keeper: restart ignored: stopping");
    // Through the generation in charge, as batonctl does, so that a restart under way refuses
    // the second one and the report comes back here; with nobody in charge (yet), a new
    // generation announces itself to whoever runs.
    if (!opts.service.empty() && st.in_charge_pid != 0) {
      control_message m("restart");
      m.set("reply", name);
      if (!send_message(ex, opts.service, m)) return;
    }
    error_code ec;
    spawn(ec);
  }

  void stop() {
    if (finished) return;
    if (!stopping) {
      stopping = true;
      stop_deadline = clock_type::now() + opts.drain_deadline;
      note("baton: keeper: stopping");
      tell(supervisor_state::stopping, "stopping: generations drain for up to " +
                                           std::to_string(opts.drain_deadline.count()) + " ms");
      return tick();  // sends the stop, and follows it until the deadlines
    }
    stop_at_once();
  }

  void send_stop() {
    if (opts.service.empty() || st.in_charge_pid == 0 || stop_sent_to == st.in_charge_pid) return;
    control_message m("stop");
    m.set("reply", name);
    if (!send_message(ex, opts.service, m)) stop_sent_to = st.in_charge_pid;
  }

  void stop_at_once() {
    if (at_once) return;
    at_once = true;
    kill_deadline = clock_type::now() + 5s;
    note("baton: keeper: stopping every generation at once");
    for (auto pid : children) os->stop_at_once(pid);
  }

  // While stopping, every 100 ms: the stop sent (again, until the generation in charge takes it),
  // then at the deadlines every generation stopped at once, then killed.
  void tick() {
    if (finished) return;
    const auto now = clock_type::now();
    if (at_once && now >= kill_deadline) {
      for (auto pid : children) kill_process_hard(pid);
    } else if (!at_once && now >= stop_deadline) {
      stop_at_once();
    } else if (!at_once) {
      send_stop();
    }
    timer.expires_after(100ms);
    timer.async_wait([self = shared_from_this()](error_code ec) {
      if (!ec) self->tick();
    });
  }

  void finish(error_code ec, int status) {
    if (finished) return;
    finished = true;
    timer.cancel();
    if (os) os->close();
    if (ch) ch->close();
    // What a crashed (or killed) generation left under the service's name: nobody else would
    // remove it. remove_stale leaves the objects of a live owner alone.
    if (!opts.service.empty()) {
      error_code ignored;
      channel::remove_stale(opts.service, ignored);
    }
    // Last: once the SCM hears SERVICE_STOPPED, it may end this process at any moment.
    if (scm) scm->stopped(ec && status == 0 ? 1 : status);
    if (handler) {
      auto h = std::move(*handler);
      handler.reset();
      asio::post(ex, asio::append(std::move(h), ec, status));
    }
  }

  asio::any_io_executor ex;
  keeper_options opts;
  asio::steady_timer timer;
  std::string name;
  std::shared_ptr<channel> ch;
  std::unique_ptr<keeper_os> os;
  std::unique_ptr<windows_service> scm;  // keeper_options::windows_service
  std::optional<run_handler> handler;
  std::set<std::uint32_t> children;  // generations alive
  keeper_stats st;
  int last_status = 0;
  bool finished = false, stopping = false, at_once = false;
  supervisor_notes systemd;
  std::uint32_t stop_sent_to = 0;
  clock_type::time_point stop_deadline{}, kill_deadline{};
};

}  // namespace detail

keeper::keeper(const executor_type& ex, keeper_options opts)
    : impl_(std::make_shared<detail::keeper_impl>(ex, std::move(opts))) {}

keeper::~keeper() { impl_->finish(make_error_code(boost::asio::error::operation_aborted), 1); }

void keeper::start_run(boost::asio::any_completion_handler<void(error_code, int)> h) { impl_->run(std::move(h)); }
void keeper::restart() { impl_->restart(); }
void keeper::stop() { impl_->stop(); }
keeper_stats keeper::stats() const {
  auto s = impl_->st;
  s.children = impl_->children.size();
  return s;
}
std::string keeper::channel_name() const { return impl_->name; }

}  // namespace baton
