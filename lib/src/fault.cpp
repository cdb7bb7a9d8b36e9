// Fault injection (detail/fault.hpp): BATON_FAULT names a step of a move and what to do there
// (die, kill the peer, stall, fail); compiled in developer builds only. The one place the library
// writes to stderr: a BATON_FAULT it cannot parse, which only someone running the fault matrix sets.
#include "detail/fault.hpp"

#ifdef BATON_FAULT_INJECTION
#include "detail/platform.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

namespace baton::detail {

namespace {

struct fault_config {
  int step = -1;
  fault_action action = fault_action::none;
  int stall_ms = 0;
  unsigned every = 1;  // "every<n>" in place of the ms: the step's every n-th time only
};

const fault_config& config() {
  static const fault_config c = [] {
    fault_config f;
    const char* env = std::getenv("BATON_FAULT");
    if (!env || !*env) return f;
    static const char* steps[] = {"quiesce", "detach", "send_ticket", "doorbell", "claim", "attach", "ack", "commit"};
    static const char* actions[] = {"none", "die", "kill_peer", "stall", "fail"};
    const std::string s(env);
    const auto c1 = s.find(':');
    const auto c2 = s.find(':', c1 == std::string::npos ? s.size() : c1 + 1);
    const auto step = s.substr(0, c1);
    const auto action = c1 == std::string::npos ? "" : s.substr(c1 + 1, c2 == std::string::npos ? std::string::npos : c2 - c1 - 1);
    for (int i = 0; i < 8; ++i)
      if (step == steps[i]) f.step = i;
    for (int i = 0; i < 5; ++i)
      if (action == actions[i]) f.action = static_cast<fault_action>(i);
    f.stall_ms = c2 == std::string::npos ? 0 : std::atoi(s.c_str() + c2 + 1);
    if (c2 != std::string::npos && s.compare(c2 + 1, 5, "every") == 0) {
      f.stall_ms = 0;
      f.every = static_cast<unsigned>(std::max(1, std::atoi(s.c_str() + c2 + 6)));
    }
    if (f.step < 0 || f.action == fault_action::none)
      std::fprintf(stderr, "baton: ignoring BATON_FAULT=%s (want <step>:<action>[:<ms>|:every<n>])\n", env);
    return f;
  }();
  return c;
}

}  // namespace

fault_action fault_at(fault_step s) noexcept {
  const auto& c = config();
  return c.step == static_cast<int>(s) ? c.action : fault_action::none;
}

bool inject(fault_step s, std::uint32_t peer_pid) noexcept {
  // "every3": the action happens the step's third, sixth... time (a batch the target takes in part).
  static std::atomic<unsigned> reached{0};
  if (fault_at(s) != fault_action::none && config().every > 1 &&
      (reached.fetch_add(1, std::memory_order_relaxed) + 1) % config().every != 0)
    return false;
  switch (fault_at(s)) {
    case fault_action::none:
      return false;
    case fault_action::die:
      std::fflush(nullptr);
      kill_process_hard(current_pid());
      return false;
    case fault_action::kill_peer:
      kill_process_hard(peer_pid);
      return false;
    case fault_action::stall:
      std::this_thread::sleep_for(std::chrono::milliseconds(config().stall_ms));
      return false;
    case fault_action::fail:
      return true;
  }
  return false;
}

}  // namespace baton::detail
#endif
