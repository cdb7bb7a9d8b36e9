#pragma once
/// The keeper: a small process that a supervisor (systemd, a container runtime as PID 1, a shell)
/// watches instead of the service. It starts every generation of a hot-restartable service as its
/// own child, holds no connection and no listener, and keeps its pid for its whole life, so that a
/// hot restart looks to the supervisor like nothing happened.
///
///   baton::keeper k(ex, {.program = "/usr/bin/baton-http", .args = {"--name", "web"}});
///   k.async_run([](error_code ec, int status) { std::exit(ec ? 1 : status); });
///
/// - Every generation it starts finds the keeper's channel in the environment variable
///   BATON_KEEPER; a baton::service that sees it asks the keeper to start its next generation
///   instead of starting it itself (restart_options::keeper), and tells the keeper when it takes
///   charge. The hand-over between generations is the usual one (docs/restart.md).
/// - Restart: restart(), SIGHUP (Linux), and whatever restarts the service itself (`batonctl
///   restart NAME`, the Windows event Local\baton.NAME.restart): the generation in charge asks the
///   keeper for its successor.
/// - Stop: stop(), SIGTERM and SIGINT: the generation in charge stops gracefully (as `batonctl stop`);
///   a stop during a restart waits for it and then stops the new generation. A second stop, or the
///   drain deadline, stops every generation at once (SIGTERM to a stopping generation / Windows
///   TerminateProcess); 5 s later what is left is killed.
/// - Every child is reaped, orphans too (Linux: the keeper is PID 1 or a child subreaper).
/// - systemd (where the build has libsystemd, and NOTIFY_SOCKET is set): READY=1 once the first
///   generation is in charge, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around each restart,
///   STOPPING=1 on a stop, each with a STATUS= line. Socket activation: listeners passed in
///   LISTEN_FDS go to generation 1 only, with their LISTEN_FDNAMES (BATON_LISTEN_FDS,
///   BATON_LISTEN_FDNAMES), which adopts them instead of binding (restart_options::activated_names).
///   docs/deploy.md has the units.
/// - Windows service (keeper_options::windows_service; the process must be started by the Service
///   Control Manager, e.g. `sc start NAME`): START_PENDING (with checkpoints and wait hints) until
///   the first generation is in charge, RUNNING through every restart (the keeper's pid never
///   changes), STOP_PENDING (checkpoints and wait hints) while a stop drains, then STOPPED with
///   the exit status (non-zero: ERROR_SERVICE_SPECIFIC_ERROR, the status as the service-specific
///   exit code). SERVICE_CONTROL_STOP and SERVICE_CONTROL_SHUTDOWN are stop(); the custom control
///   code keeper_service_control_restart (`sc control NAME 128`) is restart(). The controls arrive
///   on a thread of the SCM and are posted to the keeper's executor.
/// - When no generation is left, async_run completes with the exit status of the last one that
///   ended (128 + signal for one killed by a signal). A generation that crashes is not restarted:
///   if it was the last, the keeper ends with its status and removes what the crash left in
///   /dev/shm under the service's name; the supervisor decides what to do next.
///
/// Thread safety: use a keeper from its executor's thread (or strand) only.

#include <baton/error.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace baton {

struct keeper_options {
  /// The executable of every generation (a path; PATH is not searched) and its arguments.
  std::string program;
  std::vector<std::string> args;
  /// The service's name, if known; otherwise learned from the first generation that takes charge.
  /// Used to reach the generation in charge (stop, restart) and to clean up after a crash.
  std::string service;
  /// How long a stop waits for the generations to drain before stopping them at once.
  std::chrono::milliseconds drain_deadline{30000};
  /// Take SIGHUP (Linux) as restart() and SIGTERM/SIGINT as stop().
  bool os_signals = true;
  /// Windows: run as this service of the Service Control Manager (the name given to `sc create`),
  /// reporting its status to the SCM and taking its stop, shutdown and restart controls. The
  /// process must have been started by the SCM: async_run fails with errc::not_started_as_service
  /// otherwise, and with errc::windows_service_unsupported on other platforms. Empty: no service.
  std::string windows_service;
  /// Called with one line for each event worth logging (a generation started, in charge, ended;
  /// a restart's report). Empty: the library writes nothing. Called on the keeper's executor.
  std::function<void(const std::string&)> log;
};

/// Counters of a keeper.
struct keeper_stats {
  std::uint64_t generations_started = 0;
  std::uint32_t in_charge_pid = 0;  ///< the generation in charge, as it last told the keeper (0: none)
  std::uint64_t in_charge_generation = 0;
  std::size_t children = 0;  ///< generations alive now
};

namespace detail {
struct keeper_impl;
}

class keeper {
 public:
  using executor_type = boost::asio::any_io_executor;

  keeper(const executor_type& ex, keeper_options opts);
  ~keeper();
  keeper(const keeper&) = delete;
  keeper& operator=(const keeper&) = delete;

  /// Starts the first generation and keeps the service until no generation is left. Completes
  /// with the last generation's exit status; an error if the keeper could not start (its channel,
  /// its signals, its Windows service, or the first generation: the program could not be run). Signature:
  /// void(error_code, int exit_status). Call once.
  template <class Token>
  auto async_run(Token&& token) {
    return boost::asio::async_initiate<Token, void(error_code, int)>([this](auto h) { start_run(std::move(h)); },
                                                                     token);
  }

  /// Asks the generation in charge to restart (as SIGHUP does). Ignored while stopping.
  void restart();
  /// A graceful stop; a second call stops at once (as SIGTERM does).
  void stop();
  keeper_stats stats() const;
  /// The name of the keeper's channel (the value of BATON_KEEPER in its children).
  std::string channel_name() const;

 private:
  void start_run(boost::asio::any_completion_handler<void(error_code, int)> h);
  std::shared_ptr<detail::keeper_impl> impl_;
};

/// The custom control code that restarts a keeper run as a Windows service, as restart() does:
/// `sc control NAME 128`, or ControlService(h, keeper_service_control_restart, &status) with a
/// handle opened with SERVICE_USER_DEFINED_CONTROL. (Windows reserves 128-255 for services.)
inline constexpr std::uint32_t keeper_service_control_restart = 128;

/// The environment variable through which a keeper's children find it.
inline constexpr const char* keeper_environment_variable = "BATON_KEEPER";

}  // namespace baton
