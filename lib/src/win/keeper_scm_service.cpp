// The keeper as a Windows service (detail/windows_service.hpp): StartServiceCtrlDispatcherW on a
// thread of its own (it returns only once the service has reported SERVICE_STOPPED), the
// service's entry point registering the control handler (RegisterServiceCtrlHandlerExW), and
// SetServiceStatus from the keeper's executor. The control handler runs on the dispatcher's thread:
// it posts to the executor, which calls the keeper; a stop it also reports as STOP_PENDING itself,
// before it returns, so that the stop's caller (sc stop, ControlService) already sees it pending.
#include "detail/windows_service.hpp"
#include "win/security.hpp"
#include "win/win_headers.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <condition_variable>
#include <mutex>
#include <thread>

namespace baton::detail {

namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

// How often a pending state (start, stop) reports progress, and how long the SCM is told to wait
// for the next report.
constexpr auto scm_checkpoint_every = 1s;
constexpr DWORD scm_wait_hint_ms = 5000;

// What the SCM's threads (the dispatcher's, which runs the control handler, and the service's
// entry point) share with the keeper's executor. Lives until the last of them lets it go.
struct scm_link : std::enable_shared_from_this<scm_link> {
  scm_link(const asio::any_io_executor& e, std::wstring n, windows_service::events v)
      : ex(e), name(std::move(n)), ev(std::move(v)), stopped_event(::CreateEventW(nullptr, TRUE, FALSE, nullptr)) {}
  ~scm_link() {
    if (stopped_event) ::CloseHandle(stopped_event);
  }

  // On the dispatcher's thread: hand the control to the executor. Nothing after stopped().
  void post(std::function<void()> windows_service::events::*which) {
    std::lock_guard lk(m);
    if (!open) return;
    asio::post(ex, [self = shared_from_this(), which] {
      {
        std::lock_guard lk(self->m);
        if (!self->open) return;
      }
      if (self->ev.*which) (self->ev.*which)();
    });
  }

  // Every status report, whichever thread makes it. The checkpoint counts reports of the same
  // pending state. Once a stop was asked for, only STOP_PENDING and STOPPED are reported: a
  // report of RUNNING from the executor, which has not seen the stop yet, would undo it.
  void report(DWORD state, DWORD exit_status = 0) {
    std::lock_guard lk(report_m);
    report_locked(state, exit_status);
  }

  // On the dispatcher's thread, for SERVICE_CONTROL_STOP / SHUTDOWN.
  void report_stop_asked() {
    std::lock_guard lk(report_m);
    stop_asked = true;
    report_locked(SERVICE_STOP_PENDING, 0);
  }

  bool stop_was_asked() {
    std::lock_guard lk(report_m);
    return stop_asked;
  }

  // With report_m held.
  void report_locked(DWORD state, DWORD exit_status) {
    if (!status || (stop_asked && state != SERVICE_STOP_PENDING && state != SERVICE_STOPPED)) return;
    checkpoint = state == last_state ? checkpoint + 1 : 1;
    last_state = state;
    SERVICE_STATUS s{};
    s.dwServiceType = SERVICE_WIN32_OWN_PROCESS;
    s.dwCurrentState = state;
    if (state == SERVICE_START_PENDING || state == SERVICE_RUNNING)
      s.dwControlsAccepted = SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN;
    if (state == SERVICE_STOPPED && exit_status != 0) {
      s.dwWin32ExitCode = ERROR_SERVICE_SPECIFIC_ERROR;
      s.dwServiceSpecificExitCode = exit_status;
    }
    if (state == SERVICE_START_PENDING || state == SERVICE_STOP_PENDING) {
      s.dwCheckPoint = checkpoint;
      s.dwWaitHint = scm_wait_hint_ms;
    }
    ::SetServiceStatus(status, &s);
  }

