// The keeper's OS side on Linux: SIGCHLD, SIGHUP, SIGTERM and SIGINT through one Asio signal_set
// (handlers run on the reactor, not in signal context); every child is reaped with waitpid(-1),
// so that no zombie stays, whether it is a generation the keeper started or an orphan that the
// kernel re-parented to it (as PID 1, or as a child subreaper). No Windows service here: systemd
// (systemd_notify.cpp) is the supervisor the keeper speaks to.
#include "detail/platform.hpp"
#include "detail/windows_service.hpp"

#include <boost/asio/signal_set.hpp>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <set>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

namespace baton::detail {

namespace {

class sigchld_keeper final : public keeper_os {
 public:
  sigchld_keeper(const boost::asio::any_io_executor& ex, events ev) : ev_(std::move(ev)), signals_(ex) {}

  void start(error_code& ec) {
    signals_.add(SIGCHLD, ec);
    if (!ec) signals_.add(SIGHUP, ec);
    if (!ec) signals_.add(SIGTERM, ec);
    if (!ec) signals_.add(SIGINT, ec);
    if (ec) return;
    // Not PID 1: orphans of our generations would go to the namespace's init and be reaped there
    // (or not); as a subreaper they come to us, as they would to PID 1.
    if (::getpid() != 1) ::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    wait();
  }

  void watch(std::uint32_t pid) override {
    watched_.insert(pid);
    // It may have ended before it was watched (its SIGCHLD already consumed by an earlier sweep
    // that did not know it): look now.
    reap();
  }

  void stop_at_once(std::uint32_t pid) noexcept override { ::kill(static_cast<pid_t>(pid), SIGTERM); }

  void close() noexcept override {
    closed_ = true;
    error_code ignored;
    signals_.cancel(ignored);
  }

 private:
  void wait() {
    signals_.async_wait([this](error_code ec, int sig) {
      if (ec || closed_) return;
      if (sig == SIGCHLD) reap();
      else if (sig == SIGHUP && ev_.restart) ev_.restart();
      else if ((sig == SIGTERM || sig == SIGINT) && ev_.stop) ev_.stop();
      if (!closed_) wait();
    });
  }

  // Reaps every child that has ended (signals coalesce: one SIGCHLD may stand for several).
  void reap() {
    for (int i = 0; i < 100000; ++i) {
      int st = 0;
      const pid_t pid = ::waitpid(-1, &st, WNOHANG);
      if (pid < 0 && errno == EINTR) continue;
      if (pid <= 0) return;
      const auto it = watched_.find(static_cast<std::uint32_t>(pid));
      if (it == watched_.end()) continue;  // an orphan: reaped, nothing to report
      watched_.erase(it);
      const int status = WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : 1;
      if (ev_.exited) ev_.exited(static_cast<std::uint32_t>(pid), status);
      if (closed_) return;
    }
  }

  events ev_;
  boost::asio::signal_set signals_;
  std::set<std::uint32_t> watched_;
  bool closed_ = false;
};

}  // namespace

std::unique_ptr<keeper_os> make_keeper_os(const boost::asio::any_io_executor& ex, keeper_os::events ev, error_code& ec) {
  return make_started<sigchld_keeper>(ec, ex, std::move(ev));
}

std::unique_ptr<windows_service> make_windows_service(const boost::asio::any_io_executor&, const std::string&,
                                                      windows_service::events, error_code& ec) {
  ec = make_error_code(errc::windows_service_unsupported);
  return nullptr;
}

void set_environment(const std::string& name, const std::string& value) {
  if (value.empty()) ::unsetenv(name.c_str());
  else ::setenv(name.c_str(), value.c_str(), 1);
}

}  // namespace baton::detail
