// The ack table's verdicts cannot land on the wrong move (issue 11, item 9): a receiver that
// checked a slot for its ticket, then lost the processor while the slot was released and claimed
// by another sender, must not resolve the new owner's move.
#include <baton/channel.hpp>

#include "channel_impl.hpp"
#include "test_prelude.hpp"
#include "test_support.hpp"

#include <boost/asio/io_context.hpp>

#include <gtest/gtest.h>

#include <functional>

namespace {

using namespace baton::test::prelude;

baton::ticket control(baton::ticket_id id) {
  baton::ticket t;
  t.kind = baton::ticket_kind::control;
  t.id = id;
  return t;
}

// Starts a transaction of control ticket `id` on `tx` (its verdict lands in `result`) and takes
// the ticket off `rx` into `got`. Returns the receive's error.
baton::error_code transact_and_take(asio::io_context& ioc, baton::channel& tx, baton::channel& rx,
                                    baton::ticket_id id, baton::error_code& result, baton::ticket& got) {
  result = asio::error::would_block;
  tx.async_transact(control(id), 30s, [&result](baton::error_code ec) { result = ec; });
  baton::error_code ec;
  for (int i = 0; i < 1000 && !rx.try_receive(got, ec); ++i) ioc.poll();
  return ec;
}

std::function<void()> interleave;  // what the hook runs, once

struct hook_guard {
  ~hook_guard() { baton::detail::ack_resolve_hook = nullptr; }
};

TEST(channel_ack, a_verdict_cannot_resolve_a_slot_released_and_reclaimed_after_it_was_checked) {
  asio::io_context ioc;
  name_guard g(unique_name("aba"));
  baton::channel_options o;
  o.ack_slots = 1;  // every claim lands on slot 0
  auto rx = baton::channel::create(ioc.get_executor(), g.name, o);
  auto tx = baton::channel::open(ioc.get_executor(), g.name, o);
  auto& ring = baton::detail::channel_access::get(rx).ring;

  // Sender A's move, with its ticket taken off the ring by the receiver.
  const auto a = baton::ticket_id::random();
  baton::error_code a_result;
  baton::ticket got;
  ASSERT_FALSE(transact_and_take(ioc, tx, rx, a, a_result, got));
  ASSERT_EQ(got.id, a);

  // The forced interleaving: after the receiver checked slot 0 for A's ticket, A gives up and
  // releases the slot, and sender B claims it for its own move.
  const auto b = baton::ticket_id::random();
  hook_guard restore;
  std::int64_t b_slot = -2;
  interleave = [&] {
    ring.ack_cancel(got.ack_slot, a);
    ring.ack_release(got.ack_slot);
    b_slot = ring.ack_acquire(b, baton::detail::current_pid());
  };
  baton::detail::ack_resolve_hook = [](std::uint32_t) {
    baton::detail::ack_resolve_hook = nullptr;
    auto f = std::move(interleave);
    f();
  };
  const bool accepted = rx.acknowledge(got, true);
  ASSERT_EQ(b_slot, static_cast<std::int64_t>(got.ack_slot)) << "B must have claimed A's slot";
  EXPECT_FALSE(accepted) << "the receiver accepted A's ticket on a slot that now belongs to B";
  EXPECT_EQ(ring.ack_peek(got.ack_slot, b), baton::detail::ack_state::pending)
      << "B's move was resolved by a verdict meant for A";
  ring.ack_release(got.ack_slot);
}

TEST(channel_ack, a_verdict_lands_when_nothing_intervenes) {
  asio::io_context ioc;
  name_guard g(unique_name("abaok"));
  baton::channel_options o;
  o.ack_slots = 1;
  auto rx = baton::channel::create(ioc.get_executor(), g.name, o);
  auto tx = baton::channel::open(ioc.get_executor(), g.name, o);
  const auto a = baton::ticket_id::random();
  baton::error_code a_result;
  baton::ticket got;
  transact_and_take(ioc, tx, rx, a, a_result, got);
  ASSERT_EQ(got.id, a);
  EXPECT_TRUE(rx.acknowledge(got, true));
  for (int i = 0; i < 1000 && a_result == asio::error::would_block; ++i) ioc.run_for(1ms);
  EXPECT_FALSE(a_result) << a_result.message();
}

}  // namespace
