// The keeper, baton-run, as a Windows service under the Service Control Manager (Wine ships one,
// with its own sc.exe): created, started and stopped with sc.exe, restarted under keep-alive load
// by the service's custom control code and by batonctl, RUNNING throughout with the keeper's pid
// unchanged; a crash ends the service with the crashed generation's status. On Linux these skip:
// systemd is the supervisor there (keeper_test.cpp).
#include "baton/keeper.hpp"

#include "keeper_support.hpp"
#include "windows_service.hpp"

#include <atomic>
#include <cctype>
#include <map>
#include <sstream>
#include <thread>

using namespace baton::test::prelude;
using namespace baton::test;

namespace {

// `sc query NAME`'s fields, e.g. {"STATE", "4  RUNNING"}, {"WIN32_EXIT_CODE", "0  (0x0)"}.
using sc_fields = std::map<std::string, std::string>;

sc_fields parse_sc(const std::string& out) {
  sc_fields f;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    auto trim = [](std::string s) {
      s.erase(0, s.find_first_not_of(" \t\r"));
      s.erase(s.find_last_not_of(" \t\r") + 1);
      return s;
    };
    f[trim(line.substr(0, colon))] = trim(line.substr(colon + 1));
  }
  return f;
}

// The number a field starts with ("1066  (0x42a)" -> 1066), -1 if there is none.
long sc_number(const sc_fields& f, const std::string& key) {
  const auto it = f.find(key);
  if (it == f.end() || it->second.empty() || !std::isdigit(static_cast<unsigned char>(it->second[0]))) return -1;
  return std::stol(it->second);
}

// baton-run --service, keeping baton-http, as an SCM service of a unique name (also the Baton
// service's name), created here and stopped and deleted when this goes, whatever happened.
struct scm_service {
  std::string name = test_service_prefix + unique_name("svc");
  name_guard names{name};
  windows_service_guard guard{name};
  std::string log = temp_path("keeper-log");
  unsigned short port = free_port();
  std::chrono::milliseconds drain{15000};

  scm_service() { delete_stale_test_services(); }
  ~scm_service() {
    guard.remove();
    remove_file(log);
  }

  // Runs sc.exe with `args` (60 s at most); its output in `out`.
  int sc(std::vector<std::string> args, std::string& out) const {
    args.insert(args.begin(), windows_system_program("sc.exe"));
    return run_capture(args, out, 60s);
  }
  sc_fields query() const {
    std::string out;
    sc({"query", name}, out);
    return parse_sc(out);
  }
  std::string state() const {
    const auto f = query();
    const auto it = f.find("STATE");
    return it == f.end() ? "" : it->second.substr(it->second.find_last_of(' ') + 1);
  }
  bool wait_state(const std::string& s, std::chrono::milliseconds within = 60s) const {
    for (const auto until = steady::now() + within; steady::now() < until; nap(100ms))
      if (state() == s) return true;
    return false;
  }
  std::string command_line() const {
    // sc.exe takes binPath= as one argument; the test's launcher quotes each argument, so the
    // paths inside must hold no space or quote.
    return program("baton-run") + " --service " + name + " --log " + log + " --drain-ms " +
           std::to_string(drain.count()) + " --name " + name + " -- " + program("baton-http") + " --name " + name +
           " --listen 127.0.0.1:" + std::to_string(port);
  }
  // sc create and sc start; `start_out`: what sc start said.
  void start(std::string& start_out) {
    for (const auto& path : {program("baton-run"), program("baton-http"), log})
      ASSERT_EQ(path.find_first_of(" \""), std::string::npos) << "a space or quote in " << path;
    const auto bin_path = command_line();
    std::string out;
    ASSERT_EQ(sc({"create", name, "binPath=", bin_path}, out), 0) << out;
    ASSERT_EQ(sc({"start", name}, start_out), 0) << start_out;
  }
  std::size_t logged(const std::string& what) const { return occurrences(read_file(log), what); }
  bool wait_in_charge(std::uint64_t g) const {
    const auto line = "baton: keeper: generation " + std::to_string(g) + " (pid ";
    for (const auto until = steady::now() + 60s; steady::now() < until; nap(20ms))
      if (logged(line) == 1) return true;
    return false;
  }
};

// The states `sc query` shows, every 100 ms or so (each query is a process), on a thread of its
// own while it lives.
struct state_watch {
  const scm_service& svc;
  std::atomic<bool> stop{false};
  std::mutex m;
  std::map<std::string, int> seen;
  std::thread t{[this] {
    for (const auto until = steady::now() + 300s; !stop && steady::now() < until; nap(100ms)) {
      const auto s = svc.state();
      std::lock_guard lk(m);
      ++seen[s];
    }
  }};
  explicit state_watch(const scm_service& s) : svc(s) {}
  ~state_watch() { finish(); }
  void finish() {
    stop = true;
    if (t.joinable()) t.join();
  }
};

}  // namespace

