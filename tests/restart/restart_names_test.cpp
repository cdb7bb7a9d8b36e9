// Hot restart and the names of a service (outside audit, issue 11, items 4, 12 and 14): one owner
// per name however many processes start at once, squatted names reported with their owner, inbox
// names nobody can guess, and `binary=` in a restart request refused unless the service allows it.
#include <baton/restart.hpp>

#include "restart_support.hpp"

#include "detail/platform.hpp"

#include <baton/spawn.hpp>

#include <boost/asio.hpp>

#include <fstream>
#include <set>


using namespace baton::test::prelude;
using namespace baton::test;

namespace {

unsigned count_files(const std::string& prefix, const std::vector<std::uint32_t>& pids) {
  unsigned n = 0;
  for (auto p : pids) n += file_exists(prefix + std::to_string(p)) ? 1 : 0;
  return n;
}

}  // namespace

// Item 4: two processes start one service at the same instant, many times over. Each time exactly
// one becomes generation 1; the other either takes over from it (generation 2) or fails to start,
// and the service's control channel (what batonctl reaches) is owned by the process holding the port.
// 300 races (50 under Wine, 99 in a sanitizer build) in three shards that ctest runs side by side:
// each race mostly waits (for a process to start, a hand-over, an exit), and one shard of 300 was
// the suite's longest test (160 s under ASan). Which process wins depends on timing, which the
// release build explores fastest; a sanitized process starts ~7x slower (a race took 0.5 s under
// clang's ASan and TSan, 0.07 s natively), and the sanitizers look at the same code paths in each
// race, so they run a third of the races.
class restart_names_race : public ::testing::TestWithParam<int> {};

INSTANTIATE_TEST_SUITE_P(shard, restart_names_race, ::testing::Range(0, 3));

TEST_P(restart_names_race, simultaneous_starts_make_exactly_one_first_generation) {
#ifdef BATON_TEST_SANITIZED
  constexpr int native_runs = 33;
#else
  constexpr int native_runs = 100;
#endif
  const int runs = host_is_windows() ? (GetParam() == 0 ? 18 : 16) : native_runs;
  // The starting processes run a small helper binary (race_gen_helper.cpp), not this one.
  const std::string race_helper = helper_exe("restart_race_helper");
  int double_owner = 0, status_elsewhere = 0, joined = 0, refused = 0;
  std::string first_problem;
  for (int run = 0; run < runs; ++run) {
    const std::string name = unique_name("race");
    name_guard guard(name);
    const std::string out = temp_path("race"), go = out + ".go";
    child a = child::spawn_exe(race_helper, "race_gen", {name, out, go});
    child b = child::spawn_exe(race_helper, "race_gen", {name, out, go});
    const std::vector<std::uint32_t> pids{a.pid(), b.pid()};
    touch(go);
    // Each process has either started (as some generation) or failed.
    auto settled = [&] {
      for (auto p : pids) {
        const bool any = file_exists(out + ".fail." + std::to_string(p)) ||
                         file_exists(out + ".gen1." + std::to_string(p)) ||
                         file_exists(out + ".gen2." + std::to_string(p));
        if (!any) return false;
      }
      return true;
    };
    const auto until = std::chrono::steady_clock::now() + 30s;
    while (!settled() && std::chrono::steady_clock::now() < until) nap(1ms);
    ASSERT_TRUE(settled()) << "run " << run << ": a starting process neither started nor failed within 30 s";
    const unsigned gen1 = count_files(out + ".gen1.", pids), gen2 = count_files(out + ".gen2.", pids);
    if (gen1 != 1) {
      ++double_owner;
      if (first_problem.empty())
        first_problem = "run " + std::to_string(run) + ": " + std::to_string(gen1) + " processes are generation 1";
      for (auto p : pids)
        if (file_exists(out + ".fail." + std::to_string(p)))
          first_problem += "; " + std::to_string(p) + " failed: " + read_file(out + ".fail." + std::to_string(p));
    }
    if (gen2 == 1) {
      ++joined;
      // The first generation hands over to the second and exits.
      for (auto* c : {&a, &b})
        if (file_exists(out + ".gen1." + std::to_string(c->pid()))) EXPECT_EQ(c->wait(30s), 0) << "run " << run;
    } else {
      ++refused;
    }
    // batonctl status reaches the process that answers on the service's port.
    // (The second generation owns the control channel once the first has exited: give it time.)
    std::string owner = "?";
    const auto status_until = std::chrono::steady_clock::now() + 20s;
    while (owner == "?" && std::chrono::steady_clock::now() < status_until) {
      if (const auto pid = service_generation_pid(name)) owner = std::to_string(pid);
      else nap(5ms);
    }
    std::string answer = "none";
    if (file_exists(out + ".port")) {
      baton::error_code ec;
      asio::io_context ioc;
      tcp::socket s(ioc);
      s.connect({asio::ip::address_v4::loopback(), static_cast<unsigned short>(std::stoi(read_file(out + ".port")))},
                ec);
      set_recv_timeout(s, 10s);
      asio::streambuf buf;
      if (!ec) asio::read_until(s, buf, '\n', ec);
      std::istream(&buf) >> answer;
    }
    if (owner != answer) {
      ++status_elsewhere;
      if (first_problem.empty())
        first_problem = "run " + std::to_string(run) + ": status names pid " + owner + ", the port is served by " + answer;
    }
    a.kill();
    b.kill();
    for (auto pid : pids)
      for (const char* f : {".fail.", ".gen1.", ".gen2."}) remove_file(out + f + std::to_string(pid));
    remove_file(out + ".port");
    remove_file(go);
    remove_service_names(name);
  }
  std::printf("[ RACES    ] %d runs: %d took over from the first, %d refused to start\n", runs, joined, refused);
  EXPECT_EQ(double_owner, 0) << first_problem;
  EXPECT_EQ(status_elsewhere, 0) << first_problem;
}

