// Reliability under a hostile peer (issue 7): a target that never reads its channel must
// neither stall other moves and traffic nor make the sender grow.
#include <baton/move.hpp>

#include "async_helpers.hpp"
#include "net_helpers.hpp"
#include "soak_support.hpp"
#include "test_prelude.hpp"
#include "test_support.hpp"

#include <boost/asio/detached.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <thread>

namespace {

using namespace baton::test::prelude;
using namespace baton::test::soak;
using namespace std::chrono_literals;

// A target that owns a channel with a small ring and never takes a ticket off it (it never
// receives, so it never acks and never reads). args: channel ready-file stop-file
BATON_TEST_ROLE(stalled_target) {
  asio::io_context ioc;
  baton::channel_options o;
  // The smallest ring, so that it fills after a few dozen tickets. The ring is grown to hold
  // two tickets of the largest size the channel accepts, so that limit comes down too (a
  // connection ticket is a few hundred bytes at most: Windows' WSAPROTOCOL_INFOW is 628).
  o.ring_bytes = 4096;
  o.limits.max_ticket_bytes = 1024;
  o.ack_slots = 16;
  auto rx = baton::channel::create(ioc.get_executor(), args.at(0), o);
  baton::test::touch(args.at(1));
  const auto deadline = std::chrono::steady_clock::now() + 200s;
  while (!baton::test::file_exists(args.at(2)) && std::chrono::steady_clock::now() < deadline) baton::test::nap(10ms);
  return 0;
}

// A healthy target: takes every connection and echoes on it until its client closes.
// args: channel ready-file stop-file result-file
BATON_TEST_ROLE(healthy_target) {
  asio::io_context ioc;
  auto rx = baton::channel::create(ioc.get_executor(), args.at(0));
  std::uint64_t received = 0, served = 0;
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    for (;;) {
      auto [ec, a] = co_await baton::async_receive(rx, tuple_aw);
      if (ec == asio::error::operation_aborted) co_return;
      if (ec || a.kind != baton::ticket_kind::connection) continue;
      ++received;
      asio::co_spawn(ioc, [&, c = std::move(a.conn)]() mutable -> asio::awaitable<void> {
        co_await echo_until_eof(c, served);
      }, asio::detached);
    }
  }, asio::detached);
  baton::test::touch(args.at(1));
  run_until(ioc, [&] { return baton::test::file_exists(args.at(2)); }, 200s);
  baton::test::write_file(args.at(3), " received=" + std::to_string(received) + " served=" + std::to_string(served));
  return 0;
}

// A client that keeps doing pattern-checked echo round trips on its own connection (served in
// the test process) until told to stop.
struct busy_client {
  tcp::socket s;
  std::atomic<bool> stop{false}, done{false};
  std::atomic<std::uint64_t> round_trips{0};
  std::string failure;
  std::thread t;
  busy_client(tcp::socket sock, std::uint64_t seed) : s(std::move(sock)) {
    t = std::thread([this, seed] {
      std::vector<std::byte> out(1024), back(1024);
      for (std::uint64_t i = 0; !stop; ++i) {
        baton::test::fill_pattern(seed + i, out.data(), out.size());
        baton::error_code ec;
        asio::write(s, asio::buffer(out), ec);
        if (!ec) asio::read(s, asio::buffer(back), ec);
        if (ec || back != out) {
          failure = ec ? "round trip " + std::to_string(i) + ": " + ec.message() : "echo differs in round trip " + std::to_string(i);
          break;
        }
        ++round_trips;
      }
      done = true;
    });
  }
  // A test that ends early (a failed assertion) unblocks the thread by shutting the socket.
  ~busy_client() {
    if (!t.joinable()) return;
    stop = true;
    baton::error_code ec;
    s.shutdown(tcp::socket::shutdown_both, ec);
    t.join();
  }
};

// One pattern-checked echo round trip through `server` (driven by ioc) from `client`.
// With `written`, the client already sent the pattern (e.g. while a move was under way).
::testing::AssertionResult echo_once(asio::io_context& ioc, baton::connection& server, tcp::socket& client,
                                     std::uint64_t seed, bool written = false, std::size_t n = 2048) {
  std::vector<std::byte> out(n), back(n);
  baton::test::fill_pattern(seed, out.data(), n);
  if (!written) asio::write(client, asio::buffer(out));
  const bool done = baton::test::run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    std::vector<std::byte> buf(n);
    co_await asio::async_read(server, asio::buffer(buf), asio::use_awaitable);
    co_await asio::async_write(server, asio::buffer(buf), asio::use_awaitable);
  }(), 20s);
  if (!done) return ::testing::AssertionFailure() << "the server side did not echo in time";
  baton::error_code ec;
  asio::read(client, asio::buffer(back), ec);
  if (ec) return ::testing::AssertionFailure() << "client read: " << ec.message();
  if (back != out) return ::testing::AssertionFailure() << "echo differs";
  return ::testing::AssertionSuccess();
}

