// The two functions platform_posix.cpp's stale-channel removal calls and the fuzzers never reach
// (they decode tickets and open ring headers; nothing removes a channel). Linking them from their
// real sources would pull in the doorbell, the transfer endpoints and the metrics, a third of
// lib/. Reached after all, they end the fuzzer loudly instead of doing nothing.
#include "detail/platform.hpp"

#include <cstdio>
#include <cstdlib>

namespace baton::detail {

namespace {
[[noreturn]] void unreached(const char* what) {
  std::fprintf(stderr, "fuzz_unreached: %s was called, but the fuzz build links only the ticket and ring code\n", what);
  std::abort();
}
}  // namespace

void remove_transfer_endpoint(const std::string&) noexcept { unreached("remove_transfer_endpoint"); }
void doorbell::remove(const std::string&) noexcept { unreached("doorbell::remove"); }

}  // namespace baton::detail
