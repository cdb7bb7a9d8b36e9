// Channel tests across real processes: the test binary re-runs itself in helper roles.
#include <baton/channel.hpp>

#include "async_helpers.hpp"
#include "channel_impl.hpp"
#include "test_prelude.hpp"
#include "test_support.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/interprocess/permissions.hpp>

#include <gtest/gtest.h>

#include <map>
#include <random>

namespace {

using namespace baton::test::prelude;

std::uint64_t seed_of(std::uint32_t sender, std::uint32_t seq) { return (std::uint64_t{sender} << 32) | seq; }

// Sizes 0..max of a sender's tickets, reproducible on the receiving side.
struct size_stream {
  std::mt19937 gen;
  std::size_t max;
  size_stream(std::uint32_t sender, std::size_t m) : gen(1000 + sender), max(m) {}
  std::size_t next() { return std::uniform_int_distribution<std::size_t>(0, max)(gen); }
};

BATON_TEST_ROLE(sender) {
  const std::string name = args.at(0);
  const auto sender = static_cast<std::uint32_t>(std::stoul(args.at(1)));
  const auto count = static_cast<std::uint32_t>(std::stoul(args.at(2)));
  const std::size_t max = std::stoul(args.at(3));
  asio::io_context ioc;
  baton::channel_options o;
  o.send_timeout = 60s;
  auto tx = baton::channel::open(ioc.get_executor(), name, o);
  size_stream sizes(sender, max);
  int rc = 1;
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    for (std::uint32_t i = 0; i < count; ++i) {
      baton::ticket t;
      t.kind = baton::ticket_kind::control;
      t.id = baton::ticket_id::random();
      t.flags = (sender << 24) | i;
      t.state.resize(sizes.next());
      baton::test::fill_pattern(seed_of(sender, i), t.state.data(), t.state.size());
      co_await tx.async_send(std::move(t), asio::use_awaitable);
    }
    rc = 0;
  }, asio::detached);
  ioc.run_for(240s);
  return rc;
}

// Pre-creates the objects a channel of this name would use, readable by everyone.
BATON_TEST_ROLE(squatter) {
  const std::string name = args.at(0);
  const std::string ready = args.at(1);
  if (!baton::test::squat_channel_ring(name)) return 4;
  baton::test::touch(ready);
  baton::test::nap(60s);  // the parent kills us when done
  return 0;
}

// Overwrites part of a live channel's shared memory with garbage.
BATON_TEST_ROLE(vandal) {
  const std::string name = args.at(0);
  const std::string what = args.at(1);
  baton::error_code ec;
  auto region = baton::detail::open_region(baton::detail::object_name(name, "ring", false), ec);
  if (ec) return 4;
  auto* p = static_cast<unsigned char*>(region.get_address());
  std::mt19937 gen(7);
  std::size_t from = 0, to = region.get_size();
  if (what == "header") to = baton::detail::ring_header_bytes;
  else if (what == "records") from = baton::detail::ring_header_bytes;
  for (std::size_t i = from; i < to; ++i) p[i] = static_cast<unsigned char>(gen());
  return 0;
}

// Sends a few tickets, then reserves a record and never commits it; the parent kills us.
BATON_TEST_ROLE(abandoner) {
  asio::io_context ioc;
  auto tx = baton::channel::open(ioc.get_executor(), args.at(0));
  for (std::uint32_t i = 0; i < 10; ++i) {
    baton::ticket t;
    t.kind = baton::ticket_kind::control;
    t.flags = (9u << 24) | i;
    tx.async_send(t, asio::detached);
  }
  ioc.run_for(2s);
  baton::error_code ec;
  baton::detail::channel_access::get(tx).ring.reserve_and_abandon(500, ec);
  if (ec) return 5;
  baton::test::touch(args.at(1));
  baton::test::nap(60s);
  return 0;
}

// A receiver that takes one ticket and never answers, then dies when killed.
BATON_TEST_ROLE(silent_receiver) {
  asio::io_context ioc;
  auto rx = baton::channel::create(ioc.get_executor(), args.at(0));
  baton::test::touch(args.at(1));
  rx.async_receive([](baton::error_code, baton::ticket) {});
  auto work = asio::make_work_guard(ioc);  // keep running after the ticket: we are "busy"
  ioc.run_for(60s);
  return 0;
}

// Receives until every sender delivered `count` tickets; verifies size, content and order.
struct verifier {
  std::map<std::uint32_t, size_stream> sizes;
  std::map<std::uint32_t, std::uint32_t> next;
  std::uint64_t total = 0, bytes = 0, errors = 0;
  void add_sender(std::uint32_t s, std::size_t max) {
    sizes.emplace(s, size_stream(s, max));
    next[s] = 0;
  }
  void check(const baton::ticket& t) {
    const std::uint32_t s = t.flags >> 24, seq = t.flags & 0xFFFFFF;
    ASSERT_TRUE(sizes.count(s)) << "unknown sender " << s;
    ASSERT_EQ(seq, next[s]) << "out of order from sender " << s;
    ASSERT_EQ(t.state.size(), sizes.at(s).next()) << "size of " << s << "/" << seq;
    ASSERT_TRUE(baton::test::check_pattern(seed_of(s, seq), t.state.data(), t.state.size()))
        << "content of " << s << "/" << seq;
    ++next[s];
    ++total;
    bytes += t.state.size();
  }
};

