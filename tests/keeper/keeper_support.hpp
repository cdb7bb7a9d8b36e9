#pragma once
// Shared by the tests that run the real programs (samples/) under a supervisor's stand-in:
// keeper_test.cpp (baton-run keeping baton-http), systemd_test.cpp (baton-http alone) and
// keeper_service_test.cpp (baton-run as a Windows service).
#include "../restart/restart_support.hpp"
#include "detail/platform.hpp"
#include "process_tree.hpp"
#include "test_prelude.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace baton::test {

using namespace std::chrono_literals;

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

// Why a test of systemd's protocols cannot run here, or "": Linux, with libsystemd in the build.
inline std::string systemd_missing() {
  if (host_is_windows()) return "systemd: Linux (the Windows Service Control Manager: keeper_service_test.cpp)";
  if (!baton::detail::supervisor_notify_built()) return "this build has no libsystemd (install libsystemd-dev and configure again)";
  return "";
}

// Waits (up to 30 s) until `systemd` has heard `what` in at least `n` messages.
inline bool wait_heard(const notify_socket& systemd, const std::string& what, long n) {
  for (const auto until = steady::now() + 30s; systemd.count(what) < n && steady::now() < until;) nap(10ms);
  return systemd.count(what) >= n;
}

// A service run by a program of samples/ that the test started (`run`, its output in `out`), and
// the generations seen serving it, which may outlive `run` and are ended with it.
struct service_run {
  std::string name;
  name_guard guard{name};
  std::string out;
  unsigned short port = free_port();
  child run;
  std::set<std::uint32_t> seen_pids;  // of the generations, when they are pids of ours (no namespace)
  bool own_pids = true;

  service_run(std::string service, const std::string& out_name) : name(std::move(service)), out(temp_path(out_name)) {}
  ~service_run() { end(); }
  // Kills `run` and every generation seen, and waits (up to 10 s) until they are gone, before
  // `guard` removes the service's objects (it leaves them to a live owner).
  void end() {
    run.kill();
    for (auto pid : seen_pids)
      if (process_exists(pid)) kill_process(pid);
    for (const auto until = steady::now() + 10s; steady::now() < until; nap(10ms))
      if (std::none_of(seen_pids.begin(), seen_pids.end(), [](auto pid) { return process_exists(pid); })) break;
    remove_file(out);
  }
  // The pid of the generation answering on `at` now (0: none); remembered for end().
  std::uint32_t serving_pid(unsigned short at) {
    http_conn c;
    response r;
    if (!c.connect(at) || !c.get("/", r) || r.status != 200) return 0;
    const auto pid = static_cast<std::uint32_t>(r.header_u64("x-baton-pid"));
    if (own_pids) seen_pids.insert(pid);
    return pid;
  }
};

// Ends the load and checks that it saw no failure and reached `generation` (and at least
// `min_ok` good responses).
inline void finish_clean_load(load& l, std::uint64_t generation, std::uint64_t min_ok = 0) {
  l.finish();
  EXPECT_EQ(l.failed.load(), 0u);
  EXPECT_EQ(l.conn_errors.load(), 0u);
  EXPECT_EQ(l.sequence_errors.load(), 0u);
  EXPECT_GE(l.ok.load(), min_ok);
  EXPECT_TRUE(l.generations.count(generation)) << "the load never reached generation " << generation;
}

// How many times `text` contains `what`.
inline std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace baton::test
