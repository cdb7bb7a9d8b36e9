// The example from README.md, compiled and run as a test so that it cannot rot. Dispatcher and
// worker share one process here; in real use they are two (the channel works the same).
#include "cli.hpp"

#include <baton/move.hpp>

#include <boost/asio.hpp>

#include <chrono>
#include <cstdio>
#include <thread>
#include <string>

namespace asio = boost::asio;
using asio::ip::tcp;

// --- README example begins ---
asio::awaitable<void> serve(baton::connection c) {  // echo; bytes read before the move come first
  char buf[4096];
  for (;;) {
    auto [ec, n] = co_await c.async_read_some(asio::buffer(buf), asio::as_tuple(asio::use_awaitable));
    if (ec) co_return;
    co_await asio::async_write(c, asio::buffer(buf, n), asio::use_awaitable);
  }
}

asio::awaitable<void> worker(baton::channel& rx) {  // owns a channel, serves what arrives
  for (;;) {
    auto [ec, a] = co_await baton::async_receive(rx, asio::as_tuple(asio::use_awaitable));
    if (!ec && a.kind == baton::ticket_kind::connection)  // a bad ticket is an error: take the next
      asio::co_spawn(rx.get_executor(), serve(std::move(a.conn)), asio::detached);
  }
}

asio::awaitable<void> dispatch(tcp::acceptor& acc, baton::channel& to_worker) {  // accepts, hands off
  for (;;) {
    baton::connection c(co_await acc.async_accept(asio::use_awaitable));
    auto [ec, back] = co_await baton::async_send(to_worker, std::move(c), baton::move_options{},
                                                 asio::as_tuple(asio::use_awaitable));
    if (ec) asio::co_spawn(acc.get_executor(), serve(std::move(back)), asio::detached);  // kept
  }
}
// --- README example ends ---

int main(int argc, char** argv) {
  baton_cli::parser cli("readme-example", "",
                        "Runs README.md's example: a dispatcher hands a connection to a worker through a channel and a\n"
                        "client checks the echo (both roles in this one process).");
  cli.epilog("exit status: 0 when the echo came back through the moved connection, 1 otherwise.");
  if (auto rc = cli.parse(argc, argv)) return *rc;
  asio::io_context ioc;
  const std::string name = "readme-" + std::to_string(baton::ticket_id::random().bytes[0]) + "-" +
                           std::to_string(reinterpret_cast<std::uintptr_t>(&ioc) & 0xFFFF);
  auto rx = baton::channel::create(ioc.get_executor(), name);     // in the worker process
  auto to_worker = baton::channel::open(ioc.get_executor(), name);  // in the dispatcher process
  tcp::acceptor acc(ioc, {asio::ip::address_v4::loopback(), 0});
  asio::co_spawn(ioc, worker(rx), asio::detached);
  asio::co_spawn(ioc, dispatch(acc, to_worker), asio::detached);
  std::string got(5, '\0');
  std::thread client([&] {
    asio::io_context cio;
    tcp::socket s(cio);
    s.connect(acc.local_endpoint());
    asio::write(s, asio::buffer("hello", 5));
    asio::read(s, asio::buffer(got));
    // The worker answers as soon as it holds the connection; the dispatcher counts the move when
    // it sees the worker's acknowledgement, which may come a moment after the echo.
    for (int i = 0; i < 2000 && baton::get_move_stats().sent == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ioc.stop();
  });
  ioc.run_for(std::chrono::seconds(30));
  client.join();
  std::printf("echo through a moved connection: %s (moves sent %llu)\n", got.c_str(),
              static_cast<unsigned long long>(baton::get_move_stats().sent));
  return got == "hello" && baton::get_move_stats().sent == 1 ? 0 : 1;
}
