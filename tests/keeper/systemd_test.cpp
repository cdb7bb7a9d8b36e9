// systemd without a keeper, with the test as systemd and with systemd's own
// systemd-socket-activate: baton-http run directly (the unit's main process) says READY=1, and at
// each restart RELOADING=1, then MAINPID= the new generation (from the old one, before it exits),
// then READY=1 from the new one; STOPPING=1 on SIGTERM. Socket activation without a keeper:
// --fdname serves the passed sockets of those names, and a name that was not passed is a clear
// error. Linux only (on Windows each test skips).
#include "baton/restart.hpp"

#include "detail/platform.hpp"
#include "keeper_support.hpp"
#include "process_tree.hpp"

#include <algorithm>

using namespace baton::test::prelude;
using namespace baton::test;

namespace {

// baton-http alone, its output and errors in a file (through a shell that execs it, so that it
// keeps the pid the shell started with). `argv`: what runs it (systemd-socket-activate).
struct lone_service : service_run {
  explicit lone_service(std::vector<std::string> argv = {}, const std::vector<std::string>& extra = {})
      : service_run(unique_name("sd"), "lone-out") {
    argv.insert(argv.end(), {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", program("baton-http"), "--name", name,
                             "--listen", "127.0.0.1:" + std::to_string(port), "--drain-deadline-ms", "15000"});
    argv.insert(argv.end(), extra.begin(), extra.end());
    run = child::run_to_file(argv, out);
  }
  bool wait_gone(std::uint32_t pid) const {
    for (const auto until = steady::now() + 30s; process_exists(pid) && steady::now() < until;) nap(10ms);
    return !process_exists(pid);
  }
};

// The value of `key` (e.g. "MAINPID=") in a notify message, 0 if absent.
std::uint64_t field(const std::string& text, const std::string& key) {
  const auto at = text.find(key);
  return at == std::string::npos ? 0 : std::stoull(text.substr(at + key.size()));
}

}  // namespace

// The unit's main process is baton-http itself (Type=notify, NotifyAccess=all, no keeper). Two
// restarts, then SIGTERM. Each message comes from a generation (a process of the unit), and from
// the one that is the main process at that moment, so NotifyAccess=main would accept it too.
TEST(systemd, a_service_without_keeper_names_each_new_generation_its_main_pid) {
  if (const auto why = systemd_missing(); !why.empty()) GTEST_SKIP() << why;
  const std::string path = temp_path("notify");
  notify_socket systemd(path);
  ASSERT_TRUE(systemd.ok()) << "cannot make a datagram socket at " << path;
  set_env("NOTIFY_SOCKET", path);
  lone_service svc;
  set_env("NOTIFY_SOCKET", "");
  ASSERT_TRUE(wait_generation(svc.port, 1)) << "generation 1 never answered:\n" << read_file(svc.out);
  std::vector<std::uint32_t> gens{svc.serving_pid(svc.port)};
  EXPECT_EQ(gens[0], svc.run.pid());
  EXPECT_TRUE(wait_heard(systemd, "READY=1", 1)) << "no READY=1 once generation 1 served";
  for (std::uint64_t g = 2; g <= 3; ++g) {
    std::string out;
    EXPECT_EQ(batonctl({"restart", svc.name}, out), 0) << out;
    ASSERT_TRUE(wait_generation(svc.port, g)) << read_file(svc.out);
    gens.push_back(svc.serving_pid(svc.port));
    EXPECT_TRUE(wait_heard(systemd, "READY=1", static_cast<long>(g))) << "no READY=1 after restart " << g - 1;
  }
  ASSERT_TRUE(terminate_process(gens.back()));
  EXPECT_TRUE(svc.wait_gone(gens.back())) << "generation 3 did not stop on SIGTERM";
  EXPECT_TRUE(wait_heard(systemd, "STOPPING=1", 1));

  std::vector<std::string> states;
  std::vector<std::uint32_t> main_pids;  // each MAINPID= that changes the main process
  std::uint32_t main = gens[0];
  for (auto& [pid, text] : systemd.heard()) {
    EXPECT_NE(std::find(gens.begin(), gens.end(), pid), gens.end()) << "from pid " << pid << ", not a generation: " << text;
    EXPECT_EQ(pid, main) << "not from the main process of the moment (" << main << "): " << text;
    EXPECT_NE(text.find("STATUS="), std::string::npos) << text;
    const auto named = static_cast<std::uint32_t>(field(text, "MAINPID="));
    if (text.find("RELOADING=1") != std::string::npos) {
      EXPECT_NE(text.find("MONOTONIC_USEC="), std::string::npos) << text;
      states.push_back("RELOADING");
    } else if (text.find("READY=1") != std::string::npos) {
      EXPECT_EQ(named, pid) << "READY=1 without MAINPID= naming its sender: " << text;
      states.push_back("READY");
    } else if (text.find("STOPPING=1") != std::string::npos) {
      states.push_back("STOPPING");
    } else if (named != 0) {
      states.push_back("MAINPID");
      main_pids.push_back(named);
      main = named;
    }
  }
  const std::vector<std::string> expected{"READY",   "RELOADING", "MAINPID", "READY",
                                          "RELOADING", "MAINPID", "READY",   "STOPPING"};
  EXPECT_EQ(states, expected);
  EXPECT_EQ(main_pids, std::vector<std::uint32_t>(gens.begin() + 1, gens.end()));
}

