// White-box tests of the shared-memory ring (lib/src/ring.*) and of the channel's receive side
// around it: stalled producers, a receiver that must never wait on the producer lock, and a ring
// truncated under the receiver. Multi-process tests re-run this binary in helper roles.
#include "ring.hpp"

#include "async_helpers.hpp"
#include "channel_impl.hpp"
#include "test_prelude.hpp"
#include "test_support.hpp"

#include <baton/channel.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <thread>

namespace {

using namespace baton::test::prelude;

// The receiver's bound on a record that stays reserved while its producer lives (ring.cpp).
constexpr auto stall_bound = 2s;

std::uint64_t seed_of(std::uint32_t tag, std::uint32_t seq) { return (std::uint64_t{tag} << 32) | seq; }
std::size_t size_of(std::uint32_t seq) { return 16 + (seq * 37u) % 700; }

baton::ticket patterned(std::uint32_t tag, std::uint32_t seq) {
  baton::ticket t;
  t.kind = baton::ticket_kind::control;
  t.id = baton::ticket_id::random();
  t.flags = (tag << 24) | seq;
  t.state.resize(size_of(seq));
  baton::test::fill_pattern(seed_of(tag, seq), t.state.data(), t.state.size());
  return t;
}

// True if `t` is the intact ticket `seq` of sender `tag` (whatever the order it came in).
bool intact(const baton::ticket& t) {
  const std::uint32_t tag = t.flags >> 24, seq = t.flags & 0xFFFFFF;
  return t.state.size() == size_of(seq) && baton::test::check_pattern(seed_of(tag, seq), t.state.data(), t.state.size());
}

// Sends `count` patterned tickets tagged `tag`; a failed send is counted, not fatal (the ring may
// be vandalised under us). Exit code 0 unless the process could not open the channel.
BATON_TEST_ROLE(ring_sender) {
  const std::string name = args.at(0);
  const auto tag = static_cast<std::uint32_t>(std::stoul(args.at(1)));
  const auto count = static_cast<std::uint32_t>(std::stoul(args.at(2)));
  const auto pause = std::chrono::microseconds(args.size() > 3 ? std::stoul(args.at(3)) : 0);
  asio::io_context ioc;
  baton::channel_options o;
  o.send_timeout = 60s;
  auto tx = baton::channel::open(ioc.get_executor(), name, o);
  std::uint32_t failed = 0;
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    asio::steady_timer timer(ioc);
    for (std::uint32_t i = 0; i < count; ++i) {
      auto [ec] = co_await tx.async_send(patterned(tag, i), asio::as_tuple(asio::use_awaitable));
      if (ec) ++failed;
      if (pause.count() != 0) {
        timer.expires_after(pause);
        co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
      }
    }
  }, asio::detached);
  ioc.run_for(120s);
  std::printf("[ info ] sender %u: %u of %u sends failed, %llu truncations seen\n", tag, failed, count,
              static_cast<unsigned long long>(tx.stats().truncations));
  return 0;
}

// Receives until `want` intact tickets of `tag` arrived; errors are collected in `errors`.
bool receive_tag(asio::io_context& ioc, baton::channel& rx, std::uint32_t tag, std::uint32_t want,
                 std::vector<baton::error_code>& errors, std::chrono::milliseconds deadline,
                 std::uint32_t* got_out = nullptr) {
  std::uint32_t got = 0;
  const bool ok = baton::test::run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    while (got < want) {
      auto [ec, t] = co_await rx.async_receive(asio::as_tuple(asio::use_awaitable));
      if (ec) {
        errors.push_back(ec);
        continue;
      }
      if ((t.flags >> 24) != tag) continue;
      EXPECT_TRUE(intact(t)) << "ticket " << (t.flags & 0xFFFFFF) << " of sender " << tag;
      ++got;
    }
  }(), deadline);
  if (got_out) *got_out = got;
  return ok;
}

// --- item 2: a record that stays reserved while its producer lives ---------------------------

