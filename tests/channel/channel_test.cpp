#include <baton/channel.hpp>

#include "async_helpers.hpp"
#include "channel_impl.hpp"
#include "detail/ticket_codec.hpp"
#include "test_prelude.hpp"
#include "test_support.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_future.hpp>

#include <gtest/gtest.h>

#include <optional>
#include <tuple>

namespace {

using namespace baton::test::prelude;
using baton::test::run_with_deadline;
using baton::test::unique_name;
using namespace std::chrono_literals;

constexpr auto tuple_aw = asio::as_tuple(asio::use_awaitable);

baton::ticket control_ticket(std::uint64_t seq, std::size_t n) {
  baton::ticket t;
  t.kind = baton::ticket_kind::control;
  t.id = baton::ticket_id::random();
  t.state.resize(n);
  baton::test::fill_pattern(seq, t.state.data(), n);
  return t;
}

TEST(channel, bad_names_are_refused) {
  asio::io_context ioc;
  for (std::string bad : std::vector<std::string>{"", ".hidden", "has space", "slash/x", "back\\slash", "colon:x", std::string(65, 'a'),
                          std::string("nul\0x", 5), "\xc3\xa9"}) {
    baton::error_code ec;
    baton::channel::create(ioc.get_executor(), bad, {}, ec);
    EXPECT_EQ(ec, errc::invalid_name) << bad;
    baton::channel::open(ioc.get_executor(), bad, {}, ec);
    EXPECT_EQ(ec, errc::invalid_name) << bad;
  }
  EXPECT_TRUE(baton::channel::valid_name(std::string(64, 'a')));
  EXPECT_TRUE(baton::channel::valid_name("svc-1.gen_2"));
  EXPECT_THROW(baton::channel::create(ioc.get_executor(), "a b"), baton::system_error);
}

TEST(channel, create_twice_fails_and_open_missing_fails) {
  asio::io_context ioc;
  name_guard g(unique_name("dup"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  baton::error_code ec;
  baton::channel::create(ioc.get_executor(), g.name, {}, ec);
  EXPECT_EQ(ec, errc::name_in_use);
  baton::channel::open(ioc.get_executor(), unique_name("missing"), {}, ec);
  EXPECT_EQ(ec, errc::channel_not_found);
  auto tx = baton::channel::open(ioc.get_executor(), g.name, {}, ec);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_EQ(tx.owner_pid(), rx.owner_pid());
  EXPECT_TRUE(rx.is_receiver());
  EXPECT_FALSE(tx.is_receiver());
}

TEST(channel, names_are_released_when_the_receiver_closes) {
  asio::io_context ioc;
  name_guard g(unique_name("reuse"));
  { auto rx = baton::channel::create(ioc.get_executor(), g.name); }
  baton::error_code ec;
  auto rx2 = baton::channel::create(ioc.get_executor(), g.name, {}, ec);
  // (Windows names vanish with their last handle; nothing else holds them here.)
  EXPECT_FALSE(ec) << ec.message();
}

TEST(channel, send_receive_in_order_with_coroutines) {
  asio::io_context ioc;
  name_guard g(unique_name("order"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  auto tx = baton::channel::open(ioc.get_executor(), g.name);
  const int n = 2000;
  bool ok = run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    for (int i = 0; i < n; ++i) co_await tx.async_send(control_ticket(i, static_cast<std::size_t>(i % 700)), asio::use_awaitable);
    for (int i = 0; i < n; ++i) {
      auto t = co_await rx.async_receive(asio::use_awaitable);
      EXPECT_EQ(t.state.size(), static_cast<std::size_t>(i % 700));
      EXPECT_TRUE(baton::test::check_pattern(i, t.state.data(), t.state.size())) << i;
      EXPECT_EQ(t.target_pid, rx.owner_pid());
    }
  }());
  EXPECT_TRUE(ok);
  EXPECT_EQ(rx.stats().tickets_received, static_cast<std::uint64_t>(n));
}

// A batch record (several tickets in one record, as a burst of moves sends them) is received a
// ticket at a time, in order, through async_receive and try_receive alike. A damaged ticket in it
// is reported as that ticket's error and the others arrive; a batch whose table is damaged is
// one error, and what follows it arrives.
TEST(channel, batch_records_deliver_each_ticket_and_damage_stays_with_its_ticket) {
  asio::io_context ioc;
  name_guard g(unique_name("batchrec"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  auto tx = baton::channel::open(ioc.get_executor(), g.name);
  auto& txi = baton::detail::channel_access::get(tx);
  auto push_batch = [&](const std::vector<baton::ticket>& ts, std::size_t damage_at, std::uint32_t count) {
    std::size_t n = baton::detail::batch_header_bytes;
    for (const auto& t : ts) n += baton::detail::batch_item_bytes(baton::encoded_size(t));
    baton::error_code ec;
    const bool wake = txi.ring.push(n, [&](std::span<std::byte> out) {
      baton::detail::encode_batch_header(out.data(), count);
      std::byte* p = out.data() + baton::detail::batch_header_bytes;
      for (const auto& t : ts) p = baton::detail::encode_batch_item(p, t);
      if (damage_at != 0) out[damage_at] ^= std::byte{0x40};
    }, ec);
    ASSERT_FALSE(ec) << ec.message();
    if (wake) txi.bell.ring();
  };
  std::vector<baton::ticket> ts;
  for (int i = 0; i < 6; ++i) ts.push_back(control_ticket(static_cast<std::uint64_t>(i), 100 + static_cast<std::size_t>(i)));
  // [0, 1 (a byte of its state flipped), 2], then a table that claims one ticket more than it
  // holds, then [3, 4] and 5 alone.
  const std::size_t into_second = baton::detail::batch_header_bytes +
                                  baton::detail::batch_item_bytes(baton::encoded_size(ts[0])) +
                                  baton::detail::batch_item_header_bytes + baton::ticket_header_bytes + 10;
  push_batch({ts[0], ts[1], ts[2]}, into_second, 3);
  push_batch({ts[3], ts[4]}, 0, 3);
  push_batch({ts[3], ts[4]}, 0, 2);
  bool sent = false;
  tx.async_send(ts[5], [&](baton::error_code e) { sent = !e; });
  std::vector<std::string> seen;
  const bool ok = run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    for (int i = 0; i < 5; ++i) {
      auto [ec, t] = co_await rx.async_receive(tuple_aw);
      seen.push_back(ec ? ec.message() : "state " + std::to_string(t.state.size()));
    }
  }(), 10s);
  ASSERT_TRUE(ok);
  // The rest through try_receive: the batch [3, 4] is split there too.
  for (int i = 0; i < 50 && seen.size() < 7; ++i) {
    baton::ticket t;
    baton::error_code ec;
    if (rx.try_receive(t, ec)) seen.push_back(ec ? ec.message() : "state " + std::to_string(t.state.size()));
    else ioc.run_for(10ms);
  }
  const std::vector<std::string> want{"state 100",
                                      baton::make_error_code(errc::ticket_bad_checksum).message(),
                                      "state 102",
                                      baton::make_error_code(errc::ticket_bad_length).message(),
                                      "state 103",
                                      "state 104",
                                      "state 105"};
  EXPECT_EQ(seen, want);
  EXPECT_TRUE(sent);
  const auto st = rx.stats();
  EXPECT_EQ(st.batches_received, 2u);
  EXPECT_EQ(st.bad_tickets, 2u);
  EXPECT_EQ(st.tickets_received, 5u);
}

// async_send_many: 2,000 tickets of mixed sizes in one call travel in few records and arrive
// whole and in order, through async_receive and try_receive alike; a ring too small for all of
// them under full_policy::wait fills, drains and fills again until every one is in.
TEST(channel, send_many_puts_tickets_in_few_records_in_order_and_waits_for_room) {
  asio::io_context ioc;
  name_guard g(unique_name("many"));
  baton::channel_options o;
  o.ring_bytes = 64 * 1024;  // far less than the 2,000 tickets need
  o.limits.max_ticket_bytes = 16 * 1024;  // (a larger maximum would grow the ring to hold two)
  auto rx = baton::channel::create(ioc.get_executor(), g.name, o);
  auto tx = baton::channel::open(ioc.get_executor(), g.name, o);
  constexpr int n = 2000;
  std::vector<baton::ticket> ts;
  for (int i = 0; i < n; ++i) ts.push_back(control_ticket(static_cast<std::uint64_t>(i), 20 + static_cast<std::size_t>(i % 300)));
  std::optional<std::pair<baton::error_code, std::size_t>> done;
  tx.async_send_many(std::move(ts), [&](baton::error_code ec, std::size_t sent) { done.emplace(ec, sent); });
  EXPECT_FALSE(done) << "completed inside async_send_many";
  int got = 0;
  std::string first_bad;
  const bool ok = run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    while (got < n) {
      baton::ticket t;
      baton::error_code ec;
      if (got % 2 == 0 || !rx.try_receive(t, ec)) std::tie(ec, t) = co_await rx.async_receive(tuple_aw);
      const auto size = 20 + static_cast<std::size_t>(got % 300);
      if ((ec || t.state.size() != size || !baton::test::check_pattern(got, t.state.data(), size)) && first_bad.empty())
        first_bad = "ticket " + std::to_string(got) + ": " + (ec ? ec.message() : "wrong state");
      ++got;
    }
  }(), 30s);
  ASSERT_TRUE(ok) << got << " of " << n;
  EXPECT_TRUE(first_bad.empty()) << first_bad;
  for (int i = 0; i < 100 && !done; ++i) ioc.run_for(10ms);
  ASSERT_TRUE(done);
  EXPECT_FALSE(done->first) << done->first.message();
  EXPECT_EQ(done->second, static_cast<std::size_t>(n));
  const auto st = tx.stats();
  EXPECT_EQ(st.tickets_sent, static_cast<std::uint64_t>(n));
  EXPECT_GE(st.batches_sent, 1u);
  EXPECT_LT(st.batches_sent, static_cast<std::uint64_t>(n) / 4) << "tickets did not share records";
  std::printf("[ info ] %llu tickets in %llu batch records, %llu waits for room\n", static_cast<unsigned long long>(st.tickets_sent), static_cast<unsigned long long>(st.batches_sent), static_cast<unsigned long long>(st.full_waits));
  EXPECT_GT(st.full_waits, 0u) << "the ring never filled: the test did not test waiting";
  baton::ticket extra;
  baton::error_code ec;
  EXPECT_FALSE(rx.try_receive(extra, ec));  // nothing extra
}

// A ticket that cannot go stops the call there: those before it are in the ring, it and those
// after it are not, and `sent` says how many went.
TEST(channel, send_many_stops_at_a_ticket_too_large_and_says_how_many_went) {
  asio::io_context ioc;
  name_guard g(unique_name("manybad"));
  baton::channel_options o;
  o.limits.max_ticket_bytes = 1024;
  auto rx = baton::channel::create(ioc.get_executor(), g.name, o);
  auto tx = baton::channel::open(ioc.get_executor(), g.name, o);
  std::vector<baton::ticket> ts;
  for (int i = 0; i < 10; ++i) ts.push_back(control_ticket(static_cast<std::uint64_t>(i), i == 7 ? 4000 : 100));
  std::optional<std::pair<baton::error_code, std::size_t>> done;
  tx.async_send_many(std::move(ts), [&](baton::error_code ec, std::size_t sent) { done.emplace(ec, sent); });
  for (int i = 0; i < 100 && !done; ++i) ioc.run_for(10ms);
  ASSERT_TRUE(done);
  EXPECT_EQ(done->first, errc::record_too_large) << done->first.message();
  EXPECT_EQ(done->second, 7u);
  int got = 0;
  baton::ticket t;
  baton::error_code ec;
  while (rx.try_receive(t, ec)) {
    EXPECT_FALSE(ec) << ec.message();
    EXPECT_TRUE(baton::test::check_pattern(got, t.state.data(), t.state.size())) << got;
    ++got;
  }
  EXPECT_EQ(got, 7);
}

TEST(channel, receiver_wakes_on_doorbell_and_rings_coalesce) {
  asio::io_context ioc;
  name_guard g(unique_name("bell"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  auto tx = baton::channel::open(ioc.get_executor(), g.name);
  int got = 0;
  bool ok = run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    // The receiver waits first; each send then finds it asleep or draining.
    asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
      for (int i = 0; i < 500; ++i) {
        auto t = co_await rx.async_receive(asio::use_awaitable);
        EXPECT_TRUE(baton::test::check_pattern(i, t.state.data(), t.state.size()));
        ++got;
      }
    }, asio::detached);
    asio::steady_timer timer(ioc);
    for (int i = 0; i < 500; ++i) {
      co_await tx.async_send(control_ticket(i, 64), asio::use_awaitable);
      if (i % 100 == 0) {
        timer.expires_after(5ms);
        co_await timer.async_wait(asio::use_awaitable);
      }
    }
    while (got < 500) {
      timer.expires_after(1ms);
      co_await timer.async_wait(asio::use_awaitable);
    }
  }());
  EXPECT_TRUE(ok);
  EXPECT_EQ(got, 500);
  // Coalescing: far fewer doorbells than tickets while the receiver drains.
  EXPECT_LT(rx.stats().doorbells_rung, 500u);
  EXPECT_GE(rx.stats().doorbells_rung, 1u);
}