// systemd-socket-activate runs baton-http itself (LISTEN_FDS for its pid) with two sockets, http
// and admin. `--fdname web`: no such socket, baton-http says so and which were passed, exits 1.
// `--fdname admin`: admin is served, http closed, --listen not bound; admin moves, with its name,
// through a restart.
TEST(systemd, socket_activation_without_keeper_serves_the_sockets_asked_for_by_name) {
  if (const auto why = systemd_missing(); !why.empty()) GTEST_SKIP() << why;
  if (!file_exists("/usr/bin/systemd-socket-activate")) GTEST_SKIP() << "no systemd-socket-activate (package systemd)";
  const auto http = free_port();
  auto admin = free_port();
  while (admin == http) admin = free_port();
  const std::vector<std::string> activate{"/usr/bin/systemd-socket-activate", "-l", "127.0.0.1:" + std::to_string(http),
                                          "-l", "127.0.0.1:" + std::to_string(admin), "--fdname=http:admin"};
  {
    lone_service svc(activate, {"--fdname", "web"});
    http_conn c;
    for (const auto until = steady::now() + 10s; !c.connect(http) && steady::now() < until;) nap(20ms);  // it execs on a first connection
    EXPECT_EQ(svc.run.wait(20s), 1) << read_file(svc.out);
    const auto text = read_file(svc.out);
    EXPECT_NE(text.find(baton::make_error_code(baton::errc::activated_listener_not_found).message()), std::string::npos) << text;
    EXPECT_NE(text.find("none is named 'web'; the names passed: http, admin"), std::string::npos) << text;
  }
  lone_service svc(activate, {"--fdname", "admin"});
  ASSERT_TRUE(wait_generation(admin, 1)) << read_file(svc.out);
  const auto first = svc.serving_pid(admin);
  http_conn other;
  EXPECT_FALSE(other.connect(http)) << "the socket not asked for is still open";
  EXPECT_FALSE(other.connect(svc.port)) << "baton-http bound its --listen port";
  std::string out;
  EXPECT_EQ(batonctl({"restart", svc.name}, out), 0) << out;
  ASSERT_TRUE(wait_generation(admin, 2)) << read_file(svc.out);
  const auto second = svc.serving_pid(admin);
  const auto text = read_file(svc.out);
  for (auto [g, pid] : {std::pair{1, first}, std::pair{2, second}})
    EXPECT_NE(text.find("generation " + std::to_string(g) + " pid " + std::to_string(pid) + " listening on 127.0.0.1:" +
                        std::to_string(admin) + " (socket admin)"),
              std::string::npos)
        << text;
  EXPECT_EQ(batonctl({"stop", svc.name}, out), 0) << out;
  EXPECT_TRUE(svc.wait_gone(second));
}