TEST(ring, reserved_record_of_a_live_pid_is_skipped_within_the_bound) {
  std::vector<std::uint32_t> pids = {baton::detail::current_pid()};
  if (!baton::test::host_is_windows()) pids.push_back(1);  // init: always alive, never ours
  for (const std::uint32_t pid : pids) {
    asio::io_context ioc;
    name_guard g(unique_name("stall"));
    auto rx = baton::channel::create(ioc.get_executor(), g.name);
    auto tx = baton::channel::open(ioc.get_executor(), g.name);
    auto& rx_ring = baton::detail::channel_access::get(rx).ring;
    auto& tx_ring = baton::detail::channel_access::get(tx).ring;
    baton::error_code ec;
    tx_ring.reserve_and_abandon(100, ec);
    ASSERT_FALSE(ec) << ec.message();
    // The fresh ring's first record sits at the start of the area: name `pid` as its producer.
    auto* rec = static_cast<unsigned char*>(baton::detail::channel_access::get(rx).region.get_address()) +
                rx_ring.identity().data_offset;
    const std::uint32_t len = 100, check = (len * 2654435761u) ^ pid ^ baton::detail::ring_magic;
    std::memcpy(rec + 8, &pid, 4);
    std::memcpy(rec + 12, &check, 4);
    tx.async_send(patterned(5, 0), [](baton::error_code e) { EXPECT_FALSE(e) << e.message(); });
    const auto start = std::chrono::steady_clock::now();
    std::vector<baton::error_code> errors;
    EXPECT_TRUE(receive_tag(ioc, rx, 5, 1, errors, 10s)) << "pid " << pid << ": the valid ticket did not arrive";
    const auto took = std::chrono::steady_clock::now() - start;
    EXPECT_LT(took, stall_bound + 3s) << "pid " << pid;
    ASSERT_EQ(errors.size(), 1u) << "pid " << pid;
    EXPECT_EQ(errors[0], errc::producer_stalled) << errors[0].message();
    EXPECT_EQ(rx.stats().stalled_records, 1u);
    EXPECT_EQ(rx.stats().corruptions, 0u);
  }
}

// A producer that was only slow: it is "stopped" inside its fill callback while the consumer
// skips its record and other producers lap the ring several times; then it resumes, writes its
// payload late, and commits. Nothing it writes may reach another record.
TEST(ring, late_write_and_commit_after_a_skip_cannot_corrupt_the_ring) {
  asio::io_context ioc;
  name_guard g(unique_name("late"));
  baton::channel_options o;
  o.ring_bytes = 4096;
  o.limits.max_ticket_bytes = 1024;
  auto rx = baton::channel::create(ioc.get_executor(), g.name, o);
  auto slow = baton::channel::open(ioc.get_executor(), g.name);
  auto fast = baton::channel::open(ioc.get_executor(), g.name);
  auto& cons = baton::detail::channel_access::get(rx).ring;
  auto& slow_ring = baton::detail::channel_access::get(slow).ring;
  auto& fast_ring = baton::detail::channel_access::get(fast).ring;
  ASSERT_EQ(cons.identity().data_bytes, 4096u);

  std::vector<std::byte> out;
  std::uint64_t pushed = 0, popped = 0, bad = 0;
  // One fast record, popped at once and checked: payload = pattern(seq) of length 40..700.
  auto fast_round = [&] {
    const std::size_t n = 40 + (pushed * 53) % 660;
    const auto seq = pushed;
    baton::error_code e;
    fast_ring.push(n, [&](std::span<std::byte> s) { baton::test::fill_pattern(seq, s.data(), s.size()); }, e);
    ASSERT_FALSE(e) << e.message();
    ++pushed;
    for (int tries = 0; tries < 1000; ++tries) {
      auto r = cons.pop(out, e);
      if (r == baton::detail::ring::pop_result::record) {
        if (out.size() != n || !baton::test::check_pattern(seq, out.data(), out.size())) ++bad;
        ++popped;
        return;
      }
      ASSERT_NE(r, baton::detail::ring::pop_result::error) << e.message();
    }
    FAIL() << "record " << seq << " never came out";
  };

  for (int i = 0; i < 5; ++i) fast_round();
  bool skipped = false;
  baton::error_code slow_ec;
  slow_ring.push(
      300,
      [&](std::span<std::byte> s) {
        // "Stopped" here, between reserve and commit: the consumer must skip the record within
        // the bound even though our pid is alive.
        const auto until = std::chrono::steady_clock::now() + stall_bound + 3s;
        while (!skipped && std::chrono::steady_clock::now() < until) {
          baton::error_code e;
          auto r = cons.pop(out, e);
          if (r == baton::detail::ring::pop_result::error) {
            EXPECT_EQ(e, errc::producer_stalled) << e.message();
            skipped = true;
          }
          baton::test::nap(5ms);
        }
        // Meanwhile the others keep going, several laps of the 4 KiB area.
        if (skipped)
          for (int i = 0; i < 100 && !::testing::Test::HasFatalFailure(); ++i) fast_round();
        // Resumed: the late payload write.
        std::memset(s.data(), 0xEE, s.size());
      },
      slow_ec);
  EXPECT_TRUE(skipped) << "the consumer did not skip the stalled record within the bound";
  EXPECT_EQ(slow_ec, errc::record_skipped) << slow_ec.message();
  // The late commit must not have touched the records of the others; the ring goes on.
  for (int i = 0; i < 100 && !::testing::Test::HasFatalFailure(); ++i) fast_round();
  EXPECT_EQ(bad, 0u);
  EXPECT_EQ(popped, pushed);
  auto c = cons.counters();
  EXPECT_EQ(c.corruptions, 0u);
  EXPECT_EQ(c.stalled, 1u);
}

