// A ticket that names a handle number (the inherit method, and DuplicateHandle pushes on Windows)
// can name one of the receiver's own handles. A ticket whose handle is not the promised kind of
// socket must fail without touching that handle (issue 11, items 10 and 15b).
#include <baton/move.hpp>

#include "async_helpers.hpp"
#include "net_helpers.hpp"
#include "test_prelude.hpp"
#include "test_support.hpp"

#include <gtest/gtest.h>

#include <cstring>


namespace {

using namespace baton::test::prelude;

baton::ticket naming(std::uint64_t handle, baton::ticket_kind kind) {
  baton::ticket t;
  t.id = baton::ticket_id::random();
  t.kind = kind;
  t.method = baton::transfer_method::inherit;
  t.payload.resize(8);
  std::memcpy(t.payload.data(), &handle, 8);
  return t;
}

// Sends `t` to our own channel and returns what the receiving side made of it.
baton::error_code import_own(asio::io_context& ioc, baton::ticket t) {
  name_guard g(unique_name("imp"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  auto tx = baton::channel::open(ioc.get_executor(), g.name);
  baton::error_code sent = asio::error::would_block, got = asio::error::would_block;
  tx.async_transact(std::move(t), 10s, [&](baton::error_code ec) { sent = ec; });
  baton::async_receive(rx, [&](baton::error_code ec, baton::arrival) { got = ec; });
  for (int i = 0; i < 1000 && (got == asio::error::would_block || sent == asio::error::would_block); ++i)
    ioc.run_for(5ms);
  EXPECT_EQ(sent, errc::move_rejected);
  return got;
}

TEST(move_import, a_listening_socket_named_as_a_connection_is_refused_and_left_open) {
  asio::io_context ioc;
  tcp::acceptor acc(ioc, {asio::ip::address_v4::loopback(), 0});
  const auto h = static_cast<std::uint64_t>(acc.native_handle());
  EXPECT_EQ(import_own(ioc, naming(h, baton::ticket_kind::connection)), errc::not_a_socket);
  // The listener is still ours and still accepts.
  auto c = baton::test::connect_loopback(ioc, acc.local_endpoint().port());
  baton::error_code ec;
  auto s = acc.accept(ec);
  EXPECT_FALSE(ec) << "the receiver closed its own listener: " << ec.message();
}

TEST(move_import, a_connected_socket_named_as_a_listener_is_refused_and_left_open) {
  asio::io_context ioc;
  tcp::acceptor acc(ioc, {asio::ip::address_v4::loopback(), 0});
  auto c = baton::test::connect_loopback(ioc, acc.local_endpoint().port());
  auto s = acc.accept();
  EXPECT_EQ(import_own(ioc, naming(static_cast<std::uint64_t>(s.native_handle()), baton::ticket_kind::listener)),
            errc::not_a_socket);
  // The connection is still ours and still carries bytes.
  baton::error_code ec;
  asio::write(s, asio::buffer("ok", 2), ec);
  EXPECT_FALSE(ec) << "the receiver closed its own connection: " << ec.message();
  char b[2];
  asio::read(c, asio::buffer(b), ec);
  EXPECT_FALSE(ec);
}

TEST(move_import, a_descriptor_that_is_not_a_socket_keeps_its_flags) {
  if (baton::test::host_is_windows())
    GTEST_SKIP() << "descriptor flags are POSIX's (Windows' counterpart is the handle test above)";
  asio::io_context ioc;
  const auto [in, out] = baton::test::open_plain_pipe();  // no FD_CLOEXEC
  EXPECT_EQ(import_own(ioc, naming(in, baton::ticket_kind::connection)), errc::not_a_socket);
  EXPECT_EQ(baton::test::descriptor_flags(in), 0) << "the import changed the flags of a descriptor it does not own";
  baton::test::close_descriptor(in);
  baton::test::close_descriptor(out);
}

}  // namespace
