// The keeper and systemd: sd_notify from libsystemd (sd-daemon), which finds NOTIFY_SOCKET and
// speaks its protocol, and sd_listen_fds for socket activation. Built where CMake found libsystemd (BATON_HAS_LIBSYSTEMD); elsewhere
// nothing is sent.
#include "detail/platform.hpp"

#include <unistd.h>

#if BATON_HAS_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#include <time.h>
#endif

namespace baton::detail {

bool supervisor_notify_built() noexcept { return BATON_HAS_LIBSYSTEMD != 0; }

bool notify_supervisor([[maybe_unused]] supervisor_state s, [[maybe_unused]] const std::string& status) noexcept {
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
    if (!status.empty()) text += "STATUS=" + status + "\n";
    return ::sd_notify(0, text.c_str()) > 0;
  } catch (...) {
    return false;
  }
#else
  return false;
#endif
}

std::vector<std::uintptr_t> take_activated_listeners() noexcept {
  std::vector<std::uintptr_t> fds;
#if BATON_HAS_LIBSYSTEMD
  const int n = ::sd_listen_fds(1);
  for (int i = 0; i < n; ++i) fds.push_back(static_cast<std::uintptr_t>(SD_LISTEN_FDS_START + i));
#endif
  return fds;
}

}  // namespace baton::detail