TEST(channel, full_ring_fails_with_channel_full_when_asked_and_loses_nothing) {
  asio::io_context ioc;
  name_guard g(unique_name("full"));
  baton::channel_options o;
  o.ring_bytes = 4096;
  o.limits.max_ticket_bytes = 1024;
  o.on_full = baton::full_policy::fail;
  auto rx = baton::channel::create(ioc.get_executor(), g.name, o);
  auto tx = baton::channel::open(ioc.get_executor(), g.name, o);
  int accepted = 0;
  baton::error_code last;
  bool ok = run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    for (int i = 0; i < 100; ++i) {
      auto [ec] = co_await tx.async_send(control_ticket(i, 200), tuple_aw);
      if (ec) {
        last = ec;
        break;
      }
      ++accepted;
    }
    EXPECT_EQ(last, errc::channel_full);
    for (int i = 0; i < accepted; ++i) {
      auto t = co_await rx.async_receive(asio::use_awaitable);
      EXPECT_TRUE(baton::test::check_pattern(i, t.state.data(), t.state.size()));
    }
    baton::ticket t;
    baton::error_code ec;
    EXPECT_FALSE(rx.try_receive(t, ec));  // nothing extra, nothing lost
    // Room again after draining.
    auto [ec2] = co_await tx.async_send(control_ticket(999, 200), tuple_aw);
    EXPECT_FALSE(ec2);
  }());
  EXPECT_TRUE(ok);
  EXPECT_GT(accepted, 5);
  EXPECT_LT(accepted, 100);
}