// Three producers stalled at once (nested fills), while a fourth pushes records of every size
// for many laps: records must be placed around all three areas, whatever the gap left before
// each (a padding record, or a gap too small for one), and the areas given back once their
// producers have learnt of the skip.
TEST(ring, several_stalled_producers_over_many_laps_of_every_record_size) {
  asio::io_context ioc;
  name_guard g(unique_name("holes"));
  baton::channel_options o;
  o.ring_bytes = 4096;
  o.limits.max_ticket_bytes = 1024;
  auto rx = baton::channel::create(ioc.get_executor(), g.name, o);
  std::vector<baton::channel> tx;
  for (int i = 0; i < 4; ++i) tx.push_back(baton::channel::open(ioc.get_executor(), g.name));
  auto& cons = baton::detail::channel_access::get(rx).ring;
  auto ring_of = [&](int i) -> baton::detail::ring& { return baton::detail::channel_access::get(tx[i]).ring; };
  const auto* table = static_cast<const unsigned char*>(baton::detail::channel_access::get(rx).region.get_address()) + 192;
  auto table_empty = [&] {
    for (int i = 0; i < 64; ++i)
      if (table[i] != 0) return false;
    return true;
  };

  std::vector<std::byte> out;
  std::uint64_t pushed = 0, bad = 0, lost = 0;
  std::uint32_t lcg = 12345;
  std::deque<std::pair<std::uint64_t, std::size_t>> pending;  // pushed, not yet popped: (seq, size)
  auto fast_push = [&](std::size_t max) {
    lcg = lcg * 1664525u + 1013904223u;
    const std::size_t n = (lcg >> 8) % (max + 1);
    const auto seq = pushed++;
    baton::error_code e;
    ring_of(3).push(n, [&](std::span<std::byte> sp) { baton::test::fill_pattern(seq, sp.data(), sp.size()); }, e);
    ASSERT_FALSE(e) << e.message();
    pending.emplace_back(seq, n);
  };
  // One pop; a record must be the oldest pending one, intact.
  auto pop_one = [&](baton::error_code& e) {
    auto r = cons.pop(out, e);
    if (r == baton::detail::ring::pop_result::record) {
      if (pending.empty()) {
        ++bad;
      } else {
        const auto [seq, n] = pending.front();
        pending.pop_front();
        if (out.size() != n || !baton::test::check_pattern(seq, out.data(), out.size())) ++bad;
      }
    }
    return r;
  };
  auto fast_round = [&] {
    fast_push(1000);
    for (int tries = 0; tries < 1000 && !pending.empty(); ++tries) {
      baton::error_code e;
      if (pop_one(e) == baton::detail::ring::pop_result::error) ++lost;
    }
    if (!pending.empty()) FAIL() << "record " << pending.front().first << " never came out";
  };
  for (int i = 0; i < 7; ++i) fast_round();

  int skips = 0;
  baton::error_code ec[3];
  const std::size_t sizes[3] = {300, 8, 700};
  std::function<void(int)> stall = [&](int k) {
    ring_of(k).push(
        sizes[k],
        [&, k](std::span<std::byte> sp) {
          // Records behind the stalled one wait for its skip; they also set the gaps between.
          for (int i = 0; i < k + 1; ++i) fast_push(200);
          if (k < 2) {
            stall(k + 1);
          } else {
            const auto until = std::chrono::steady_clock::now() + 3 * (stall_bound + 2s);
            while ((skips < 3 || !pending.empty()) && std::chrono::steady_clock::now() < until) {
              baton::error_code e;
              const auto r = pop_one(e);
              if (r == baton::detail::ring::pop_result::error) {
                EXPECT_EQ(e, errc::producer_stalled) << e.message();
                ++skips;
              }
              if (r != baton::detail::ring::pop_result::record) baton::test::nap(5ms);
            }
            EXPECT_FALSE(table_empty()) << "no area was quarantined";
            for (int i = 0; i < 2000 && !::testing::Test::HasFatalFailure(); ++i) fast_round();
          }
          std::memset(sp.data(), 0xEE, sp.size());  // the late write
        },
        ec[k]);
  };
  stall(0);
  EXPECT_EQ(skips, 3);
  for (auto& e : ec) EXPECT_EQ(e, errc::record_skipped) << e.message();
  // The areas are given back (lifted within tens of milliseconds), and the ring goes on.
  const auto until = std::chrono::steady_clock::now() + 5s;
  while (!table_empty() && std::chrono::steady_clock::now() < until && !::testing::Test::HasFatalFailure()) {
    fast_round();
    baton::test::nap(1ms);
  }
  EXPECT_TRUE(table_empty()) << "a quarantined area was never given back";
  for (int i = 0; i < 2000 && !::testing::Test::HasFatalFailure(); ++i) fast_round();
  EXPECT_EQ(bad, 0u);
  EXPECT_EQ(lost, 0u);
  const auto c = cons.counters();
  EXPECT_EQ(c.corruptions, 0u);
  EXPECT_EQ(c.stalled, 3u);
}

