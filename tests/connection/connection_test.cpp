// baton::connection in one process, on real loopback sockets and a real io_context: unread bytes
// delivered before the socket's own (and carried by a move with the application state), several
// buffers gathered into one write, and a move that times out quiescing the connection (a pending
// read cancelled, the bytes it took kept) and resuming it where it was.
#include <baton/connection.hpp>

#include "async_helpers.hpp"
#include "connection_impl.hpp"
#include "detail/stream.hpp"
#include "move_helpers.hpp"
#include "test_support.hpp"

#include <baton/channel.hpp>
#include <baton/move.hpp>

#include <boost/asio.hpp>
#include <gtest/gtest.h>

#include <array>
#include <string>
#include <thread>

namespace asio = boost::asio;
using namespace std::chrono_literals;
using namespace baton::test;

namespace {

std::vector<std::byte> bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), reinterpret_cast<const std::byte*>(s.data()) + s.size()};
}

// Reads exactly `n` bytes from `c` with a deadline.
std::string read_n(asio::io_context& ioc, baton::connection& c, std::size_t n) {
  std::string got(n, '\0');
  const bool done = run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    co_await asio::async_read(c, asio::buffer(got), asio::use_awaitable);
  }(), 10s);
  EXPECT_TRUE(done) << "reading " << n << " bytes timed out";
  return got;
}

}  // namespace

TEST(connection, unread_bytes_come_before_the_sockets_own) {
  asio::io_context ioc;
  auto [client, server] = make_loopback_pair(ioc);
  baton::connection c(std::move(server), bytes("second;"), bytes("st"));
  EXPECT_EQ(c.unread_size(), 7u);
  c.push_front_unread("first;", 6);
  EXPECT_EQ(c.unread_size(), 13u);
  asio::write(client, asio::buffer(std::string("third;")));
  EXPECT_EQ(read_n(ioc, c, 19), "first;second;third;");
  EXPECT_EQ(c.unread_size(), 0u);
  EXPECT_EQ(c.state(), bytes("st"));
}

TEST(connection, several_small_buffers_are_gathered_into_one_write) {
  asio::io_context ioc;
  auto [client, server] = make_loopback_pair(ioc);
  baton::connection c(std::move(server));
  const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", body = "body", tail = "!";
  const std::array<asio::const_buffer, 4> parts{asio::buffer(head), asio::const_buffer(), asio::buffer(body),
                                                asio::buffer(tail)};
  std::size_t written = 0;
  ASSERT_TRUE(run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    written = co_await c.async_write_some(parts, asio::use_awaitable);
  }(), 10s));
  EXPECT_EQ(written, head.size() + body.size() + tail.size()) << "one write_some sent every buffer";
  std::string got(written, '\0');
  baton::error_code ec;
  read_all(client, asio::buffer(got), ec);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_EQ(got, head + body + tail);
}

TEST(connection, unread_bytes_and_state_travel_with_a_move) {
  channel_pair p("conn");
  auto& [ioc, guard, rx, tx] = p;
  auto [client, server] = make_loopback_pair(ioc);
  baton::connection c(std::move(server), bytes("peeked;"), bytes("state"));
  asio::write(client, asio::buffer(std::string("queued;")));
  auto r = move_to_self(ioc, tx, rx, std::move(c), {});
  ASSERT_FALSE(r.sent) << r.sent.message();
  ASSERT_FALSE(r.received) << r.received.message();
  ASSERT_EQ(r.arrived.kind, baton::ticket_kind::connection);
  auto& moved = r.arrived.conn;
  ASSERT_TRUE(moved.is_open());
  EXPECT_EQ(moved.state(), bytes("state"));
  EXPECT_EQ(read_n(ioc, moved, 14), "peeked;queued;");
  // The moved connection is the client's: a round trip through it.
  ASSERT_TRUE(run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    co_await asio::async_write(moved, asio::buffer(std::string("reply")), asio::use_awaitable);
  }(), 10s));
  std::string got(5, '\0');
  baton::error_code ec;
  read_all(client, asio::buffer(got), ec);
  EXPECT_EQ(got, "reply");
}