// The stalled and the healthy target, and the connections of the test process: busy ones that
// stay here and echo throughout, the victim offered to the stalled target again and again, and
// those moved to the healthy target.
struct stall_rig {
  static constexpr int busy_n = 4, healthy_n = 16;
  name_guard gs{unique_name("stalled")}, gh{unique_name("healthy")};
  std::string ready_s = baton::test::temp_path("str"), ready_h = baton::test::temp_path("shr"),
              stop = baton::test::temp_path("ststop"), result_h = baton::test::temp_path("shres");
  child stalled, healthy;
  asio::io_context ioc, cio;
  tcp::acceptor acc{ioc, {asio::ip::address_v4::loopback(), 0}};
  std::vector<baton::connection> local = std::vector<baton::connection>(busy_n);
  int local_finished = 0;
  std::vector<std::unique_ptr<busy_client>> busy;
  tcp::socket victim_client{cio};
  baton::connection victim;
  std::vector<std::byte> victim_state;
  std::vector<tcp::socket> healthy_clients;
  std::vector<baton::connection> to_healthy;
  baton::channel tx_stalled, tx_healthy;

  baton::connection accept_one(tcp::socket& client) {
    client = baton::test::connect_loopback(cio, acc.local_endpoint().port());
    return baton::connection(acc.accept(), {}, {std::byte{0x5a}, std::byte{0xa5}});
  }
  void start() {
    stalled = child::spawn("stalled_target", {gs.name, ready_s, stop});
    healthy = child::spawn("healthy_target", {gh.name, ready_h, stop, result_h});
    ASSERT_TRUE(baton::test::wait_for_file(ready_s));
    ASSERT_TRUE(baton::test::wait_for_file(ready_h));
    for (int i = 0; i < busy_n; ++i) {
      tcp::socket cs(cio);
      local[static_cast<std::size_t>(i)] = accept_one(cs);
      busy.push_back(std::make_unique<busy_client>(std::move(cs), 5000u * static_cast<unsigned>(i + 1)));
      asio::co_spawn(ioc, echo_until_eof(local[static_cast<std::size_t>(i)], local_finished), asio::detached);
    }
    victim = accept_one(victim_client);
    victim_state = victim.state();
    for (int i = 0; i < healthy_n; ++i) {
      healthy_clients.emplace_back(cio);
      to_healthy.push_back(accept_one(healthy_clients.back()));
    }
    ASSERT_TRUE(echo_once(ioc, victim, victim_client, 1));
    baton::channel_options fail_fast;
    fail_fast.on_full = baton::full_policy::fail;
    tx_stalled = baton::channel::open(ioc.get_executor(), gs.name, fail_fast);
    tx_healthy = baton::channel::open(ioc.get_executor(), gh.name);
  }
  std::uint64_t busy_round_trips() const {
    std::uint64_t n = 0;
    for (auto& c : busy) n += c->round_trips;
    return n;
  }
  ~stall_rig() {
    for (auto* f : {&ready_s, &ready_h, &stop, &result_h}) baton::test::remove_file(*f);
  }
};