void receive_all(asio::io_context& ioc, baton::channel& rx, verifier& v, std::uint64_t expected,
                 std::chrono::seconds deadline, std::vector<child>& senders) {
  bool ok = baton::test::run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    while (v.total < expected) {
      auto [ec, t] = co_await rx.async_receive(asio::as_tuple(asio::use_awaitable));
      if (ec) {
        ++v.errors;
        continue;
      }
      v.check(t);
      if (::testing::Test::HasFatalFailure()) co_return;
    }
  }(), deadline, [&] {
    // A sender that failed will never deliver: stop waiting for it.
    for (auto& s : senders)
      if (!s.running() && s.wait(std::chrono::milliseconds(0)) != 0) return true;
    return false;
  });
  EXPECT_TRUE(ok) << "timed out with " << v.total << " of " << expected;
}

// Under a sanitizer every byte a process copies, fills or checks costs ~10-20x, and these two
// tests push ~3 GB through the ring (104 s each under GCC's TSan; 57 s and 53 s under clang's
// ASan+UBSan, against 7.5 s natively). Their processes are single-threaded and TSan cannot see
// across processes; ASan finds an access outside a record on the first lap that makes it as on
// the thousandth. So a sanitizer build runs the same path with a fifth of the tickets (still
// thousands of laps of the ring, records up to 64 KiB); the release and Windows builds run them all.
#ifdef BATON_TEST_SANITIZED
constexpr std::uint32_t ticket_divisor = 5;
#else
constexpr std::uint32_t ticket_divisor = 1;
#endif

// `senders` processes each send `count` tickets of random sizes up to 64 KiB at once; every
// ticket arrives, in each sender's order, with its size and content.
void bulk_case(const char* tag, std::uint32_t senders, std::uint32_t count) {
  asio::io_context ioc;
  name_guard g(unique_name(tag));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  verifier v;
  std::vector<child> kids;
  for (std::uint32_t s = 1; s <= senders; ++s) {
    v.add_sender(s, 64 * 1024);
    kids.push_back(child::spawn("sender", {g.name, std::to_string(s), std::to_string(count), "65536"}));
  }
  const std::uint64_t expected = std::uint64_t{senders} * count;
  receive_all(ioc, rx, v, expected, 200s, kids);
  for (auto& k : kids) EXPECT_EQ(k.wait(30s), 0);
  EXPECT_EQ(v.total, expected);
  EXPECT_EQ(v.errors, 0u);
  std::printf("[ info ] %llu tickets, %llu payload bytes verified, %llu doorbells\n",
              static_cast<unsigned long long>(v.total), static_cast<unsigned long long>(v.bytes),
              static_cast<unsigned long long>(rx.stats().doorbells_rung));
  baton::test::report_bytes_checked(v.bytes);
}

TEST(channel_process, hundred_thousand_tickets_random_sizes_one_sender) {
  bulk_case("100k", 1, 100000 / ticket_divisor);
}

TEST(channel_process, three_senders_at_once) { bulk_case("3tx", 3, 34000 / ticket_divisor); }

TEST(channel_process, squatted_name_is_refused_and_gets_no_ticket) {
  asio::io_context ioc;
  name_guard g(unique_name("squat"));
  const auto ready = baton::test::temp_path("squat-ready");
  auto squatter = child::spawn("squatter", {g.name, ready});
  ASSERT_TRUE(baton::test::wait_for_file(ready));
  baton::error_code ec;
  auto rx = baton::channel::create(ioc.get_executor(), g.name, {}, ec);
  EXPECT_EQ(ec, errc::name_in_use) << ec.message();
  EXPECT_FALSE(rx.is_open());
  // A sender refuses the squatter's object as well: it is not a private Baton channel.
  baton::channel::open(ioc.get_executor(), g.name, {}, ec);
  EXPECT_TRUE(ec == errc::not_owner || ec == errc::bad_channel_header || ec == errc::channel_not_found)
      << ec.message();
  squatter.kill();
  baton::test::remove_file(ready);
  baton::test::unlink_squatted_ring(g.name);
}