// Nobody receives on the channel: the move times out and rolls back. Quiescing cancelled the
// pending read (operation_aborted) and let the write started before the move finish whole; the
// connection resumes with every byte the client sent, those that arrived before the move first
// (kept by the cancelled read if it had taken them, else still in the kernel).
TEST(connection, a_move_that_times_out_quiesces_and_resumes_the_connection) {
  channel_pair p("connq");
  auto& [ioc, guard, rx, tx] = p;
  auto [client, server] = make_loopback_pair(ioc);
  baton::connection c(std::move(server), {}, bytes("s"));
  std::array<char, 64> buf{};
  baton::error_code read_ec;
  bool read_done = false;
  c.async_read_some(asio::buffer(buf), [&](baton::error_code ec, std::size_t) {
    read_ec = ec;
    read_done = true;
  });
  const std::string out(256 * 1024, 'w');
  baton::error_code write_ec = asio::error::would_block;
  std::size_t wrote = 0;
  asio::async_write(c, asio::buffer(out), [&](baton::error_code ec, std::size_t n) {
    write_ec = ec;
    wrote = n;
  });
  ioc.poll();
  asio::write(client, asio::buffer(std::string("early;")));
  // The client drains the write while the move runs.
  std::string drained(out.size(), '\0');
  std::thread reader([&client = client, &drained] {  // clang 14 lambdas cannot capture a binding
    baton::error_code ec;
    read_all(client, asio::buffer(drained), ec);
  });
  baton::move_options o;
  o.timeout = 300ms;
  auto r = move_to_self(ioc, tx, rx, std::move(c), o, false);
  reader.join();
  EXPECT_EQ(r.sent, baton::errc::move_timeout) << r.sent.message();
  EXPECT_TRUE(read_done);
  EXPECT_EQ(read_ec, asio::error::operation_aborted);
  EXPECT_FALSE(write_ec) << write_ec.message();
  EXPECT_EQ(wrote, out.size());
  EXPECT_EQ(drained, out);
  auto& back = r.back;
  ASSERT_TRUE(back.is_open());
  EXPECT_EQ(back.state(), bytes("s"));
  asio::write(client, asio::buffer(std::string("after;")));
  EXPECT_EQ(read_n(ioc, back, 12), "early;after;");
}

// A connection taken from the backlog outside the reactor (what the dispatcher does on Linux):
// it tells its addresses and moves (unread bytes and all) without joining the reactor, joins it
// at its first I/O, and its close ends the client's connection.
TEST(connection, a_connection_accepted_outside_the_reactor_moves_serves_and_closes) {
  if (!baton::detail::can_accept_detached())
    GTEST_SKIP() << "Windows: an accepted socket is bound to the completion port (AcceptEx); the "
                    "dispatcher accepts through Asio there";
  channel_pair p("detached");
  auto& [ioc, guard, rx, tx] = p;
  using asio::ip::tcp;
  tcp::acceptor acc(ioc, {asio::ip::address_v4::loopback(), 0});
  tcp::socket c1(ioc), c2(ioc);
  c1.connect(acc.local_endpoint());
  c2.connect(acc.local_endpoint());
  baton::error_code ec;
  const auto h1 = baton::detail::accept_detached(acc, ec);
  ASSERT_FALSE(ec) << ec.message();
  const auto h2 = baton::detail::accept_detached(acc, ec);
  ASSERT_FALSE(ec) << ec.message();
  baton::detail::accept_detached(acc, ec);
  EXPECT_EQ(ec, asio::error::would_block) << "an empty backlog does not wait";
  auto wrap = [ex = ioc.get_executor()](std::uintptr_t h) {  // (clang 14 captures no structured binding)
    return baton::detail::connection_access::wrap(std::make_shared<baton::detail::connection_impl>(
        ex, baton::detail::make_detached_stream(ex, h)));
  };
  auto a = wrap(h1), b = wrap(h2);
  EXPECT_EQ(a.remote_endpoint(ec), c1.local_endpoint());
  EXPECT_EQ(a.local_endpoint(ec), acc.local_endpoint());
  EXPECT_EQ(b.remote_endpoint(ec), c2.local_endpoint());
  // Moved before any I/O: the bytes the client sent are still in the kernel and arrive there.
  asio::write(c1, asio::buffer(std::string("queued;")));
  auto r = move_to_self(ioc, tx, rx, std::move(a), {});
  ASSERT_FALSE(r.sent) << r.sent.message();
  ASSERT_FALSE(r.received) << r.received.message();
  EXPECT_EQ(read_n(ioc, r.arrived.conn, 7), "queued;");
  // First I/O: a round trip.
  asio::write(c2, asio::buffer(std::string("ping")));
  EXPECT_EQ(read_n(ioc, b, 4), "ping");
  ASSERT_TRUE(run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    co_await asio::async_write(b, asio::buffer(std::string("pong")), asio::use_awaitable);
  }(), 10s));
  std::string got(4, '\0');
  read_all(c2, asio::buffer(got), ec);
  EXPECT_EQ(got, "pong");
  // Closed: the client reads the end; the moved one is still the client's.
  b.close();
  char c;
  c2.read_some(asio::buffer(&c, 1), ec);
  EXPECT_EQ(ec, asio::error::eof);
  auto& moved = r.arrived.conn;
  ASSERT_TRUE(run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    co_await asio::async_write(moved, asio::buffer(std::string("moved")), asio::use_awaitable);
  }(), 10s));
  std::string m(5, '\0');
  read_all(c1, asio::buffer(m), ec);
  EXPECT_EQ(m, "moved");
}
