// The program baton-balancer (samples/) as a front that restarts (issue 15, part 3): with --name its
// dispatcher is a hot-restartable service. `batonctl restart` replaces the dispatcher process
// while its workers keep their connections and rejoin the next one; a dispatcher killed outright
// (SIGKILL / TerminateProcess) leaves its workers serving, and a balancer started again with the
// same name adopts them. Real processes, real loopback sockets, clients that check every answer.
#include <baton/balance.hpp>

#include "balancer_support.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

using namespace baton::test::prelude;
using namespace baton::test;

namespace {

// Clients that open a connection per request (`Connection: close`), back to back, each request's
// answer checked (status, the target echoed). Notes which worker processes answered.
class per_request_load {
 public:
  per_request_load(unsigned short port, unsigned threads) : port_(port) {
    for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this, i] { run(i); });
  }
  ~per_request_load() { finish(); }
  void finish() {
    stop_ = true;
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }
  std::uint64_t ok() const { return ok_.load(); }
  std::uint64_t failed() const { return failed_.load(); }
  std::set<std::uint32_t> pids() {
    std::lock_guard lk(m_);
    return pids_;
  }
  std::string failure_log() {
    std::lock_guard lk(m_);
    return log_;
  }

 private:
  void run(unsigned id) {
    constexpr std::uint64_t max_requests = 200'000;
    const auto until = steady::now() + 240s;
    for (std::uint64_t seq = 0; !stop_ && seq < max_requests && steady::now() < until; ++seq) {
      const std::string target = "/?p=" + std::to_string(id) + "&n=" + std::to_string(seq);
      http_conn c;
      response r;
      const bool connected = c.connect(port_);
      const bool answered = connected && c.send("GET " + target + " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n") &&
                            c.read(r);
      if (!answered || r.status != 200 || r.headers["x-baton-request"] != target) {
        ++failed_;
        std::lock_guard lk(m_);
        if (log_.size() < 2000)
          log_ += target + ": " + (!connected ? "no connection" : !answered ? "no answer" : "status " + std::to_string(r.status)) + "; ";
        continue;
      }
      ++ok_;
      std::lock_guard lk(m_);
      pids_.insert(static_cast<std::uint32_t>(r.header_u64("x-baton-pid")));
    }
  }

  unsigned short port_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> ok_{0}, failed_{0};
  std::mutex m_;
  std::set<std::uint32_t> pids_;
  std::string log_;
};

bool wait_for(const std::function<bool()>& cond, std::chrono::seconds within) {
  for (const auto until = steady::now() + within; steady::now() < until; nap(5ms))
    if (cond()) return true;
  return cond();
}

std::set<std::uint32_t> keys(const std::map<std::uint32_t, unsigned>& m) {
  std::set<std::uint32_t> s;
  for (auto& [k, v] : m) s.insert(k);
  return s;
}

std::string show_pids(const std::set<std::uint32_t>& s) {
  std::string t;
  for (auto p : s) t += std::to_string(p) + " ";
  return t;
}

// A balancer that ends on its own (--selftest: two workers, then a clean stop) leaves none of
// its channels' names behind: not the dispatcher's, not its workers' (Linux: each worker's ring
// is 4 MiB of /dev/shm; they were left at every stop).
TEST(balancer, a_balancer_that_stopped_leaves_no_channel_names_behind) {
  baton::error_code listed;
  baton::detail::list_channel_names(listed);
  if (listed == boost::asio::error::operation_not_supported)
    GTEST_SKIP() << "Windows names live as long as their handles: a process that ended leaves none";
  const auto out = temp_path("selftest-out");
  auto run = child::run_to_file({program("baton-balancer"), "--selftest", "--workers", "2"}, out);
  ASSERT_EQ(run.wait(120s), 0) << read_file(out);
  const std::string mine = "balancer-" + std::to_string(run.pid());
  std::vector<std::string> left;
  for (const auto until = steady::now() + 10s; steady::now() < until; nap(20ms)) {  // workers exit after it
    baton::error_code ec;
    left.clear();
    for (const auto& n : baton::detail::list_channel_names(ec))
      if (n.rfind(mine, 0) == 0) left.push_back(n);
    ASSERT_FALSE(ec) << ec.message();
    if (left.empty()) break;
  }
  EXPECT_TRUE(left.empty()) << left.size() << " channel(s) left, the first " << left.front();
  for (const auto& n : left) {
    baton::error_code ec;
    baton::channel::remove_stale(n, ec);
  }
  remove_file(out);
}