TEST(channel, full_ring_waits_for_room_when_asked) {
  asio::io_context ioc;
  name_guard g(unique_name("wait"));
  baton::channel_options o;
  o.ring_bytes = 4096;
  o.limits.max_ticket_bytes = 1024;
  auto rx = baton::channel::create(ioc.get_executor(), g.name, o);
  auto tx = baton::channel::open(ioc.get_executor(), g.name, o);
  const int n = 3000;
  int got = 0;
  bool ok = run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
      asio::steady_timer slow(ioc);
      for (int i = 0; i < n; ++i) {
        auto t = co_await rx.async_receive(asio::use_awaitable);
        EXPECT_TRUE(baton::test::check_pattern(i, t.state.data(), t.state.size())) << i;
        ++got;
        if (i % 500 == 0) {  // a slow receiver: the ring fills
          slow.expires_after(20ms);
          co_await slow.async_wait(asio::use_awaitable);
        }
      }
    }, asio::detached);
    for (int i = 0; i < n; ++i) co_await tx.async_send(control_ticket(i, 300), asio::use_awaitable);
    asio::steady_timer t(ioc);
    while (got < n) {
      t.expires_after(1ms);
      co_await t.async_wait(asio::use_awaitable);
    }
  }());
  EXPECT_TRUE(ok);
  EXPECT_EQ(got, n);
  EXPECT_GT(tx.stats().full_waits, 0u);
}

