// The keeper's OS side on Windows: one process handle per started generation, awaited through
// the IOCP reactor (asio::windows::object_handle), its exit code read once it is signalled. A
// Windows process leaves no zombie and its orphans need no reaper. Ctrl+C (SIGINT) and SIGTERM
// arrive through Asio's signal_set; Windows has no SIGHUP (a restart comes through the service's
// named event or batonctl).
#include "detail/platform.hpp"
#include "win/win_headers.hpp"

#include <boost/asio/signal_set.hpp>
#include <boost/asio/windows/object_handle.hpp>

#include <csignal>
#include <map>
#include <memory>

namespace baton::detail {

namespace {

namespace asio = boost::asio;

class handle_keeper final : public keeper_os {
 public:
  handle_keeper(const asio::any_io_executor& ex, events ev) : ex_(ex), ev_(std::move(ev)), signals_(ex) {}

  void start(error_code& ec) {
    signals_.add(SIGINT, ec);
    if (!ec) signals_.add(SIGTERM, ec);
    if (ec) return;
    wait_signal();
  }

  void watch(std::uint32_t pid) override {
    HANDLE h = ::OpenProcess(SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_TERMINATE, FALSE, pid);
    if (!h) {
      // Already gone, exit code unknown.
      if (ev_.exited) ev_.exited(pid, 1);
      return;
    }
    auto oh = std::make_shared<asio::windows::object_handle>(ex_, h);
    handles_[pid] = oh;
    oh->async_wait([this, pid, oh, alive = alive_](error_code ec) {
      if (ec || !*alive) return;
      DWORD code = 1;
      ::GetExitCodeProcess(oh->native_handle(), &code);
      handles_.erase(pid);
      if (ev_.exited) ev_.exited(pid, static_cast<int>(code));
    });
  }

  void stop_at_once(std::uint32_t pid) noexcept override {
    const auto it = handles_.find(pid);
    if (it != handles_.end()) ::TerminateProcess(it->second->native_handle(), 137);
  }

  void close() noexcept override {
    *alive_ = false;
    error_code ignored;
    signals_.cancel(ignored);
    for (auto& [pid, h] : handles_) h->cancel(ignored);
    handles_.clear();
  }

  ~handle_keeper() override { close(); }

 private:
  void wait_signal() {
    signals_.async_wait([this, alive = alive_](error_code ec, int) {
      if (ec || !*alive) return;
      if (ev_.stop) ev_.stop();
      if (*alive) wait_signal();
    });
  }

  asio::any_io_executor ex_;
  events ev_;
  asio::signal_set signals_;
  std::map<std::uint32_t, std::shared_ptr<asio::windows::object_handle>> handles_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace

std::unique_ptr<keeper_os> make_keeper_os(const asio::any_io_executor& ex, keeper_os::events ev, error_code& ec) {
  return make_started<handle_keeper>(ec, ex, std::move(ev));
}

void set_environment(const std::string& name, const std::string& value) {
  ::SetEnvironmentVariableA(name.c_str(), value.empty() ? nullptr : value.c_str());
}

// No systemd here; the Service Control Manager is told through detail/windows_service.hpp.
bool notify_supervisor(supervisor_state, const std::string&, std::uint32_t) noexcept { return false; }
bool supervisor_notify_built() noexcept { return false; }
std::vector<activated_listener> take_activated_listeners() noexcept { return {}; }

}  // namespace baton::detail
