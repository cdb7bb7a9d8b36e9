#pragma once
// Shared by the tests that run the real programs (samples/) under a supervisor's stand-in:
// keeper_test.cpp (baton-run keeping baton-http) and systemd_test.cpp (baton-http alone).
#include "../restart/restart_support.hpp"
#include "test_prelude.hpp"

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace baton::test {

using steady = std::chrono::steady_clock;

inline std::string program(const std::string& name) { return helper_exe("../samples/" + name); }

// Runs batonctl with `args`; returns its exit code and leaves its output in `out`.
inline int batonctl(const std::vector<std::string>& args, std::string& out) {
  std::vector<std::string> argv{program("batonctl")};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_capture(argv, out);
}

// A loopback port nobody listens on now (baton-http is then told to listen on it).
inline unsigned short free_port() {
  asio::io_context ioc;
  tcp::acceptor a(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

// The generation that answers a new connection's GET / (0: no answer).
inline std::uint64_t generation_answering(unsigned short port) {
  http_conn c;
  response r;
  if (!c.connect(port) || !c.get("/", r) || r.status != 200) return 0;
  return r.header_u64("x-baton-generation");
}

inline bool wait_generation(unsigned short port, std::uint64_t g, std::chrono::seconds within = 60s) {
  const auto until = steady::now() + within;
  while (steady::now() < until) {
    if (generation_answering(port) == g) return true;
    nap(50ms);
  }
  return false;
}

}  // namespace baton::test
