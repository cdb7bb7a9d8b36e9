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
#ifndef _WIN32
#include <sys/socket.h>
#include <unistd.h>
#endif


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

// A Unix-domain socket has the right type but is no TCP (or UDP) socket: refused, and left open
// (it may be one of the receiver's own, as here).
TEST(move_import, unix_domain_sockets_named_as_tcp_or_udp_sockets_are_refused_and_left_open) {
#ifdef _WIN32
  // Windows has AF_UNIX stream sockets (10, 1803 on); one that is not even connected has the
  // type and listening state of a connection.
  asio::io_context ioc;
  const SOCKET u = ::socket(AF_UNIX, SOCK_STREAM, 0);
  if (u == INVALID_SOCKET) GTEST_SKIP() << "this Windows (or Wine) has no AF_UNIX sockets";
  EXPECT_EQ(import_own(ioc, naming(static_cast<std::uint64_t>(u), baton::ticket_kind::connection)),
            errc::not_a_socket);
  int type = 0, len = sizeof type;
  EXPECT_EQ(::getsockopt(u, SOL_SOCKET, SO_TYPE, reinterpret_cast<char*>(&type), &len), 0)
      << "the receiver closed its own socket";
  ::closesocket(u);
#else
  asio::io_context ioc, ioc2;  // (an io_context that ran out of work stays stopped)
  int st[2], dg[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, st), 0);
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg), 0);
  EXPECT_EQ(import_own(ioc, naming(static_cast<std::uint64_t>(st[0]), baton::ticket_kind::connection)),
            errc::not_a_socket);
  EXPECT_EQ(import_own(ioc2, naming(static_cast<std::uint64_t>(dg[0]), baton::ticket_kind::udp_socket)),
            errc::not_a_socket);
  for (int* pair : {st, dg}) {
    char b[2] = {};
    EXPECT_EQ(::send(pair[0], "ok", 2, MSG_DONTWAIT | MSG_NOSIGNAL), 2) << "the receiver closed its own socket";
    EXPECT_EQ(::recv(pair[1], b, 2, MSG_DONTWAIT), 2);
    ::close(pair[0]);
    ::close(pair[1]);
  }
#endif
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