// Pushes one record and is stopped (SIGSTOP on POSIX; a wait for a file on Windows) between
// reserve and commit; once resumed, it reports what push() said: 0 if it learnt that its record
// was skipped, 3 if the commit went through, 4 for any other error.
BATON_TEST_ROLE(stopped_producer) {
  asio::io_context ioc;
  auto tx = baton::channel::open(ioc.get_executor(), args.at(0));
  const std::string ready = args.at(1), resume = args.at(2);
  baton::error_code ec;
  baton::detail::channel_access::get(tx).ring.push(
      300,
      [&](std::span<std::byte> s) {
        baton::test::touch(ready);
        baton::test::stall_until_resumed(resume);
        std::memset(s.data(), 0xEE, s.size());
      },
      ec);
  if (!ec) return 3;
  return ec == errc::record_skipped ? 0 : 4;
}

TEST(ring_process, stopped_producer_does_not_stop_another_producer) {
  asio::io_context ioc;
  name_guard g(unique_name("sigstop"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  const auto ready = baton::test::temp_path("sigstop-ready"), resume = baton::test::temp_path("sigstop-resume");
  auto stopped = child::spawn("stopped_producer", {g.name, ready, resume});
  ASSERT_TRUE(baton::test::wait_for_file(ready));
  ASSERT_TRUE(baton::test::wait_until_stalled(stopped.pid(), 10s));
  std::vector<baton::error_code> errors;
  auto second = child::spawn("ring_sender", {g.name, "2", "2000"});
  EXPECT_TRUE(receive_tag(ioc, rx, 2, 2000, errors, 60s)) << "the second producer's tickets were held up";
  EXPECT_EQ(second.wait(30s), 0);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0], errc::producer_stalled) << errors[0].message();
  // Resume the stalled producer: it writes late and tries to commit, and must learn that its
  // record was skipped; the ring must stay intact for everyone else.
  baton::test::resume_stalled(stopped.pid(), resume);
  EXPECT_EQ(stopped.wait(30s), 0) << "0: told its record was skipped; 3: its late commit was taken";
  auto third = child::spawn("ring_sender", {g.name, "3", "2000"});
  EXPECT_TRUE(receive_tag(ioc, rx, 3, 2000, errors, 60s));
  EXPECT_EQ(third.wait(30s), 0);
  EXPECT_EQ(errors.size(), 1u);
  EXPECT_EQ(rx.stats().stalled_records, 1u);
  EXPECT_EQ(rx.stats().corruptions, 0u);
  baton::test::remove_file(ready);
  baton::test::remove_file(resume);
}

// --- item 3: the producer lock word, re-planted with a live pid -------------------------------