// 1. One move to the stalled target, pending for seconds, while 16 moves to the healthy one run
// and the busy connections keep echoing. Bytes the client sends during the move stay.
void one_stalled_move_beside_healthy_ones(stall_rig& r) {
  const std::string in_flight = "sent while the move hangs;";
  asio::write(r.victim_client, asio::buffer(in_flight));
  baton::move_options slow;
  slow.timeout = 3s;
  baton::error_code stalled_ec = asio::error::would_block;
  int healthy_ok = 0, healthy_done = 0, healthy_done_at_verdict = -1;
  const std::uint64_t busy_at_start = r.busy_round_trips();
  std::uint64_t busy_at_verdict = 0;
  baton::async_send(r.tx_stalled, std::move(r.victim), slow, [&](baton::error_code ec, baton::connection back) {
    stalled_ec = ec;
    r.victim = std::move(back);
    healthy_done_at_verdict = healthy_done;
    busy_at_verdict = r.busy_round_trips();
  });
  std::vector<baton::connection> healthy_back(stall_rig::healthy_n);
  for (int i = 0; i < stall_rig::healthy_n; ++i)
    baton::async_send(r.tx_healthy, std::move(r.to_healthy[static_cast<std::size_t>(i)]), baton::move_options{},
                      [&, i](baton::error_code ec, baton::connection back) {
                        ++healthy_done;
                        if (!ec) ++healthy_ok;
                        healthy_back[static_cast<std::size_t>(i)] = std::move(back);
                      });
  ASSERT_TRUE(run_until(r.ioc, [&] { return stalled_ec != asio::error::would_block && healthy_done == stall_rig::healthy_n; }, 60s));
  EXPECT_EQ(stalled_ec, errc::move_timeout) << stalled_ec.message();
  EXPECT_EQ(healthy_ok, stall_rig::healthy_n);
  EXPECT_EQ(healthy_done_at_verdict, stall_rig::healthy_n) << "moves to the healthy target waited for the stalled one";
  EXPECT_GT(busy_at_verdict, busy_at_start) << "traffic on other connections stopped during the stalled move";
  ASSERT_TRUE(r.victim.is_open());
  EXPECT_EQ(r.victim.state(), r.victim_state);
  std::string got(in_flight.size(), '\0');
  ASSERT_TRUE(baton::test::run_with_deadline(r.ioc, [&]() -> asio::awaitable<void> {
    co_await asio::async_read(r.victim, asio::buffer(got), asio::use_awaitable);
    co_await asio::async_write(r.victim, asio::buffer(got), asio::use_awaitable);
  }(), 20s));
  std::string back(in_flight.size(), '\0');
  asio::read(r.victim_client, asio::buffer(back));
  EXPECT_EQ(back, in_flight);
  EXPECT_TRUE(echo_once(r.ioc, r.victim, r.victim_client, 2));
}

// The connections moved to the healthy target each echo there.
int healthy_echoes(stall_rig& r) {
  int ok = 0;
  for (int i = 0; i < stall_rig::healthy_n; ++i) {
    std::vector<std::byte> out(1500), back(1500);
    baton::test::fill_pattern(900 + static_cast<std::uint64_t>(i), out.data(), out.size());
    baton::error_code ec;
    asio::write(r.healthy_clients[static_cast<std::size_t>(i)], asio::buffer(out), ec);
    if (!ec) asio::read(r.healthy_clients[static_cast<std::size_t>(i)], asio::buffer(back), ec);
    if (!ec && back == out) ++ok;
  }
  return ok;
}

struct attempt_results {
  static constexpr int attempts = 300, measure_at = 100;
  std::map<std::string, int> outcomes;
  int timeouts = 0, full = 0, first_full = -1, echo_ok = 0, echo_checks = 0;
  usage at_measure, at_end;
  std::string text() const {
    std::string t;
    for (auto& [m, n] : outcomes) t += "'" + m + "' x" + std::to_string(n) + "; ";
    return t;
  }
};

// 2. Many more attempts on the stalled target: the first ones time out (each ticket stays in the
// ring, which the target never drains), then the ring is full and, with full_policy::fail, every
// attempt fails at once with channel_full. Each time the connection comes back intact.
void many_attempts_on_the_stalled_target(stall_rig& r, attempt_results& res) {
  baton::move_options quick;
  quick.timeout = 100ms;
  for (int i = 1; i <= attempt_results::attempts; ++i) {
    // Now and then (in both regimes) the client sends a block before the attempt, which must
    // still be there, in order, once the connection is back.
    const bool check = i % 25 == 0 || i == 2;
    const std::uint64_t seed = 100 + static_cast<std::uint64_t>(i);
    if (check) {
      std::vector<std::byte> out(2048);
      baton::test::fill_pattern(seed, out.data(), out.size());
      asio::write(r.victim_client, asio::buffer(out));
    }
    baton::error_code ec = asio::error::would_block;
    baton::async_send(r.tx_stalled, std::move(r.victim), quick, [&](baton::error_code e, baton::connection back) {
      ec = e;
      r.victim = std::move(back);
    });
    ASSERT_TRUE(run_until(r.ioc, [&] { return ec != asio::error::would_block; }, 20s)) << "attempt " << i;
    if (ec == errc::move_timeout) {
      ++res.timeouts;
    } else if (ec == errc::channel_full) {
      ++res.full;
      if (res.first_full < 0) res.first_full = i;
    }
    ++res.outcomes[ec.message()];
    ASSERT_TRUE(r.victim.is_open()) << "attempt " << i;
    ASSERT_EQ(r.victim.state(), r.victim_state) << "attempt " << i;
    if (check) {
      ++res.echo_checks;
      if (echo_once(r.ioc, r.victim, r.victim_client, seed, true)) ++res.echo_ok;
    }
    if (i == attempt_results::measure_at) res.at_measure = baton::test::measure_process();
  }
  res.at_end = baton::test::measure_process();
}

