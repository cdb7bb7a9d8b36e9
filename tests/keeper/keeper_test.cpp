// The keeper, baton-run, with the real programs (samples/): baton-run keeps baton-http through
// restarts under keep-alive load (0 failed requests, its pid unchanged, every generation its
// child, no zombie), as a PID namespace's PID 1 (Linux, orphans reaped), and stops everything on
// SIGTERM (Linux) or `batonctl stop` (Windows). And `batonctl clean`, which removes what a killed
// service left in /dev/shm and leaves a live service's objects alone.
#include "baton/keeper.hpp"

#include "detail/platform.hpp"
#include "keeper_support.hpp"
#include "process_tree.hpp"

#include <boost/asio.hpp>

#include <algorithm>
#include <cstring>
#include <sstream>

using namespace baton::test::prelude;
using namespace baton::test;

namespace {

// baton-run keeping baton-http. `prefix`: what runs baton-run (e.g. unshare); `orphans`: every
// generation leaves an orphan (a `sleep` whose parent exited) on its way in (POSIX, through sh).
struct kept_service : service_run {
  std::chrono::milliseconds drain{15000};

  unsigned short bound_port = port;  // what baton-http is told to bind (socket activation: another)
  unsigned short second_port = 0;    // socket activation: the second socket passed (named "admin")

