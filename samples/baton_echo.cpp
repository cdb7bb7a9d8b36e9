// baton-echo: an echo server that restarts without dropping a connection. Each connection moves
// to the next generation as soon as it is idle (everything received has been echoed).
//
//   baton-echo --name NAME --listen HOST:PORT [--allow-restart-binary 0|1]
#include "service_main.hpp"

#include <baton/restart.hpp>
#include <baton/spawn.hpp>

#include <boost/asio.hpp>

#include <array>
#include <cstdio>
#include <string>
#include <vector>

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

constexpr auto tuple_aw = asio::as_tuple(asio::use_awaitable);

asio::awaitable<void> session(baton::service& svc, baton::connection c) {
  std::array<char, 16384> buf;
  for (;;) {
    auto [sec, moved] = co_await svc.async_safe_point(c, tuple_aw);  // idle: all echoed
    if (sec || moved) co_return;
    auto [ec, n] = co_await c.async_read_some(asio::buffer(buf), tuple_aw);
    if (ec) co_return;
    auto [wec, wn] = co_await asio::async_write(c, asio::buffer(buf.data(), n), tuple_aw);
    if (wec) co_return;
  }
}

}  // namespace

int main(int argc, char** argv) {
  baton_cli::parser cli("baton-echo", "--name NAME --listen HOST:PORT [--allow-restart-binary 0|1]",
                        "An echo server that restarts without dropping a connection (`batonctl restart NAME`):\n"
                        "each connection moves to the next generation as soon as everything received is echoed.");
  baton_cli::service_options(cli, "address to listen on (port 0: any free port, printed)");
  cli.integer("--allow-restart-binary", 0, 1, "1: accept `batonctl restart --binary PATH`").defaults("0");
  baton_cli::service_address at;
  if (auto rc = baton_cli::parse_service_command_line(cli, argc, argv, "127.0.0.1:7000", at)) return *rc;
  auto opts = baton_cli::same_command_line(argc, argv);
  opts.allow_restart_binary = cli.num("--allow-restart-binary") == 1;
  const auto serve = [&](asio::io_context& ioc, baton::service& svc) -> asio::awaitable<void> {
    if (svc.listener_count() == 0)
      svc.add_listener(baton::listener(tcp::acceptor(ioc, tcp::endpoint(at.address, at.port))));
    for (auto& e : svc.local_endpoints())
      std::printf("baton-echo: service %s generation %llu pid %u listening on port %u\n", at.name.c_str(),
                  static_cast<unsigned long long>(svc.generation()), baton::current_process_id(), e.port());
    std::fflush(stdout);
    for (;;) {
      auto [aec, c] = co_await svc.async_accept(tuple_aw);
      if (aec) co_return;
      asio::co_spawn(ioc, session(svc, std::move(c)), asio::detached);
    }
  };
  return baton_cli::run_service("baton-echo", at.name, opts, serve);  // 1 if the address is taken
}