namespace {

// Runs `ioc` until `done` or the deadline.
template <class Pred>
void run_until(asio::io_context& ioc, Pred done, std::chrono::seconds deadline = 60s) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (!done() && std::chrono::steady_clock::now() < until) {
    ioc.restart();
    ioc.run_for(10ms);
  }
}

}  // namespace

// Item 12: another uid holds an object of the service's name. The start fails, and what it
// reports names the object's path and its owner's uid (Linux only: Windows reports the error
// code alone).
TEST(restart_names, squatted_service_name_names_its_owner_uid_and_path) {
  if (host_is_windows()) GTEST_SKIP() << "Linux only: the report of a squatted name's owner uid";
  if (!running_as_root()) GTEST_SKIP() << "needs root, to create an object owned by another uid";
  for (const std::string suffix : {"ring", "bell"}) {
    const std::string name = unique_name("squat");
    name_guard guard(name);
    foreign_objects squat;
    const std::string path = "/dev/shm/baton." + name + "." + suffix;
    ASSERT_TRUE(suffix == "ring" ? squat.add_region(path) : squat.add_fifo(path)) << path;
    asio::io_context ioc;
    baton::restart_options ro;
    ro.os_triggers = false;
    baton::service svc(ioc.get_executor(), name, ro);
    baton::error_code ec = asio::error::would_block;
    svc.async_start([&](baton::error_code e) { ec = e; });
    run_until(ioc, [&] { return ec != asio::error::would_block; });
    ASSERT_TRUE(ec) << "a start must fail while another uid holds " << path;
    const std::string text = ec.message() + " | " + baton::to_string(svc.last_report(), name);
    EXPECT_NE(text.find(path), std::string::npos) << text;
    EXPECT_NE(text.find("uid " + std::to_string(squat.uid())), std::string::npos) << text;
    std::printf("[ SQUATTED ] %s: %s\n", suffix.c_str(), text.c_str());
  }
}