TEST(channel, full_ring_wait_is_bounded_by_send_timeout) {
  asio::io_context ioc;
  name_guard g(unique_name("wto"));
  baton::channel_options o;
  o.ring_bytes = 4096;
  o.limits.max_ticket_bytes = 1024;
  o.send_timeout = 100ms;
  auto rx = baton::channel::create(ioc.get_executor(), g.name, o);
  auto tx = baton::channel::open(ioc.get_executor(), g.name, o);
  baton::error_code last;
  int sent = 0;
  run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    for (int i = 0; i < 100 && !last; ++i) {
      auto [ec] = co_await tx.async_send(control_ticket(i, 200), tuple_aw);
      last = ec;
      if (!ec) ++sent;
    }
  }());
  EXPECT_EQ(last, errc::channel_full);
  int drained = 0;
  baton::ticket t;
  baton::error_code ec;
  while (rx.try_receive(t, ec)) {
    ASSERT_FALSE(ec);
    ++drained;
  }
  EXPECT_EQ(drained, sent);
}

TEST(channel, oversized_ticket_is_refused_before_it_reaches_the_ring) {
  asio::io_context ioc;
  name_guard g(unique_name("big"));
  baton::channel_options o;
  o.limits.max_ticket_bytes = 2048;
  auto rx = baton::channel::create(ioc.get_executor(), g.name, o);
  auto tx = baton::channel::open(ioc.get_executor(), g.name);
  auto f = tx.async_send(control_ticket(1, 4096), asio::use_future);
  ioc.run_for(1s);
  try {
    f.get();
    FAIL() << "expected record_too_large";
  } catch (const baton::system_error& e) {
    EXPECT_EQ(e.code(), errc::record_too_large);
  }
}