// The consumer's side of a planted lock, white-box and without timing: the call that finds the
// broken header does not heal it (that would need the lock, held by a live process) and returns
// at once; after the grace a later call heals without the lock, which still names its holder.
// A consumer that waited for the lock, for any time, would have healed within the first call.
TEST(ring, a_heal_never_waits_for_a_lock_held_by_a_live_process) {
  asio::io_context ioc;
  name_guard g(unique_name("healwait"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  auto& r = baton::detail::channel_access::get(rx).ring;
  auto* base = static_cast<unsigned char*>(baton::detail::channel_access::get(rx).region.get_address());
  constexpr std::size_t lock_offset = 64, magic_offset = 0;  // see ring::shared_header
  const std::uint32_t holder = baton::detail::current_pid();  // live, and not a producer
  std::atomic_ref<std::uint32_t> lock(*reinterpret_cast<std::uint32_t*>(base + lock_offset));
  std::atomic_ref<std::uint32_t> magic(*reinterpret_cast<std::uint32_t*>(base + magic_offset));
  for (int round = 0; round < 3; ++round) {
    lock.store(holder);
    magic.store(0);
    std::vector<std::byte> out;
    baton::error_code ec;
    EXPECT_EQ(r.pop(out, ec), baton::detail::ring::pop_result::error);
    EXPECT_EQ(ec, errc::channel_corrupted) << ec.message();
    EXPECT_FALSE(r.header_intact()) << "round " << round << ": the heal took the lock of a live holder";
    EXPECT_EQ(r.pop(out, ec), baton::detail::ring::pop_result::blocked) << "round " << round;
    baton::test::nap(30ms);  // the grace (10 ms)
    EXPECT_EQ(r.pop(out, ec), baton::detail::ring::pop_result::empty) << "round " << round << ": " << ec.message();
    EXPECT_TRUE(r.header_intact()) << "round " << round;
    EXPECT_EQ(lock.load(), holder) << "round " << round << ": the heal changed the lock word";
  }
  lock.store(0);
  EXPECT_EQ(rx.stats().corruptions, 3u);
}

// Every 100 ms writes a live pid into the producer lock word, its own and `other` in turn, so
// that the word never names one holder for long; every 10th time it also breaks the header's
// magic, so that the receiver has to heal while the lock is held. Stops when `stop` exists, or
// after 60 s, and then creates `finished`. args: channel ready stop finished other-pid
BATON_TEST_ROLE(lock_planter) {
  baton::error_code ec;
  auto region = baton::detail::open_region(baton::detail::object_name(args.at(0), "ring", false), ec);
  if (ec) return 4;
  auto* base = static_cast<unsigned char*>(region.get_address());
  const std::uint32_t pids[2] = {baton::detail::current_pid(), static_cast<std::uint32_t>(std::stoul(args.at(4)))};
  constexpr std::size_t lock_offset = 64, magic_offset = 0;  // see ring::shared_header
  baton::test::touch(args.at(1));
  for (int i = 0; i < 600 && !baton::test::file_exists(args.at(2)); ++i) {
    std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(base + lock_offset)).store(pids[i % 2]);
    if (i % 10 == 5) std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(base + magic_offset)).store(0);
    baton::test::nap(100ms);
  }
  baton::test::touch(args.at(3));
  return 0;
}

