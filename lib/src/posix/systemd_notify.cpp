// systemd, for the keeper and for a service run without one: sd_notify from libsystemd
// (sd-daemon), which finds NOTIFY_SOCKET and speaks its protocol, and sd_listen_fds_with_names for
// socket activation. Built where CMake found libsystemd (BATON_HAS_LIBSYSTEMD); elsewhere nothing
// is sent and nothing passed is seen.
#include "detail/platform.hpp"

#include <cstdlib>

#include <unistd.h>

#if BATON_HAS_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#include <time.h>
#endif

namespace baton::detail {

bool supervisor_notify_built() noexcept { return BATON_HAS_LIBSYSTEMD != 0; }

bool notify_supervisor([[maybe_unused]] supervisor_state s, [[maybe_unused]] const std::string& status,
                       [[maybe_unused]] std::uint32_t main_pid) noexcept {
#if BATON_HAS_LIBSYSTEMD
  try {
    std::string text;
    switch (s) {
      case supervisor_state::ready: text = "READY=1\n"; break;
      case supervisor_state::stopping: text = "STOPPING=1\n"; break;
      case supervisor_state::reloading: {
        // systemd 253+ (Type=notify-reload) wants the time of the reload on CLOCK_MONOTONIC.
        timespec ts{};
        ::clock_gettime(CLOCK_MONOTONIC, &ts);
        const auto usec = static_cast<unsigned long long>(ts.tv_sec) * 1000000ull + static_cast<unsigned long long>(ts.tv_nsec) / 1000;
        text = "RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec) + "\n";
        break;
      }
      case supervisor_state::status: break;
    }
    if (main_pid != 0) text += "MAINPID=" + std::to_string(main_pid) + "\n";
    if (!status.empty()) text += "STATUS=" + status + "\n";
    return ::sd_notify(0, text.c_str()) > 0;
  } catch (...) {
    return false;
  }
#else
  return false;
#endif
}

std::vector<activated_listener> take_activated_listeners() noexcept {
  std::vector<activated_listener> fds;
#if BATON_HAS_LIBSYSTEMD
  // Names that do not match the descriptors' count fail the call (-EINVAL) after it has removed
  // the variables: the descriptors are still ours then, unnamed.
  const int passed = ::sd_listen_fds(0);
  char** names = nullptr;
  const int n = ::sd_listen_fds_with_names(1, &names);
  try {
    for (int i = 0; i < (n < 0 ? passed : n); ++i)
      fds.push_back({static_cast<std::uintptr_t>(SD_LISTEN_FDS_START + i), n > 0 && names && names[i] ? names[i] : ""});
  } catch (...) {
    fds.clear();
  }
  for (int i = 0; names && names[i]; ++i) std::free(names[i]);
  std::free(names);
#endif
  return fds;
}

}  // namespace baton::detail