  asio::any_io_executor ex;
  std::wstring name;
  windows_service::events ev;
  HANDLE stopped_event;
  std::mutex m;  // guards what follows
  std::condition_variable cv;
  bool entered = false, dispatcher_done = false, open = true;
  DWORD error = 0;  // of StartServiceCtrlDispatcherW or RegisterServiceCtrlHandlerExW
  std::mutex report_m;  // guards what follows
  SERVICE_STATUS_HANDLE status = nullptr;
  bool stop_asked = false;
  DWORD last_state = 0, checkpoint = 0;
};

// The service's entry point has no context argument: it finds the link here. One per process.
std::mutex scm_current_m;
std::shared_ptr<scm_link> scm_current;

DWORD WINAPI scm_on_control(DWORD control, DWORD, LPVOID, LPVOID context) {
  auto* link = static_cast<scm_link*>(context);
  switch (control) {
    case SERVICE_CONTROL_INTERROGATE:
      return NO_ERROR;
    case SERVICE_CONTROL_STOP:
    case SERVICE_CONTROL_SHUTDOWN:
      link->report_stop_asked();
      link->post(&windows_service::events::stop);
      return NO_ERROR;
    default:
      if (control != link->ev.restart_control) return ERROR_CALL_NOT_IMPLEMENTED;
      link->post(&windows_service::events::restart);
      return NO_ERROR;
  }
}

void WINAPI scm_service_main(DWORD, LPWSTR*) {
  std::shared_ptr<scm_link> link;
  {
    std::lock_guard lk(scm_current_m);
    link = scm_current;
  }
  if (!link) return;
  const auto h = ::RegisterServiceCtrlHandlerExW(link->name.c_str(), scm_on_control, link.get());
  const DWORD err = h ? 0 : ::GetLastError();
  if (h) {
    {
      std::lock_guard lk(link->report_m);
      link->status = h;
    }
    // The SCM waits for this first report; the keeper goes on from its executor.
    link->report(SERVICE_START_PENDING);
  }
  {
    std::lock_guard lk(link->m);
    link->entered = true;
    link->error = err;
  }
  link->cv.notify_all();
  // The entry point lasts as long as the service: until the keeper reports SERVICE_STOPPED.
  if (h) ::WaitForSingleObject(link->stopped_event, INFINITE);
}

class scm_service final : public windows_service {
 public:
  scm_service(const asio::any_io_executor& ex, std::shared_ptr<scm_link> link)
      : link_(std::move(link)), timer_(ex) {}
  ~scm_service() override { stopped(1); }

  void start(error_code& ec) {
    {
      std::lock_guard lk(scm_current_m);
      if (scm_current) {
        ec = make_error_code(errc::operation_in_progress);
        return;
      }
      scm_current = link_;
    }
    dispatcher_ = std::thread([link = link_] {
      SERVICE_TABLE_ENTRYW table[] = {{link->name.data(), scm_service_main}, {nullptr, nullptr}};
      const BOOL ok = ::StartServiceCtrlDispatcherW(table);
      const DWORD err = ok ? 0 : ::GetLastError();
      {
        std::lock_guard lk(scm_current_m);
        scm_current.reset();
      }
      {
        std::lock_guard lk(link->m);
        link->dispatcher_done = true;
        if (!ok) link->error = err;
      }
      link->cv.notify_all();
    });
    // The SCM calls the entry point at once; in a process it did not start, the dispatcher fails
    // with 1063 (at once on Windows, after ~10 s under Wine).
    std::unique_lock lk(link_->m);
    const bool settled =
        link_->cv.wait_for(lk, 30s, [&] { return link_->entered || link_->dispatcher_done; });
    const bool entered = settled && link_->entered && link_->error == 0;
    const DWORD error = link_->error;
    lk.unlock();
    if (entered) return tick(SERVICE_START_PENDING);
    if (!settled) ec = make_error_code(asio::error::timed_out);
    else if (error == ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) ec = make_error_code(errc::not_started_as_service);
    else ec = error_code(static_cast<int>(error), boost::system::system_category());
    stopped(1);
  }

  void tell(supervisor_state s) noexcept override {
    if (done_) return;
    if (s == supervisor_state::ready && state_ == SERVICE_START_PENDING) tick(SERVICE_RUNNING);
    else if (s == supervisor_state::stopping && state_ != SERVICE_STOP_PENDING) tick(SERVICE_STOP_PENDING);
  }

  void stopped(int exit_status) noexcept override {
    if (done_) return;
    done_ = true;
    timer_.cancel();
    bool entered = false;
    {
      std::lock_guard lk(link_->m);
      link_->open = false;
      entered = link_->entered && link_->error == 0;
    }
    if (entered) link_->report(SERVICE_STOPPED, static_cast<DWORD>(exit_status));
    ::SetEvent(link_->stopped_event);
    if (!dispatcher_.joinable()) return;
    // The dispatcher returns once the SCM has taken the report; the process may end meanwhile.
    std::unique_lock lk(link_->m);
    if (link_->cv.wait_for(lk, 5s, [&] { return link_->dispatcher_done; })) {
      lk.unlock();
      dispatcher_.join();
    } else {
      dispatcher_.detach();
    }
  }

 private:
  // Enters `state` and, while it is a pending one, reports progress every second (a start that
  // a stop has overtaken reports nothing more: the stop's own STOP_PENDING ticks follow).
  void tick(DWORD state) {
    state_ = state;
    link_->report(state_);
    if (state_ == SERVICE_RUNNING || (state_ == SERVICE_START_PENDING && link_->stop_was_asked())) return;
    timer_.expires_after(scm_checkpoint_every);
    timer_.async_wait([this, state](error_code ec) {
      if (!ec && !done_ && state_ == state) tick(state);
    });
  }

  std::shared_ptr<scm_link> link_;
  asio::steady_timer timer_;
  std::thread dispatcher_;
  DWORD state_ = 0;
  bool done_ = false;
};

}  // namespace

std::unique_ptr<windows_service> make_windows_service(const asio::any_io_executor& ex, const std::string& name,
                                                      windows_service::events ev, error_code& ec) {
  return make_started<scm_service>(ec, ex, std::make_shared<scm_link>(ex, widen(name), std::move(ev)));
}

}  // namespace baton::detail