// Item 12: another uid creates the inbox names a next generation would have used had they been
// predictable (service.<pid>) for the next 1,500 pids; a restart still succeeds.
TEST(restart_names, squatted_inbox_names_of_the_next_pids_do_not_deny_a_restart) {
  if (host_is_windows()) GTEST_SKIP() << "Linux only: needs objects of another uid";
  if (!running_as_root()) GTEST_SKIP() << "needs root, to create objects owned by another uid";
  running_service svc;
  ASSERT_NE(svc.port, 0);
  const long pid_max = std::stol(read_file("/proc/sys/kernel/pid_max"));
  const long last = std::stol(read_file("/proc/sys/kernel/ns_last_pid"));
  foreign_objects squat;
  for (long k = 1; k <= 1500; ++k) {
    const long pid = (last + k) % pid_max;
    if (pid < 300) continue;
    ASSERT_TRUE(squat.add_region("/dev/shm/baton." + svc.name + "." + std::to_string(pid) + ".ring"));
  }
  baton::error_code ec;
  const auto r = svc.restart(ec, 60s);
  EXPECT_FALSE(ec) << ec.message() << " | " << baton::to_string(r, svc.name);
  EXPECT_EQ(r.new_generation, 2u);
  EXPECT_EQ(svc.generation(), 2u);
}

// Item 14: a restart request that names an executable is refused unless the service allows it.
// Where it is allowed, the named executable is what runs (POSIX: /usr/bin/touch MARKER, which
// then exits without announcing itself, so that restart fails but leaves its mark).
TEST(restart_names, restart_request_naming_a_binary_is_refused_unless_allowed) {
  for (const bool allow : {false, true}) {
    SCOPED_TRACE(allow ? "allowed" : "default");
    const std::string name = unique_name("bin");
    name_guard guard(name);
    const std::string marker = temp_path("ran");
    const std::string binary = host_is_windows() ? "C:\\baton-does-not-exist\\next.exe" : "/usr/bin/touch";
    asio::io_context ioc;
    baton::restart_options ro;
    ro.os_triggers = false;
    ro.ready_timeout = 3s;
    ro.next_args = {marker};
    ro.allow_restart_binary = allow;
    baton::service svc(ioc.get_executor(), name, ro);
    baton::error_code start_ec = asio::error::would_block;
    svc.async_start([&](baton::error_code e) { start_ec = e; });
    run_until(ioc, [&] { return start_ec != asio::error::would_block; });
    ASSERT_FALSE(start_ec) << start_ec.message();
    std::atomic<bool> done{false};
    baton::error_code ec;
    std::thread requester([&] {
      baton::request_restart(name, binary, 30s, ec);
      done = true;
    });
    run_until(ioc, [&] { return done.load(); });
    requester.join();
    ASSERT_TRUE(ec) << "this restart cannot succeed either way";
    if (!allow) {
      EXPECT_EQ(ec, baton::errc::restart_binary_refused) << ec.message();
      EXPECT_FALSE(file_exists(marker)) << "the service ran the executable the request named";
    } else {
      EXPECT_NE(ec, baton::errc::restart_binary_refused) << ec.message();
      if (!host_is_windows()) {
        EXPECT_TRUE(wait_for_file(marker, 10s)) << "the named executable did not run";
      }
    }
    EXPECT_EQ(svc.generation(), 1u);
    EXPECT_EQ(svc.stats().generation, 1u);
    remove_file(marker);
  }
}

// Item 14: an elevated process labels its named objects high integrity, so that a medium-integrity
// process of the same user cannot write to them (not checkable under Wine, which has no integrity
// levels to enforce: here the SDDL is checked, and that Windows accepts it for a named object).
TEST(restart_names, elevated_objects_carry_a_high_mandatory_label) {
  if (!host_is_windows()) GTEST_SKIP() << "Windows only";
  check_high_mandatory_label_sddl();
}
