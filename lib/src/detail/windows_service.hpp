#pragma once
// The keeper as a Windows service: what the keeper (lib/src/keeper/keeper.cpp) needs from the
// Service Control Manager. Windows in win/keeper_scm_service.cpp; elsewhere make_windows_service fails
// with errc::windows_service_unsupported (posix/keeper_sigchld.cpp).
#include "detail/platform.hpp"

namespace baton::detail {

/// A connection to the Service Control Manager as the service this process runs. The SCM's
/// controls arrive on a thread of the SCM's dispatcher, which posts them to the executor:
/// `events` are called there, never on the SCM's thread. Status reports come from the executor,
/// except one: a stop is reported STOP_PENDING on the SCM's thread before the control returns
/// (so `sc stop` shows it), and from then on nothing but STOP_PENDING and STOPPED is reported.
/// Use from the executor's thread (or strand) only.
class windows_service {
 public:
  struct events {
    std::function<void()> restart;  ///< the custom control code `restart_control`
    std::function<void()> stop;     ///< SERVICE_CONTROL_STOP and SERVICE_CONTROL_SHUTDOWN
    std::uint32_t restart_control = 0;  ///< 128-255 (baton::keeper_service_control_restart)
  };
  virtual ~windows_service() = default;
  /// The keeper's state as the SCM sees it: START_PENDING (a checkpoint every second, a wait hint
  /// of 5 s) until the first `ready`, then RUNNING (`reloading` and `status` change nothing: the
  /// SCM has no state for a restart, the service keeps running), then from `stopping` on
  /// STOP_PENDING (checkpoints and wait hints likewise).
  virtual void tell(supervisor_state s) noexcept = 0;
  /// Reports SERVICE_STOPPED with `exit_status` (non-zero: ERROR_SERVICE_SPECIFIC_ERROR and the
  /// status as the service-specific exit code) and waits (a few seconds at most) for the SCM's
  /// dispatcher to end. No event is called afterwards. Idempotent.
  virtual void stopped(int exit_status) noexcept = 0;
};

/// Connects this process to the SCM as service `name` (StartServiceCtrlDispatcherW on a thread of
/// its own, RegisterServiceCtrlHandlerExW) and reports START_PENDING. Blocks until the SCM has
/// called the service's entry point. errc::not_started_as_service if the SCM did not start this
/// process; errc::windows_service_unsupported outside Windows.
std::unique_ptr<windows_service> make_windows_service(const boost::asio::any_io_executor& ex, const std::string& name,
                                                      windows_service::events ev, error_code& ec);

}  // namespace baton::detail
