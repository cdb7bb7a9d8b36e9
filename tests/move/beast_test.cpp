// Boost.Beast on a baton::connection, unchanged: an HTTP/1.1 keep-alive connection is served in
// one process, moved with the bytes of the client's already-sent next request, and served on in
// another.
#include <baton/move.hpp>

#include "async_helpers.hpp"
#include "net_helpers.hpp"
#include "test_prelude.hpp"
#include "test_support.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/detached.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <gtest/gtest.h>

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using namespace baton::test::prelude;


// Answers every request on the connections it receives with "served by <tag>".
asio::awaitable<void> serve_http(baton::connection c, std::string tag, beast::flat_buffer buf = {}) {
  for (;;) {
    http::request<http::string_body> req;
    auto [ec, n] = co_await http::async_read(c, buf, req, asio::as_tuple(asio::use_awaitable));
    if (ec) co_return;
    http::response<http::string_body> res{http::status::ok, req.version()};
    res.body() = "served by " + tag + " for " + std::string(req.target());
    res.keep_alive(true);
    res.prepare_payload();
    co_await http::async_write(c, res, asio::use_awaitable);
  }
}

BATON_TEST_ROLE(http_target) {
  asio::io_context ioc;
  auto rx = baton::channel::create(ioc.get_executor(), args.at(0));
  baton::test::touch(args.at(1));
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    auto a = co_await baton::async_receive(rx, asio::use_awaitable);
    co_await serve_http(std::move(a.conn), "target");
    ioc.stop();
  }, asio::detached);
  ioc.run_for(60s);
  return 0;
}

TEST(move_beast, http_keep_alive_connection_moves_between_requests_with_the_next_request_in_flight) {
  asio::io_context ioc;
  name_guard g(unique_name("http"));
  const auto ready = baton::test::temp_path("hready");
  auto target = child::spawn("http_target", {g.name, ready});
  ASSERT_TRUE(baton::test::wait_for_file(ready));
  tcp::acceptor acc(ioc, {asio::ip::address_v4::loopback(), 0});
  auto client = baton::test::connect_loopback(ioc, acc.local_endpoint().port());
  baton::connection server(acc.accept());
  auto tx = baton::channel::open(ioc.get_executor(), g.name);

  // The client pipelines two requests; the source reads (at least part of) both, answers the
  // first, and moves the connection with the rest as unread bytes.
  auto req = [](const char* target) {
    http::request<http::empty_body> r{http::verb::get, target, 11};
    r.set(http::field::host, "localhost");
    return r;
  };
  http::write(client, req("/one"));
  http::write(client, req("/two"));
  bool ok = baton::test::run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    beast::flat_buffer buf;
    http::request<http::string_body> r;
    // Wait until both requests are in our buffer, so the second one must travel as unread bytes.
    while (buf.size() < 2 * 30) {
      auto n = co_await server.async_read_some(buf.prepare(4096), asio::use_awaitable);
      buf.commit(n);
    }
    co_await http::async_read(server, buf, r, asio::use_awaitable);
    http::response<http::string_body> res{http::status::ok, 11};
    res.body() = "served by source for " + std::string(r.target());
    res.keep_alive(true);
    res.prepare_payload();
    co_await http::async_write(server, res, asio::use_awaitable);
    const auto rest = buf.data();
    EXPECT_GT(rest.size(), 0u);
    server.push_front_unread(rest.data(), rest.size());
    auto [ec, back] = co_await baton::async_send(tx, std::move(server), baton::move_options{},
                                                 asio::as_tuple(asio::use_awaitable));
    EXPECT_FALSE(ec) << ec.message();
  }(), 30s);
  ASSERT_TRUE(ok);
  beast::flat_buffer cbuf;
  for (const char* expect : {"served by source for /one", "served by target for /two"}) {
    http::response<http::string_body> res;
    http::read(client, cbuf, res);
    EXPECT_EQ(res.body(), expect);
  }
  http::write(client, req("/three"));
  http::response<http::string_body> res;
  http::read(client, cbuf, res);
  EXPECT_EQ(res.body(), "served by target for /three");
  client.close();
  EXPECT_EQ(target.wait(30s), 0);
  baton::test::remove_file(ready);
}

}  // namespace