TEST(channel_process, hostile_garbage_is_reported_and_valid_tickets_still_arrive) {
  asio::io_context ioc;
  name_guard g(unique_name("vandal"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  auto tx = baton::channel::open(ioc.get_executor(), g.name);
  std::uint64_t errors = 0, good = 0;
  auto send_batch = [&](std::uint32_t tag) {
    for (std::uint32_t i = 0; i < 100; ++i) {
      baton::ticket t;
      t.kind = baton::ticket_kind::control;
      t.flags = tag;
      t.state.resize(100 + i);
      baton::test::fill_pattern(seed_of(tag, i), t.state.data(), t.state.size());
      tx.async_send(t, [](baton::error_code) {});
    }
  };
  // Drains until `want` good tickets of `tag` arrived; counts errors. Returns false on timeout.
  auto drain = [&](std::uint32_t tag, int want) {
    int got = 0;
    return baton::test::run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
      while (got < want) {
        auto [ec, t] = co_await rx.async_receive(asio::as_tuple(asio::use_awaitable));
        if (ec) {
          ++errors;
          continue;
        }
        if (t.flags == tag) {
          EXPECT_TRUE(baton::test::check_pattern(seed_of(tag, static_cast<std::uint32_t>(t.state.size() - 100)),
                                                 t.state.data(), t.state.size()));
          ++got;
          ++good;
        }
      }
    }(), 30s);
  };
  send_batch(1);
  ASSERT_TRUE(drain(1, 100));
  for (const char* what : {"header", "records", "all"}) {
    send_batch(2);  // in flight while the vandal strikes: may be lost, never crashes anything
    ioc.run_for(50ms);
    ASSERT_EQ(child::spawn("vandal", {g.name, what}).wait(30s), 0);
    // The receiver must notice the garbage (an error), heal, and carry on with new tickets.
    const auto before = errors;
    asio::steady_timer t(ioc);
    bool noticed = baton::test::run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
      while (errors == before) {
        auto [ec, tk] = co_await rx.async_receive(asio::as_tuple(asio::use_awaitable));
        if (ec) ++errors;
      }
    }(), 10s);
    EXPECT_TRUE(noticed) << what;
    ioc.run_for(100ms);
    send_batch(3);
    EXPECT_TRUE(drain(3, 100)) << what;
  }
  EXPECT_GE(errors, 3u);
  EXPECT_GE(rx.stats().corruptions, 3u);
}

TEST(channel_process, sender_killed_between_reserve_and_commit_does_not_wedge_the_ring) {
  asio::io_context ioc;
  name_guard g(unique_name("abandon"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  const auto ready = baton::test::temp_path("abandon-ready");
  auto bad = child::spawn("abandoner", {g.name, ready});
  ASSERT_TRUE(baton::test::wait_for_file(ready));
  std::vector<child> kids;
  verifier v;
  for (std::uint32_t s = 1; s <= 2; ++s) {
    v.add_sender(s, 2048);
    kids.push_back(child::spawn("sender", {g.name, std::to_string(s), "2000", "2048"}));
  }
  baton::test::nap(100ms);
  bad.kill();  // hard kill while its record is reserved
  std::uint64_t skipped = 0, early = 0;
  bool ok = baton::test::run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    while (v.total < 4000) {
      auto [ec, t] = co_await rx.async_receive(asio::as_tuple(asio::use_awaitable));
      if (ec) {
        EXPECT_EQ(ec, errc::producer_died);
        ++skipped;
        continue;
      }
      if ((t.flags >> 24) == 9) {
        ++early;
        continue;
      }
      v.check(t);
    }
  }(), 60s);
  EXPECT_TRUE(ok) << v.total;
  for (auto& k : kids) EXPECT_EQ(k.wait(30s), 0);
  EXPECT_EQ(early, 10u);
  EXPECT_EQ(skipped, 1u);
  EXPECT_EQ(rx.stats().producer_deaths, 1u);
  baton::test::remove_file(ready);
}

TEST(channel_process, transact_reports_target_death) {
  asio::io_context ioc;
  name_guard g(unique_name("dead"));
  const auto ready = baton::test::temp_path("dead-ready");
  auto target = child::spawn("silent_receiver", {g.name, ready});
  ASSERT_TRUE(baton::test::wait_for_file(ready));
  auto tx = baton::channel::open(ioc.get_executor(), g.name);
  baton::error_code result = asio::error::would_block;
  baton::ticket t;
  t.kind = baton::ticket_kind::control;
  tx.async_transact(t, 30s, [&](baton::error_code ec) { result = ec; });
  ioc.run_for(200ms);
  EXPECT_EQ(result, asio::error::would_block);  // still waiting for the verdict
  target.kill();
  auto end = std::chrono::steady_clock::now() + 10s;
  while (result == asio::error::would_block && std::chrono::steady_clock::now() < end) ioc.run_for(20ms);
  EXPECT_EQ(result, errc::target_died);
  baton::error_code ec;
  baton::channel::open(ioc.get_executor(), g.name, {}, ec);
  EXPECT_TRUE(ec == errc::channel_owner_dead || ec == errc::channel_not_found) << ec.message();
  baton::test::remove_file(ready);
}

}  // namespace