// sc create / sc start: START_PENDING, then RUNNING once generation 1 is in charge. Three restarts
// under keep-alive load, the first by the control code 128 (`sc control NAME 128`; under Wine,
// whose sc.exe has no `control`, ControlService as sc does), the others by `batonctl restart`: no
// request fails, the keeper's pid never changes, `sc query` shows RUNNING throughout. sc stop
// drains (STOP_PENDING) and leaves STOPPED with exit code 0; sc delete removes the service.
TEST(keeper, as_a_windows_service_restarts_three_times_under_load) {
  if (!host_is_windows())
    GTEST_SKIP() << "the Service Control Manager is Windows'; on Linux baton-run runs under systemd "
                    "(keeper.tells_systemd_ready_reloading_and_stopping)";
  scm_service svc;
  std::string out;
  ASSERT_NO_FATAL_FAILURE(svc.start(out));
  EXPECT_EQ(parse_sc(out)["STATE"], "2  START_PENDING") << out;
  ASSERT_TRUE(svc.wait_state("RUNNING")) << "never RUNNING; the keeper said:\n" << read_file(svc.log);
  // RUNNING comes after generation 1 took charge.
  EXPECT_EQ(svc.logged("baton: keeper: generation 1 (pid "), 1u) << read_file(svc.log);
  ASSERT_TRUE(wait_generation(svc.port, 1)) << "generation 1 never answered";
  const auto keeper_pid = windows_service_pid(svc.name);
  ASSERT_NE(keeper_pid, 0u);
  {
    load l(svc.port, 6);
    wait_for_requests(l, 200);
    state_watch states(svc);
    for (std::uint64_t g = 2; g <= 4; ++g) {
      if (g == 2 && host_is_wine()) {
        EXPECT_EQ(control_windows_service(svc.name, baton::keeper_service_control_restart), "");
      } else if (g == 2) {
        EXPECT_EQ(svc.sc({"control", svc.name, std::to_string(baton::keeper_service_control_restart)}, out), 0) << out;
      } else {
        EXPECT_EQ(batonctl({"restart", svc.name}, out), 0) << out;
        EXPECT_NE(out.find("generation " + std::to_string(g - 1) + " -> " + std::to_string(g)), std::string::npos)
            << out;
      }
      ASSERT_TRUE(svc.wait_in_charge(g)) << "generation " << g << " never took charge; the keeper said:\n"
                                         << read_file(svc.log);
      ASSERT_TRUE(wait_generation(svc.port, g)) << "generation " << g << " never answered";
      wait_for_requests(l, 100);
      EXPECT_EQ(windows_service_pid(svc.name), keeper_pid) << "the service's process changed in restart " << g - 1;
    }
    states.finish();
    finish_clean_load(l, 4, 500);
    EXPECT_GE(states.seen["RUNNING"], 1);
    EXPECT_EQ(states.seen.size(), 1u) << "sc query showed a state other than RUNNING during the restarts";
  }
  EXPECT_EQ(svc.logged("baton: keeper: started "), 4u) << read_file(svc.log);

  const auto t0 = steady::now();
  EXPECT_EQ(svc.sc({"stop", svc.name}, out), 0) << out;
  const auto stop_state = parse_sc(out)["STATE"];
  EXPECT_TRUE(stop_state == "3  STOP_PENDING" || stop_state == "1  STOPPED") << out;
  ASSERT_TRUE(svc.wait_state("STOPPED", svc.drain + 10s)) << "never STOPPED; the keeper said:\n" << read_file(svc.log);
  EXPECT_LT(steady::now() - t0, svc.drain) << "an idle service stops well within the drain deadline";
  const auto stopped = svc.query();
  EXPECT_EQ(sc_number(stopped, "WIN32_EXIT_CODE"), 0);
  EXPECT_EQ(sc_number(stopped, "SERVICE_EXIT_CODE"), 0);
  EXPECT_EQ(svc.logged("baton: keeper: stopped " + svc.name + ": generation 4"), 1u) << read_file(svc.log);
  for (const auto until = steady::now() + 10s; process_exists(keeper_pid) && steady::now() < until;) nap(20ms);
  EXPECT_FALSE(process_exists(keeper_pid)) << "the keeper outlived its STOPPED";
  EXPECT_EQ(generation_answering(svc.port), 0u) << "something still serves";
  baton::error_code ec;
  baton::request_status(svc.name, 2s, ec);
  EXPECT_EQ(ec, baton::errc::service_not_found) << ec.message();

  EXPECT_EQ(svc.sc({"delete", svc.name}, out), 0) << out;
  EXPECT_NE(svc.sc({"query", svc.name}, out), 0) << "the service is still there after sc delete:\n" << out;
}

// A generation that crashes with no successor ends the service: STOPPED, with
// ERROR_SERVICE_SPECIFIC_ERROR (1066) and the generation's status (TerminateProcess(137)) as the
// service-specific exit code, which is what the SCM's recovery actions look at.
TEST(keeper, as_a_windows_service_a_crash_stops_it_with_the_status) {
  if (!host_is_windows())
    GTEST_SKIP() << "the Service Control Manager is Windows'; on Linux baton-run runs under systemd";
  scm_service svc;
  std::string out;
  ASSERT_NO_FATAL_FAILURE(svc.start(out));
  ASSERT_TRUE(svc.wait_state("RUNNING")) << "never RUNNING; the keeper said:\n" << read_file(svc.log);
  ASSERT_TRUE(wait_generation(svc.port, 1)) << "generation 1 never answered";
  http_conn c;
  response r;
  ASSERT_TRUE(c.connect(svc.port) && c.get("/", r));
  kill_process(static_cast<std::uint32_t>(r.header_u64("x-baton-pid")));  // TerminateProcess(137)
  ASSERT_TRUE(svc.wait_state("STOPPED", 30s)) << "never STOPPED; the keeper said:\n" << read_file(svc.log);
  const auto stopped = svc.query();
  EXPECT_EQ(sc_number(stopped, "WIN32_EXIT_CODE"), 1066) << "not ERROR_SERVICE_SPECIFIC_ERROR";
  EXPECT_EQ(sc_number(stopped, "SERVICE_EXIT_CODE"), 137);
}
