// The program baton-balancer (samples/) evening out its workers after one is killed and
// restarted, under keep-alive load from 50 connections that never pause: real processes (the
// balancer, its workers), real loopback sockets, a hard kill (SIGKILL / TerminateProcess). The
// spread is read from the clients' side (the worker that answered each connection last) and the
// restart from the balancer's /metrics.
#include <baton/balance.hpp>

#include "balancer_support.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

using namespace baton::test::prelude;
using namespace baton::test;

namespace {

// Two workers, each answering, within one connection of the other, every connection answered.
// Every connection answered (none reconnecting), all by two workers within one of each other,
// leaving aside connections last answered by the `dead` worker whose clients have not noticed yet
// (see the test).
bool even_over_two(const std::map<std::uint32_t, unsigned>& s, unsigned conns, std::uint32_t dead = 0) {
  if (s.count(0)) return false;
  std::vector<unsigned> live;
  unsigned total = 0;
  for (auto& [pid, n] : s) {
    total += n;
    if (pid != dead) live.push_back(n);
  }
  if (live.size() != 2 || total != conns) return false;
  return (live[0] > live[1] ? live[0] - live[1] : live[1] - live[0]) <= 1;
}

// The balancer's own samples of a /metrics text, without the HELP and TYPE lines.
std::string counters(const std::string& metrics) {
  std::string t;
  for (std::size_t at = 0; at < metrics.size();) {
    const auto end = std::min(metrics.find('\n', at), metrics.size());
    if (metrics.compare(at, 14, "baton_balance_") == 0) t += metrics.substr(at, end - at) + "\n";
    at = end + 1;
  }
  return t;
}


TEST(balancer_rebalance, killed_worker_comes_back_and_gets_its_share_under_keep_alive_load) {
  raise_fd_limit();
  constexpr unsigned conns = 50;
  balancer_run b({"--workers", "2", "--policy", "least-connections", "--rebalance-ms", "250"});
  ASSERT_NE(b.port, 0) << "baton-balancer did not start: " << read_file(b.out);
  ASSERT_NE(b.metrics_port, 0);

  keepalive_load load(b.port, conns);
  auto wait_for = [](auto cond, std::chrono::seconds within) {
    for (const auto until = steady::now() + within; steady::now() < until; nap(5ms))
      if (cond()) return true;
    return cond();
  };
  // Least-connections spreads the 50 connections 25:25. Then no rebalancing may be under way:
  // a connection moving to the worker about to be killed at the kill would die with it, though
  // its client was last answered by the other (the likely cause of one failure charged to the
  // survivor in 2 of ~30 Wine runs, moves having been asked for while the connections were
  // made). A worker's move request lasts 2 s, so the count of moves asked for must stay the same
  // for longer than that.
  ASSERT_TRUE(wait_for([&] { return even_over_two(load.spread(), conns); }, 60s)) << show(load.spread());
  std::uint64_t asked = b.metric(b.metrics(), "baton_balance_rebalance_moves_total");
  auto quiet_since = steady::now();
  ASSERT_TRUE(wait_for([&] {
    const auto now_asked = b.metric(b.metrics(), "baton_balance_rebalance_moves_total");
    if (now_asked != asked) asked = now_asked, quiet_since = steady::now();
    return steady::now() - quiet_since > 2500ms && even_over_two(load.spread(), conns);
  }, 60s)) << show(load.spread());
  const auto before = load.spread();
  for (auto& [pid, n] : before) b.worker_pids.insert(pid);
  const std::uint32_t victim = before.begin()->first, survivor = std::next(before.begin())->first;
  const unsigned on_victim = before.begin()->second;
  const std::uint64_t joins = b.metric(b.metrics(), "baton_balance_worker_joins_total");
  ASSERT_EQ(joins, 2u);

  // kill -9. Its clients see their connections fail, reconnect at once and are handed to the
  // survivor while the victim's replacement starts.
  kill_process(victim);
  const auto killed = steady::now();
  std::uint32_t back_pid = 0;
  ASSERT_TRUE(wait_for([&] {
    const std::string m = b.metrics();
    if (b.metric(m, "baton_balance_worker_joins_total") < joins + 1) return false;
    for (const char* w : {"0", "1"}) {
      const auto pid = static_cast<std::uint32_t>(b.metric(m, "baton_balance_worker_pid", ",worker=\"" + std::string(w) + "\""));
      if (pid != 0 && pid != survivor && pid != victim) back_pid = pid;
    }
    return back_pid != 0;
  }, 60s)) << "the killed worker was not restarted: " << b.metrics();
  const auto back = steady::now();
  b.worker_pids.insert(back_pid);
  const auto at_return = load.spread();

  // The spread is back within one. Measured from the moment the test saw the restarted worker in
  // the metrics (polled, so a little after its join). The requirement is 2 s; the assertion
  // allows 10 s natively (measured 0.1-0.2 s) and 30 s under Wine (measured 0.6-1.8 s on a quiet
  // machine), because a machine shared with other builds stalls the processes involved for
  // seconds without anything being wrong: under Wine, with a load average of 10 on 2 cores, the
  // restart alone took 2.9 s instead of 0.4 s and the spread 10.0 s. The figure is printed to be
  // watched.
  // Under Wine, once in about eight runs, one client whose worker was killed saw neither a reset
  // nor an end of stream until its 30-s receive timeout: the socket stayed open somewhere (cause
  // not found). Such a client serves nobody and no worker holds it, so it is left out of the
  // spread, and counted.
  const bool even = wait_for([&] { return even_over_two(load.spread(), conns, victim); }, 60s);
  const auto evened = steady::now();
  const double secs = std::chrono::duration<double>(evened - back).count();
  const auto at_even = load.spread();
  const unsigned unnoticed = at_even.count(victim) ? at_even.at(victim) : 0;
  if (unnoticed != 0) std::printf("[ info ] not yet aware of the kill: %s\n", load.history_of(victim).c_str());
  // The balancer's metrics agree, per worker (labels service and worker).
  const bool metrics_agree = wait_for([&] {
    const std::string m = b.metrics();
    const auto c0 = b.metric(m, "baton_balance_worker_connections", ",worker=\"0\"");
    const auto c1 = b.metric(m, "baton_balance_worker_connections", ",worker=\"1\"");
    return c0 + c1 + unnoticed >= conns && c0 + c1 <= conns && (c0 > c1 ? c0 - c1 : c1 - c0) <= 1;
  }, 30s);
  // The load goes on a little: moved connections must keep working.
  const std::uint64_t ok_then = load.ok();
  wait_for([&] { return load.ok() >= ok_then + 10 * conns; }, 30s);
  load.finish();
  const std::string m = b.metrics();
  std::printf("[ info ] restart seen %.3f s after the kill; spread at return %s-> within one %.3f s later (%s); "
              "%llu connections moved, rebalance requests for %llu, %llu requests ok, %u client(s) not yet aware "
              "of the kill\n",
              std::chrono::duration<double>(back - killed).count(), show(at_return).c_str(), secs, show(at_even).c_str(),
              static_cast<unsigned long long>(load.moved()),
              static_cast<unsigned long long>(b.metric(m, "baton_balance_rebalance_moves_total")),
              static_cast<unsigned long long>(load.ok()), unnoticed);
  std::fflush(stdout);
  EXPECT_TRUE(even) << "spread never within one: " << show(load.spread());
  EXPECT_LE(secs, host_is_windows() ? 30.0 : 10.0) << counters(m);
  EXPECT_TRUE(at_even.count(back_pid) && at_even.count(survivor)) << show(at_even);
  EXPECT_TRUE(metrics_agree) << m;
  // Only the killed worker's clients failed, each once; none on the survivor or the newcomer.
  EXPECT_EQ(load.failures_of(survivor), 0u) << load.failure_log();
  EXPECT_EQ(load.failures_of(back_pid), 0u) << load.failure_log();
  EXPECT_LE(load.failures_of(victim), on_victim);
  EXPECT_EQ(load.failures(), load.failures_of(victim));
  // Every request of a connection that moved was answered once, in order, by one worker.
  EXPECT_EQ(load.mismatches(), 0u);
  // Connections leave the survivor only by moving (none failed there), and it had to come down
  // from what it held at the return to at most half, rounded up.
  const unsigned survivor_at_return = at_return.count(survivor) ? at_return.at(survivor) : 0;
  EXPECT_GE(load.moved() + (conns + 1) / 2, survivor_at_return);
}

}  // namespace