TEST(channel, transact_accept_reject_timeout) {
  asio::io_context ioc;
  name_guard g(unique_name("ack"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  auto tx = baton::channel::open(ioc.get_executor(), g.name);
  bool ok = run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
      auto a = co_await rx.async_receive(asio::use_awaitable);
      EXPECT_TRUE(rx.acknowledge(a, true));
      auto b = co_await rx.async_receive(asio::use_awaitable);
      EXPECT_TRUE(rx.acknowledge(b, false));
      auto c = co_await rx.async_receive(asio::use_awaitable);
      // Too late: the sender timed out and voided the ticket; the receiver must not keep it.
      asio::steady_timer late(ioc);
      late.expires_after(300ms);
      co_await late.async_wait(asio::use_awaitable);
      EXPECT_FALSE(rx.acknowledge(c, true));
    }, asio::detached);
    auto [e1] = co_await tx.async_transact(control_ticket(1, 10), 5s, tuple_aw);
    EXPECT_FALSE(e1) << e1.message();
    auto [e2] = co_await tx.async_transact(control_ticket(2, 10), 5s, tuple_aw);
    EXPECT_EQ(e2, errc::move_rejected);
    auto [e3] = co_await tx.async_transact(control_ticket(3, 10), 100ms, tuple_aw);
    EXPECT_EQ(e3, errc::move_timeout);
    asio::steady_timer t(ioc);
    t.expires_after(400ms);
    co_await t.async_wait(asio::use_awaitable);
  }());
  EXPECT_TRUE(ok);
}

TEST(channel, second_concurrent_receive_is_refused) {
  asio::io_context ioc;
  name_guard g(unique_name("rr"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  baton::error_code first = asio::error::would_block, second = asio::error::would_block;
  rx.async_receive([&](baton::error_code ec, baton::ticket) { first = ec; });
  rx.async_receive([&](baton::error_code ec, baton::ticket) { second = ec; });
  ioc.run_for(100ms);
  EXPECT_EQ(second, errc::operation_in_progress);
  rx.close();
  ioc.restart();
  ioc.run_for(200ms);
  EXPECT_EQ(first, asio::error::operation_aborted);
}

TEST(channel_security, windows_objects_grant_only_the_user_and_system) {
  if (!baton::test::host_is_windows()) GTEST_SKIP() << "Linux's side is mode 0600 and the foreign-uid test";
  asio::io_context ioc;
  name_guard g(unique_name("dacl"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  for (const auto& o : baton::test::channel_object_acls(g.name)) {
    ASSERT_TRUE(o.opened) << o.object << ": " << o.open_error;
    ASSERT_TRUE(o.read) << o.object;
    EXPECT_TRUE(o.owner_is_me) << o.object;
    ASSERT_TRUE(o.has_dacl) << "a null DACL grants everyone";
    EXPECT_GE(o.aces.size(), 1u);
    for (const auto& ace : o.aces) {
      ASSERT_TRUE(ace.allowed) << o.object << ": only ACCESS_ALLOWED entries";
      const std::string& sid = ace.sid;
      // Only this user and SYSTEM: never Everyone, Users, Authenticated Users or Anonymous.
      EXPECT_TRUE(ace.is_me || sid == "S-1-5-18") << sid;
      EXPECT_NE(sid, "S-1-1-0");
      EXPECT_NE(sid, "S-1-5-32-545");
      EXPECT_NE(sid, "S-1-5-11");
      EXPECT_NE(sid, "S-1-5-7");
    }
  }
  // Local\ unless Global\ is asked for.
  EXPECT_FALSE(baton::test::channel_ring_is_global(g.name));
}

TEST(channel_security, linux_objects_are_private_to_the_user) {
  if (baton::test::host_is_windows()) GTEST_SKIP() << "Windows' side is the DACL test";
  asio::io_context ioc;
  name_guard g(unique_name("mode"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  for (const auto& m : baton::test::channel_object_modes(g.name)) {
    ASSERT_TRUE(m.found) << m.suffix;
    EXPECT_EQ(m.mode, 0600u) << m.suffix;
    EXPECT_TRUE(m.owner_is_me) << m.suffix;
  }
}

}  // namespace