  explicit kept_service(std::vector<std::string> prefix = {}, bool orphans = false, bool socket_activated = false)
      : service_run(unique_name("kp"), "keeper-out") {
    own_pids = prefix.empty();
    if (socket_activated) {
      // systemd-socket-activate listens on `port` and `second_port` and execs the rest with
      // LISTEN_FDS=2 and LISTEN_FDNAMES=http:admin (same pid).
      do second_port = free_port();
      while (second_port == port);
      prefix.insert(prefix.end(), {"/usr/bin/systemd-socket-activate", "-l", "127.0.0.1:" + std::to_string(port), "-l",
                                   "127.0.0.1:" + std::to_string(second_port), "--fdname=http:admin"});
      bound_port = free_port();
    }
    // POSIX: the keeper's log (its standard error) goes to the output file too, through a shell
    // that execs it (so the keeper keeps the pid the shell started with).
    if (!host_is_windows()) prefix.insert(prefix.end(), {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1"});
    std::vector<std::string> argv = prefix;
    const std::string http = program("baton-http");
    const std::string listen = "127.0.0.1:" + std::to_string(bound_port);
    argv.insert(argv.end(), {program("baton-run"), "--drain-ms", std::to_string(drain.count()), "--name", name, "--"});
    if (orphans)
      argv.insert(argv.end(), {"/bin/sh", "-c", "(sleep 2 &) ; exec \"$0\" --name \"$1\" --listen \"$2\"", http, name, listen});
    else
      argv.insert(argv.end(), {http, "--name", name, "--listen", listen});
    run = child::run_to_file(argv, out);
  }
  ~kept_service() {
    end();  // the keeper and the generations it left
    // A killed keeper leaves its channel, "keeper-<pid>-<random>", in /dev/shm (Windows: its
    // objects die with it, and the names cannot be listed).
    baton::error_code ec;
    const std::string mine = "keeper-" + std::to_string(run.pid()) + "-";
    for (const auto& n : baton::detail::list_channel_names(ec))
      if (n.rfind(mine, 0) == 0) baton::channel::remove_stale(n, ec);
  }
  // Waits until the keeper's log says that generation `g` took charge (the restart before it has
  // ended: a trigger before that is refused as a restart in progress). POSIX, where the log is
  // captured; elsewhere true.
  bool wait_in_charge(std::uint64_t g) const {
    if (host_is_windows()) return true;
    const auto until = steady::now() + 60s;
    while (logged("baton: keeper: generation " + std::to_string(g) + " (pid ") == 0 && steady::now() < until) nap(10ms);
    return logged("baton: keeper: generation " + std::to_string(g) + " (pid ") == 1;
  }
  // How many times the keeper's log says `what`.
  std::size_t logged(const std::string& what) const { return occurrences(read_file(out), what); }
  // The pid of the generation answering now (0: none); remembered for the clean-up.
  std::uint32_t serving_pid() { return service_run::serving_pid(port); }
};

// Generation 1 serving, and a request of `ms` milliseconds running on `busy`.
void start_slow_request(kept_service& svc, http_conn& busy, int ms) {
  ASSERT_TRUE(wait_generation(svc.port, 1)) << "generation 1 never answered";
  ASSERT_TRUE(svc.wait_in_charge(1)) << read_file(svc.out);
  svc.serving_pid();
  ASSERT_TRUE(busy.connect(svc.port));
  ASSERT_TRUE(busy.send("GET /slow?ms=" + std::to_string(ms) + " HTTP/1.1\r\nHost: t\r\n\r\n"));
  nap(200ms);
}

}  // namespace

// Three restarts under keep-alive load: SIGHUP to the keeper (Windows: `batonctl restart`), then
// `batonctl restart`, then the service's own trigger (SIGHUP to the generation in charge; Windows
// the named event). Then a stop: SIGTERM to the keeper (Windows: `batonctl stop`).
TEST(keeper, restarts_under_load_keep_its_pid_and_a_stop_ends_everything) {
  kept_service svc({}, !host_is_windows());
  const auto keeper_pid = svc.run.pid();
  ASSERT_TRUE(wait_generation(svc.port, 1)) << "generation 1 never answered";
  std::vector<std::uint32_t> gens{svc.serving_pid()};
  ASSERT_TRUE(svc.wait_in_charge(1)) << read_file(svc.out);
  {
    load l(svc.port, 6);
    wait_for_requests(l, 200);
    for (std::uint64_t g = 2; g <= 4; ++g) {
      if (!host_is_windows() && g == 2) {
        baton::error_code ec;
        baton::detail::fire_restart_trigger(svc.name, keeper_pid, ec);  // SIGHUP to the keeper
        ASSERT_FALSE(ec) << ec.message();
      } else if (g == 4) {
        // The service's own trigger (SIGHUP to the generation; Windows the named event
        // Local\baton.NAME.restart): the generation asks the keeper for its successor.
        baton::error_code ec;
        baton::detail::fire_restart_trigger(svc.name, gens.back(), ec);
        ASSERT_FALSE(ec) << ec.message();
      } else {
        std::string out;
        EXPECT_EQ(batonctl({"restart", svc.name}, out), 0) << out;
        EXPECT_NE(out.find("generation " + std::to_string(g - 1) + " -> " + std::to_string(g)), std::string::npos) << out;
      }
      ASSERT_TRUE(wait_generation(svc.port, g)) << "generation " << g << " never answered; the keeper said:\n" << read_file(svc.out);
      ASSERT_TRUE(svc.wait_in_charge(g)) << "generation " << g << " never took charge; the keeper said:\n" << read_file(svc.out);
      wait_for_requests(l, 100);
      EXPECT_TRUE(svc.run.running()) << "the keeper exited during restart " << g - 1;
      gens.push_back(svc.serving_pid());
    }
    finish_clean_load(l, 4, 500);
  }
  // Four generations, four processes, none of them the keeper.
  EXPECT_EQ(std::set<std::uint32_t>(gens.begin(), gens.end()).size(), 4u);
  EXPECT_FALSE(std::set<std::uint32_t>(gens.begin(), gens.end()).count(keeper_pid));
  if (!host_is_windows()) {  // /proc, and the keeper's log (captured on POSIX)
    // Every generation is the keeper's child; the old ones are gone, reaped: no zombie (the
    // orphans each generation left are reaped too: the keeper is their subreaper).
    EXPECT_EQ(read_stat(gens.back()).ppid, keeper_pid);
    // The keeper started each of them (not the previous generation), and heard each take charge.
    EXPECT_EQ(svc.logged("baton: keeper: started "), 4u) << read_file(svc.out);
    EXPECT_EQ(svc.logged("baton: keeper: generation 4 (pid " + std::to_string(gens.back()) + ") is in charge"), 1u)
        << read_file(svc.out);
    EXPECT_EQ(wait_no_zombie(keeper_pid), 0u) << "zombies left under the keeper";
    for (std::size_t i = 0; i + 1 < gens.size(); ++i) EXPECT_EQ(read_stat(gens[i]).state, '\0') << gens[i];
  }

  const auto t0 = steady::now();
  if (host_is_windows()) {
    std::string out;
    EXPECT_EQ(batonctl({"stop", svc.name}, out), 0) << out;
  } else {
    ASSERT_TRUE(terminate_process(keeper_pid));  // SIGTERM
  }
  EXPECT_EQ(svc.run.wait(svc.drain + 10s), 0) << "the keeper ends with the service's status 0";
  EXPECT_LT(steady::now() - t0, svc.drain) << "an idle service stops well within the drain deadline";
  for (auto pid : gens) EXPECT_FALSE(process_exists(pid)) << "generation pid " << pid << " outlived the keeper";
  baton::error_code ec;
  baton::request_status(svc.name, 2s, ec);
  EXPECT_EQ(ec, baton::errc::service_not_found) << ec.message();
  if (!host_is_windows()) {  // Windows' named objects go with their last handle
    EXPECT_FALSE(shm_has("baton." + svc.name)) << "objects of the service left in /dev/shm";
    EXPECT_FALSE(shm_has("baton.keeper-" + std::to_string(keeper_pid) + "-")) << "the keeper's channel left in /dev/shm";
  }
}

// The keeper as PID 1 of its own PID namespace (as in a container): three restarts (SIGHUP from
// outside) under load, the orphans every generation leaves are adopted and reaped by it, SIGTERM
// ends everything.
TEST(keeper, as_pid_1_of_a_pid_namespace) {
  if (host_is_windows()) GTEST_SKIP() << "Linux PID namespaces; Windows has no PID 1 and no orphans to reap";
  std::string out;
  if (run_capture({"/usr/bin/unshare", "--pid", "--fork", "--mount-proc", "/bin/true"}, out, 30s) != 0)
    GTEST_SKIP() << "unshare --pid --fork --mount-proc is not available or not permitted here (needs root or user "
                    "namespaces)";
  // --kill-child: should the test fail early, PID 1 (and with it the namespace) ends with unshare.
  kept_service svc({"/usr/bin/unshare", "--pid", "--fork", "--mount-proc", "--kill-child"}, true);
  // unshare forks the namespace's PID 1, which execs baton-run: find it (its pid out here).
  std::uint32_t keeper = 0;
  for (const auto until = steady::now() + 30s; keeper == 0 && steady::now() < until; nap(20ms))
    for (auto& [pid, st] : children_of(svc.run.pid())) keeper = pid;
  ASSERT_NE(keeper, 0u) << "unshare started no process";
  ASSERT_TRUE(wait_generation(svc.port, 1)) << "generation 1 never answered";
  ASSERT_TRUE(svc.wait_in_charge(1)) << read_file(svc.out);
  const auto nspid = status_field(keeper, "NSpid");
  ASSERT_EQ(nspid.substr(nspid.find_last_of(" \t") + 1), "1") << "the keeper is not PID 1 in its namespace: " << nspid;
  // The orphan generation 1 left (`sleep`, re-parented to PID 1) shows up as the keeper's child.
  bool adopted = false;
  for (const auto until = steady::now() + 10s; !adopted && steady::now() < until; nap(20ms))
    for (auto& [pid, st] : children_of(keeper))
      if (status_field(pid, "Name").find("sleep") != std::string::npos) adopted = true;
  EXPECT_TRUE(adopted) << "no orphan was re-parented to the keeper";
  {
    load l(svc.port, 6);
    wait_for_requests(l, 200);
    for (std::uint64_t g = 2; g <= 4; ++g) {
      baton::error_code ec;
      baton::detail::fire_restart_trigger(svc.name, keeper, ec);  // SIGHUP, from outside the namespace
      ASSERT_FALSE(ec) << ec.message();
      ASSERT_TRUE(wait_generation(svc.port, g)) << "generation " << g << " never answered; the keeper said:\n" << read_file(svc.out);
      ASSERT_TRUE(svc.wait_in_charge(g)) << "generation " << g << " never took charge; the keeper said:\n" << read_file(svc.out);
      wait_for_requests(l, 100);
      EXPECT_TRUE(process_exists(keeper)) << "PID 1 exited during restart " << g - 1;
      svc.serving_pid();
    }
    finish_clean_load(l, 4);
  }
  // The orphans (each lives 2 s) end and are reaped by PID 1: wait for them, then count zombies.
  for (const auto until = steady::now() + 20s; steady::now() < until; nap(50ms)) {
    bool sleeping = false;
    for (auto& [pid, st] : children_of(keeper))
      if (st.state != 'Z' && status_field(pid, "Name").find("sleep") != std::string::npos) sleeping = true;
    if (!sleeping) break;
  }
  EXPECT_EQ(wait_no_zombie(keeper), 0u) << "zombies left under PID 1";
  EXPECT_EQ(svc.logged("baton: keeper: started "), 4u) << read_file(svc.out);
  EXPECT_EQ(svc.logged("baton: keeper: restarted " + svc.name + ": generation 3 -> 4"), 1u) << read_file(svc.out);
  const auto t0 = steady::now();
  ASSERT_TRUE(terminate_process(keeper));
  EXPECT_EQ(svc.run.wait(svc.drain + 10s), 0) << "unshare exits with PID 1's status, the service's 0";
  EXPECT_LT(steady::now() - t0, svc.drain);
  // The generations' pids are the namespace's; the namespace ends with its PID 1.
  EXPECT_FALSE(process_exists(keeper));
  EXPECT_TRUE(children_of(keeper).empty());
  EXPECT_FALSE(shm_has("baton." + svc.name)) << "objects of the service left in /dev/shm";
}

// A service killed with SIGKILL (TerminateProcess) leaves its objects; `batonctl clean NAME`
// removes them, and leaves those of a live service alone.
TEST(keeper, batonctl_clean_removes_what_a_killed_service_left_and_nothing_live) {
  const std::string dead = unique_name("cd"), live = unique_name("cl");
  name_guard g1(dead), g2(live);
  auto start = [](const std::string& name) {
    return child::run({program("baton-http"), "--name", name, "--listen", "127.0.0.1:0"});
  };
  auto serving = [](const std::string& name) {
    for (const auto until = steady::now() + 60s; steady::now() < until; nap(50ms)) {
      baton::error_code ec;
      const auto st = baton::request_status(name, 5s, ec);
      if (!ec && st.find("state serving") != std::string::npos) return true;
    }
    return false;
  };
  child a = start(dead), b = start(live);
  ASSERT_TRUE(serving(dead));
  ASSERT_TRUE(serving(live));
  a.kill();
  std::string out;
  if (host_is_windows()) {
    EXPECT_EQ(batonctl({"clean", dead}, out), 0) << out;
    EXPECT_NE(out.find("nothing to clean on Windows"), std::string::npos) << out;
    b.kill();
    return;
  }
  ASSERT_TRUE(file_exists("/dev/shm/baton." + dead + ".ring")) << "SIGKILL left nothing behind: nothing to test";
  EXPECT_EQ(batonctl({"clean", live}, out), 0) << out;
  EXPECT_NE(out.find("nothing to clean for " + live), std::string::npos) << out;
  EXPECT_TRUE(file_exists("/dev/shm/baton." + live + ".ring"));
  baton::error_code ec;
  baton::request_status(live, 5s, ec);
  EXPECT_FALSE(ec) << "the live service stopped answering after clean: " << ec.message();
  EXPECT_EQ(batonctl({"clean", dead}, out), 0) << out;
  EXPECT_NE(out.find("removed " + dead + " "), std::string::npos) << out;
  EXPECT_FALSE(shm_has("baton." + dead + ".")) << "clean left objects of the killed service";
  EXPECT_TRUE(file_exists("/dev/shm/baton." + live + ".ring"));
  baton::request_status(live, 5s, ec);
  EXPECT_FALSE(ec) << ec.message();
  b.kill();
}

// A generation that crashes with no successor ends the keeper with its status (it is not
// restarted), and the keeper removes what the crash left under the service's name.
TEST(keeper, a_crashed_generation_ends_the_keeper_with_its_status) {
  kept_service svc;
  ASSERT_TRUE(wait_generation(svc.port, 1)) << "generation 1 never answered";
  const auto pid = svc.serving_pid();
  ASSERT_NE(pid, 0u);
  kill_process(pid);  // SIGKILL / TerminateProcess(137)
  EXPECT_EQ(svc.run.wait(30s), 137) << "the keeper ends with the crashed generation's status";
  EXPECT_EQ(generation_answering(svc.port), 0u) << "something still serves";
  if (!host_is_windows()) {  // /dev/shm, and the keeper's log (captured on POSIX)
    EXPECT_FALSE(shm_has("baton." + svc.name)) << "the crash's objects were left in /dev/shm";
    EXPECT_EQ(svc.logged("exited with status 137"), 1u) << read_file(svc.out);
  }
}

// SIGTERM while a restart is under way: the stop waits for it, then stops the new generation;
// the request in flight is answered; the keeper ends with status 0.
TEST(keeper, a_stop_during_a_restart_stops_the_new_generation) {
  if (host_is_windows()) GTEST_SKIP() << "SIGTERM to the keeper: Linux (on Windows batonctl stop is refused during a restart, as without a keeper)";
  kept_service svc;
  http_conn busy;  // keeps generation 1 handing over until it is answered
  ASSERT_NO_FATAL_FAILURE(start_slow_request(svc, busy, 2000));
  baton::error_code ec;
  baton::detail::fire_restart_trigger(svc.name, svc.run.pid(), ec);  // SIGHUP to the keeper
  ASSERT_FALSE(ec) << ec.message();
  // Stop once generation 2 is running (it announces itself and takes the listener at once, while
  // generation 1 still holds the request).
  const auto until = steady::now() + 30s;
  while (svc.logged("baton: keeper: started ") < 2 && steady::now() < until) nap(10ms);
  ASSERT_EQ(svc.logged("baton: keeper: started "), 2u) << read_file(svc.out);
  ASSERT_TRUE(terminate_process(svc.run.pid()));
  response r;
  ASSERT_TRUE(busy.read(r)) << "the request in flight was cut";
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(svc.run.wait(svc.drain + 10s), 0) << read_file(svc.out);
  EXPECT_EQ(svc.logged("baton: keeper: generation 2 (pid "), 1u) << "generation 2 never took charge: " << read_file(svc.out);
  EXPECT_EQ(svc.logged("baton: keeper: stopped " + svc.name + ": generation 2"), 1u) << read_file(svc.out);
  EXPECT_EQ(generation_answering(svc.port), 0u) << "something still serves";
  for (auto pid : svc.seen_pids) EXPECT_FALSE(process_exists(pid));
  EXPECT_FALSE(shm_has("baton." + svc.name));
}

// A second SIGTERM stops at once: a request that would run for a minute is cut.
TEST(keeper, a_second_sigterm_stops_at_once) {
  if (host_is_windows()) GTEST_SKIP() << "SIGTERM to the keeper: Linux";
  kept_service svc;
  http_conn busy;
  ASSERT_NO_FATAL_FAILURE(start_slow_request(svc, busy, 60000));
  ASSERT_TRUE(terminate_process(svc.run.pid()));
  // The graceful stop waits for the request: the keeper is still there a moment later.
  const auto until = steady::now() + 30s;
  while (svc.logged("stopping: no new connections") == 0 && steady::now() < until) nap(10ms);
  EXPECT_TRUE(svc.run.running());
  const auto t0 = steady::now();
  ASSERT_TRUE(terminate_process(svc.run.pid()));
  EXPECT_EQ(svc.run.wait(30s), 0) << read_file(svc.out);
  EXPECT_LT(steady::now() - t0, 20s) << "the second SIGTERM did not stop at once";
  EXPECT_EQ(svc.logged("stopping every generation at once"), 1u) << read_file(svc.out);
  for (auto pid : svc.seen_pids) EXPECT_FALSE(process_exists(pid));
}

// The keeper killed: its generation keeps serving, and a restart fails with a message that says
// why (errc::keeper_gone) instead of a bare "channel not found".
TEST(keeper, without_its_keeper_a_restart_fails_and_says_why) {
  kept_service svc;
  ASSERT_TRUE(wait_generation(svc.port, 1)) << "generation 1 never answered";
  const auto pid = svc.serving_pid();
  svc.run.kill();
  std::string out;
  EXPECT_EQ(batonctl({"restart", svc.name}, out), 1) << out;
  EXPECT_NE(out.find(baton::make_error_code(baton::errc::keeper_gone).message()), std::string::npos) << out;
  EXPECT_EQ(generation_answering(svc.port), 1u) << "generation 1 stopped serving";
  EXPECT_TRUE(process_exists(pid));
}

// systemd's notify protocol, with the test as systemd: a datagram socket at NOTIFY_SOCKET that
// sees each sender's pid. The keeper (the unit's main process) says READY=1 once generation 1
// serves, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around each of three restarts, and
// STOPPING=1 on SIGTERM, each with a STATUS= line.
TEST(keeper, tells_systemd_ready_reloading_and_stopping) {
  if (const auto why = systemd_missing(); !why.empty()) GTEST_SKIP() << why;
  const std::string path = temp_path("notify");
  notify_socket systemd(path);
  ASSERT_TRUE(systemd.ok()) << "cannot make a datagram socket at " << path;
  set_env("NOTIFY_SOCKET", path);
  kept_service svc;
  set_env("NOTIFY_SOCKET", "");
  ASSERT_TRUE(wait_generation(svc.port, 1)) << "generation 1 never answered";
  EXPECT_TRUE(wait_heard(systemd, "READY=1", 1)) << "no READY=1 once generation 1 served";
  for (std::uint64_t g = 2; g <= 4; ++g) {
    std::string out;
    EXPECT_EQ(batonctl({"restart", svc.name}, out), 0) << out;
    ASSERT_TRUE(svc.wait_in_charge(g)) << read_file(svc.out);
    EXPECT_TRUE(wait_heard(systemd, "READY=1", static_cast<long>(g))) << "no READY=1 after restart " << g - 1;
  }
  svc.serving_pid();
  ASSERT_TRUE(terminate_process(svc.run.pid()));
  EXPECT_EQ(svc.run.wait(svc.drain + 10s), 0);
  EXPECT_TRUE(wait_heard(systemd, "STOPPING=1", 1));
  // In order, each from the keeper (the pid systemd accepts with NotifyAccess=main).
  std::vector<std::string> states;
  for (auto& [pid, text] : systemd.heard()) {
    EXPECT_EQ(pid, svc.run.pid()) << text;
    EXPECT_NE(text.find("STATUS="), std::string::npos) << text;
    if (text.find("RELOADING=1") != std::string::npos) {
      EXPECT_NE(text.find("MONOTONIC_USEC="), std::string::npos) << text;
      states.push_back("RELOADING");
    } else if (text.find("READY=1") != std::string::npos) {
      states.push_back("READY");
    } else if (text.find("STOPPING=1") != std::string::npos) {
      states.push_back("STOPPING");
    }
  }
  const std::vector<std::string> expected{"READY",     "RELOADING", "READY", "RELOADING", "READY",
                                          "RELOADING", "READY",     "STOPPING"};
  EXPECT_EQ(states, expected);
}

// systemd socket activation, with systemd's own systemd-socket-activate: it listens on two
// addresses and passes both sockets, named http and admin (LISTEN_FDS, LISTEN_FDNAMES), to the
// keeper, which hands them with their names to generation 1 only: baton-http binds nothing (its
// --listen port stays closed) and serves both, three restarts under load move both listeners with
// their names, and the keeper holds no listener.
TEST(keeper, systemd_socket_activation_passes_named_listeners_to_generation_1) {
  if (const auto why = systemd_missing(); !why.empty()) GTEST_SKIP() << why;
  if (!file_exists("/usr/bin/systemd-socket-activate")) GTEST_SKIP() << "no systemd-socket-activate (package systemd)";
  kept_service svc({}, false, true);
  const auto keeper_pid = svc.run.pid();
  ASSERT_TRUE(wait_generation(svc.port, 1)) << "generation 1 never answered; the keeper said:\n" << read_file(svc.out);
  ASSERT_TRUE(svc.wait_in_charge(1)) << read_file(svc.out);
  EXPECT_EQ(generation_answering(svc.second_port), 1u) << "the second activated socket is not served";
  EXPECT_TRUE(holds_tcp_listener(svc.serving_pid())) << "generation 1 holds no listener (the check sees nothing)";
  http_conn other;
  EXPECT_FALSE(other.connect(svc.bound_port)) << "baton-http bound its --listen port: the activated socket was not used";
  EXPECT_FALSE(holds_tcp_listener(keeper_pid)) << "the keeper kept a copy of the activated listener";
  // Each listener with its name (FileDescriptorName=), in generation 1 and, moved, in generation 4.
  auto names_said = [&](std::uint64_t g, std::uint32_t pid) {
    const auto text = read_file(svc.out);
    for (const auto& [port, name] : {std::pair{svc.port, "http"}, std::pair{svc.second_port, "admin"}}) {
      if (text.find("generation " + std::to_string(g) + " pid " + std::to_string(pid) + " listening on 127.0.0.1:" +
                    std::to_string(port) + " (socket " + name + ")") == std::string::npos)
        return false;
    }
    return true;
  };
  EXPECT_TRUE(names_said(1, svc.serving_pid())) << read_file(svc.out);
  {
    load l(svc.port, 4);
    wait_for_requests(l, 100);
    for (std::uint64_t g = 2; g <= 4; ++g) {
      std::string out;
      EXPECT_EQ(batonctl({"restart", svc.name}, out), 0) << out;
      ASSERT_TRUE(svc.wait_in_charge(g)) << read_file(svc.out);
      wait_for_requests(l, 100);
      svc.serving_pid();
      EXPECT_EQ(generation_answering(svc.second_port), g) << "the second activated socket did not move";
    }
    finish_clean_load(l, 4);
  }
  EXPECT_TRUE(names_said(4, svc.serving_pid())) << "generation 4 lost its listeners' names:\n" << read_file(svc.out);
  EXPECT_FALSE(other.connect(svc.bound_port));
  EXPECT_FALSE(holds_tcp_listener(keeper_pid));
  ASSERT_TRUE(terminate_process(keeper_pid));
  EXPECT_EQ(svc.run.wait(svc.drain + 10s), 0) << read_file(svc.out);
  for (auto pid : svc.seen_pids) EXPECT_FALSE(process_exists(pid));
}