TEST(ring_process, replanted_lock_word_does_not_block_the_receivers_reactor) {
  asio::io_context ioc;
  name_guard g(unique_name("lockword"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  const auto ready = baton::test::temp_path("planter-ready"), stop = baton::test::temp_path("planter-stop"),
             finished = baton::test::temp_path("planter-done");
  // The word alternates between two live pids (the planter's and this process's), so that it
  // never goes stale under one holder. Producers break a lock they have waited 2 s for, whoever
  // holds it, so tickets still arrive, slowly. That the consumer never waits for the lock is
  // checked without timing above (ring.a_heal_never_waits_for_a_lock_held_by_a_live_process);
  // this is the whole channel living with the planter.
  auto planter = child::spawn("lock_planter", {g.name, ready, stop, finished, std::to_string(baton::detail::current_pid())});
  ASSERT_TRUE(baton::test::wait_for_file(ready));
  auto sender = child::spawn("ring_sender", {g.name, "4", "100000", "2000"});
  std::vector<baton::error_code> errors;
  std::map<std::uint32_t, std::uint32_t> got;  // intact tickets by sender tag
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    for (;;) {
      auto [ec, t] = co_await rx.async_receive(asio::as_tuple(asio::use_awaitable));
      if (ec == asio::error::operation_aborted) co_return;
      if (ec) errors.push_back(ec);
      else if (intact(t)) ++got[t.flags >> 24];
    }
  }, asio::detached);
  // While the lock is planted, the receiver's reactor runs 3,000 ticks of a 1 ms timer, reports
  // the broken magic (heals made while the lock was held) at least twice and delivers tickets,
  // all before the planter has finished (60 s). How fast does not matter.
  int ticks = 0;
  double worst_ms = 0;
  const bool done = baton::test::run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    asio::steady_timer timer(ioc);
    const auto start = std::chrono::steady_clock::now();
    for (int k = 1; ticks < 3000 || errors.size() < 2 || got[4] < 1; ++k) {
      const auto due = start + k * 1ms;
      timer.expires_at(due);
      co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
      worst_ms = std::max(worst_ms, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - due).count());
      ++ticks;
    }
  }(), 50s, [&] { return baton::test::file_exists(finished); });
  const bool planter_still_planting = !baton::test::file_exists(finished);
  const std::uint32_t during = got[4];
  baton::test::touch(stop);
  EXPECT_EQ(planter.wait(30s), 0);
  sender.kill();
  std::printf("[ info ] receiver's timer: %d ticks, worst %.1f ms late; %u tickets and %zu errors during planting\n",
              ticks, worst_ms, during, errors.size());
  EXPECT_TRUE(done && planter_still_planting) << "the receiver's reactor was blocked while the lock was planted: " << ticks
                                              << " ticks, " << errors.size() << " errors, " << during << " tickets";
  EXPECT_GE(during, 1u) << "no ticket arrived while the lock word was planted";
  EXPECT_GE(errors.size(), 2u) << "the broken magic was not reported";
  // With the planter gone, a fresh sender's tickets all arrive.
  auto fresh = child::spawn("ring_sender", {g.name, "7", "500"});
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (got[7] < 500 && std::chrono::steady_clock::now() < until) ioc.run_for(20ms);
  EXPECT_EQ(got[7], 500u);
  EXPECT_EQ(fresh.wait(30s), 0);
  rx.close();
  ioc.run_for(50ms);
  for (const auto& f : {ready, stop, finished}) baton::test::remove_file(f);
}

// --- item 5: the ring's object truncated under traffic (POSIX) ---------------------------------

TEST(ring_process, truncated_ring_is_reported_and_nobody_crashes) {
  if (baton::test::host_is_windows())
    GTEST_SKIP() << "a Windows file mapping (section) cannot be truncated while mapped";
  asio::io_context ioc;
  name_guard g(unique_name("trunc"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  auto sender = child::spawn("ring_sender", {g.name, "6", "20000", "200"});
  std::vector<baton::error_code> errors;
  ASSERT_TRUE(receive_tag(ioc, rx, 6, 200, errors, 30s));
  ASSERT_TRUE(errors.empty());
  // The peer's attack: shrink the shared object to nothing while tickets flow.
  ASSERT_TRUE(baton::test::truncate_channel_ring(g.name));
  // The receiver survives (we are it), reports what happened, and tickets flow again.
  std::uint32_t got = 0;
  const bool noticed = baton::test::run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    while (errors.empty()) {
      auto [ec, t] = co_await rx.async_receive(asio::as_tuple(asio::use_awaitable));
      if (ec) errors.push_back(ec);
    }
  }(), 10s);
  EXPECT_TRUE(noticed) << "the truncation was not reported";
  // Whichever process faulted first grew the object back; the receiver then finds a zeroed
  // header (a sender refuses to write into one), which it reports as a truncation.
  for (auto& e : errors) {
    EXPECT_EQ(e, errc::channel_truncated) << e.message();
    std::printf("[ info ] reported: %s\n", e.message().c_str());
  }
  // Tickets flow again: take them until the sender has sent all it had (it survives too; a
  // SIGBUS would show as exit code 135).
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    for (;;) {
      auto [ec, t] = co_await rx.async_receive(asio::as_tuple(asio::use_awaitable));
      if (ec == asio::error::operation_aborted) co_return;
      if (!ec && (t.flags >> 24) == 6 && intact(t)) ++got;
    }
  }, asio::detached);
  const auto until = std::chrono::steady_clock::now() + 90s;
  while (sender.running() && std::chrono::steady_clock::now() < until) ioc.run_for(20ms);
  ioc.run_for(100ms);
  std::printf("[ info ] %u tickets after the truncation\n", got);
  EXPECT_GE(got, 100u) << "tickets stopped after the truncation";
  EXPECT_GE(rx.stats().truncations, 1u);
  EXPECT_EQ(sender.wait(10s), 0);
  rx.close();
  ioc.run_for(20ms);
}

}  // namespace