TEST(balancer_restart, restarted_three_times_under_keep_alive_and_per_request_load_loses_nothing) {
  raise_fd_limit();
  const std::string name = unique_name("front");
  balancer_run b({"--workers", "2", "--policy", "round-robin"}, name);
  ASSERT_NE(b.port, 0) << "baton-balancer did not start: " << read_file(b.out);

  keepalive_load alive(b.port, 20);
  per_request_load fresh(b.port, 2);
  ASSERT_TRUE(wait_for([&] { return alive.spread().count(0) == 0 && fresh.ok() >= 20; }, 60s))
      << show(alive.spread()) << fresh.failure_log();
  const std::set<std::uint32_t> workers = keys(alive.spread());
  ASSERT_EQ(workers.size(), 2u) << show(alive.spread());
  for (auto pid : workers) b.worker_pids.insert(pid);

  for (int round = 1; round <= 3; ++round) {
    std::string out;
    const auto t0 = steady::now();
    ASSERT_EQ(batonctl({"restart", name}, out), 0) << "restart " << round << ": " << out << read_file(b.out);
    const double secs = std::chrono::duration<double>(steady::now() - t0).count();
    EXPECT_NE(out.find("-> " + std::to_string(round + 1)), std::string::npos) << out;
    // Both loads go on through the new dispatcher: new connections too, so the workers rejoined it.
    const auto ok_alive = alive.ok(), ok_fresh = fresh.ok();
    ASSERT_TRUE(wait_for([&] { return alive.ok() >= ok_alive + 200 && fresh.ok() >= ok_fresh + 20; }, 60s))
        << "round " << round << ": load stalled after the restart; " << read_file(b.out);
    std::printf("[ info ] restart %d: batonctl returned after %.3f s; %s\n", round, secs, out.c_str());
    std::fflush(stdout);
  }
  alive.finish();
  fresh.finish();
  const std::string text = read_file(b.out);
  // Not a request failed or was answered out of place; the same two worker processes answered
  // everything, before and after each restart; the last generation adopted both.
  EXPECT_EQ(alive.failures(), 0u) << alive.failure_log();
  EXPECT_EQ(alive.mismatches(), 0u);
  EXPECT_EQ(fresh.failed(), 0u) << fresh.failure_log();
  EXPECT_EQ(keys(alive.spread()), workers) << show(alive.spread());
  EXPECT_EQ(fresh.pids(), workers) << show_pids(fresh.pids()) << "vs " << show_pids(workers);
  EXPECT_NE(text.find("generation 4 pid"), std::string::npos) << text;
  EXPECT_NE(text.find("2 workers (2 rejoined)"), std::string::npos) << text;
  std::printf("[ info ] %llu keep-alive and %llu connection-per-request requests answered, workers %s\n",
              static_cast<unsigned long long>(alive.ok()), static_cast<unsigned long long>(fresh.ok()),
              show_pids(workers).c_str());
}

TEST(balancer_restart, killed_dispatcher_leaves_workers_serving_and_a_new_one_adopts_them) {
  raise_fd_limit();
  const std::string name = unique_name("front");
  const unsigned short port = free_port();
  const std::string listen = "127.0.0.1:" + std::to_string(port);
  auto first = std::make_unique<balancer_run>(std::vector<std::string>{"--workers", "2"}, name, listen);
  ASSERT_EQ(first->port, port) << "baton-balancer did not start: " << read_file(first->out);

  keepalive_load alive(port, 10);
  ASSERT_TRUE(wait_for([&] { return alive.spread().count(0) == 0; }, 60s)) << show(alive.spread());
  const std::set<std::uint32_t> workers = keys(alive.spread());
  ASSERT_EQ(workers.size(), 2u) << show(alive.spread());
  std::set<std::uint32_t> seen_workers = workers;

  // kill -9 of the dispatcher: its listener dies with it, its workers serve on.
  kill_process_and_wait(first->run.pid());
  const auto ok_after_kill = alive.ok();
  ASSERT_TRUE(wait_for([&] { return alive.ok() >= ok_after_kill + 500; }, 60s))
      << "the established connections stopped being served: " << alive.failure_log();
  EXPECT_EQ(alive.failures(), 0u) << alive.failure_log();
  for (auto pid : workers) EXPECT_TRUE(process_exists(pid)) << pid;

  // A balancer started again under the same name (and address) adopts the same two workers.
  balancer_run second({"--workers", "2"}, name, listen);
  for (auto pid : workers) second.worker_pids.insert(pid);
  ASSERT_EQ(second.port, port) << "the second balancer did not start: " << read_file(second.out);
  const std::string text = read_file(second.out);
  EXPECT_NE(text.find("2 workers (2 rejoined)"), std::string::npos) << text;
  per_request_load fresh(port, 2);
  ASSERT_TRUE(wait_for([&] { return fresh.ok() >= 100; }, 60s)) << fresh.failure_log();
  fresh.finish();
  const auto ok_alive = alive.ok();
  ASSERT_TRUE(wait_for([&] { return alive.ok() >= ok_alive + 200; }, 60s));
  alive.finish();
  EXPECT_EQ(fresh.failed(), 0u) << fresh.failure_log();
  EXPECT_EQ(fresh.pids(), workers) << show_pids(fresh.pids()) << "vs " << show_pids(workers);
  EXPECT_EQ(alive.failures(), 0u) << alive.failure_log();
  EXPECT_EQ(alive.mismatches(), 0u);
  EXPECT_EQ(keys(alive.spread()), workers);

  // Stopped for good, the front takes its workers with it (they were told not to wait).
  std::string out;
  EXPECT_EQ(batonctl({"stop", name}, out), 0) << out;
  EXPECT_TRUE(wait_for([&] {
    return std::none_of(workers.begin(), workers.end(), [](auto p) { return process_exists(p); });
  }, 60s)) << "workers still running after the stop; first front: " << read_file(first->out)
            << "second front: " << read_file(second.out);
  first->worker_pids = seen_workers;
  first.reset();
}

}  // namespace