// The busy clients' echoes are served by the rig's io_context: it keeps running while they stop.
std::uint64_t stop_busy_clients(stall_rig& r) {
  for (auto& c : r.busy) c->stop = true;
  EXPECT_TRUE(run_until(r.ioc, [&] { return std::all_of(r.busy.begin(), r.busy.end(), [](auto& c) { return c->done.load(); }); }, 60s));
  std::uint64_t total = 0;
  for (auto& c : r.busy) {
    c->t.join();
    EXPECT_EQ(c->failure, "");
    total += c->round_trips;
    c->s.close();
  }
  return total;
}

void report_attempts(const attempt_results& res, std::uint64_t busy_total) {
  std::printf("[ info ] stalled target: first move timed out with 16 healthy moves done meanwhile; then %d attempts: "
              "%d timeouts, %d channel_full (first at attempt %d); %d busy round trips\n",
              attempt_results::attempts, res.timeouts, res.full, res.first_full, static_cast<int>(busy_total));
  auto usage_line = [](const usage& u) {
    return std::to_string(u.handles) + " handles, rss " + std::to_string(u.rss / 1024) + " KiB, private " +
           std::to_string(u.priv / 1024) + " KiB, " + std::to_string(u.threads) + " threads";
  };
  std::printf("[ info ] sender after %d attempts: %s; after %d: %s\n", attempt_results::measure_at,
              usage_line(res.at_measure).c_str(), attempt_results::attempts, usage_line(res.at_end).c_str());
  using ::testing::Test;
  Test::RecordProperty("timeouts", res.timeouts);
  Test::RecordProperty("channel_full", res.full);
  Test::RecordProperty("sender_handles", std::to_string(res.at_measure.handles) + " -> " + std::to_string(res.at_end.handles));
  Test::RecordProperty("sender_rss_kib", std::to_string(res.at_measure.rss / 1024) + " -> " + std::to_string(res.at_end.rss / 1024));
}

void check_attempts(const attempt_results& res) {
  const auto text = res.text();
  EXPECT_EQ(res.timeouts + res.full, attempt_results::attempts) << text;
  EXPECT_GT(res.timeouts, 0) << text;
  // The ring filled with void tickets before the measurement, so the measured stretch is the
  // fail-at-once regime that an unbounded retry loop would hit.
  EXPECT_GT(res.first_full, 0) << text;
  EXPECT_LT(res.first_full, attempt_results::measure_at) << text;
  EXPECT_EQ(res.echo_ok, res.echo_checks);
  // A leak grows with the attempts (200 between the two measurements); a few handles that the
  // runtime opens or closes on its own (Wine's own handles, a cached pidfd) are noise the test
  // cannot attribute, and a decrease is never a leak.
  EXPECT_LT(res.at_end.handles, res.at_measure.handles + handle_noise)
      << "the sender leaked descriptors/handles: " << res.at_measure.handles << " -> " << res.at_end.handles;
  const auto bound = memory_bound(res.at_measure.threads, res.at_end.threads);
  if (memory_is_measurable) {
    EXPECT_LT(res.at_end.rss, res.at_measure.rss + bound) << "the sender's memory grew with the attempts";
    EXPECT_LT(res.at_end.priv, res.at_measure.priv + bound) << "the sender's memory grew with the attempts";
  }
}

TEST(soak_stall, a_target_that_never_reads_cannot_stall_other_moves_or_traffic_nor_grow_the_sender) {
  stall_rig r;
  ASSERT_NO_FATAL_FAILURE(r.start());
  ASSERT_NO_FATAL_FAILURE(one_stalled_move_beside_healthy_ones(r));
  EXPECT_EQ(healthy_echoes(r), stall_rig::healthy_n);
  attempt_results res;
  ASSERT_NO_FATAL_FAILURE(many_attempts_on_the_stalled_target(r, res));
  const std::uint64_t busy_total = stop_busy_clients(r);
  report_attempts(res, busy_total);
  check_attempts(res);
  EXPECT_GT(busy_total, 0u);
  EXPECT_TRUE(echo_once(r.ioc, r.victim, r.victim_client, 7));
  // The local echo loops see their clients' EOF and end before their connections are destroyed.
  EXPECT_TRUE(run_until(r.ioc, [&] { return r.local_finished == stall_rig::busy_n; }, 20s));

  for (auto& c : r.healthy_clients) c.close();
  r.victim_client.close();
  baton::test::touch(r.stop);
  EXPECT_EQ(r.healthy.wait(60s), 0);
  EXPECT_EQ(r.stalled.wait(60s), 0);
  const auto rh = baton::test::read_file(r.result_h);
  EXPECT_EQ(field(rh, "received"), static_cast<std::uint64_t>(stall_rig::healthy_n)) << rh;
}

}  // namespace
