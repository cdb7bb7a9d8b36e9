// baton-echo: an echo server that restarts without dropping a connection. Each connection moves
// to the next generation as soon as it is idle (everything received has been echoed).
//
//   baton-echo --name NAME --listen HOST:PORT [--allow-restart-binary 0|1]
#include "cli.hpp"

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
  cli.text("--name", "NAME", "service name (1-64 characters from A-Z a-z 0-9 . _ -)").required();
  cli.text("--listen", "HOST:PORT", "address to listen on (port 0: any free port, printed)").required();
  cli.integer("--allow-restart-binary", 0, 1, "1: accept `batonctl restart --binary PATH`").defaults("0");
  cli.epilog("exit status: 0 when this generation handed over to the next, 1 if it could not start, 2 for a\n"
             "wrong command line.");
  if (auto rc = cli.parse(argc, argv)) return *rc;
  const std::string name = cli.str("--name"), listen = cli.str("--listen");
  if (!baton::channel::valid_name(name))
    return cli.fail("--name: '" + name + "' is not a service name (1-64 characters from A-Z a-z 0-9 . _ -, not starting with '.')");
  const auto colon = listen.rfind(':');
  std::uint64_t port = 0;
  baton::error_code aec;
  const auto addr = colon == std::string::npos ? asio::ip::address() : asio::ip::make_address(listen.substr(0, colon), aec);
  if (colon == std::string::npos || aec || !baton_cli::parse_uint(listen.substr(colon + 1), 0, 65535, port))
    return cli.fail("--listen: '" + listen + "' is not HOST:PORT (e.g. 127.0.0.1:7000)");
  const tcp::endpoint ep(addr, static_cast<unsigned short>(port));
  const bool allow_binary = cli.num("--allow-restart-binary") == 1;
  baton::restart_options opts;
  opts.next_args.assign(argv + 1, argv + argc);  // the next generation runs with the same command line
  opts.allow_restart_binary = allow_binary;
  // The library reports and never prints; the server writes what its service reports to stderr.
  opts.log = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  asio::io_context ioc(1);
  baton::service svc(ioc.get_executor(), name, opts);
  int status = 0;
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    auto [ec] = co_await svc.async_start(tuple_aw);
    if (ec) {
      std::fprintf(stderr, "baton-echo: cannot join service %s: %s\n", name.c_str(), ec.message().c_str());
      status = 1;
      ioc.stop();
      co_return;
    }
    if (svc.listener_count() == 0) svc.add_listener(baton::listener(tcp::acceptor(ioc, ep)));
    for (auto& e : svc.local_endpoints())
      std::printf("baton-echo: service %s generation %llu pid %u listening on port %u\n", name.c_str(),
                  static_cast<unsigned long long>(svc.generation()), baton::current_process_id(), e.port());
    std::fflush(stdout);
    for (;;) {
      auto [aec, c] = co_await svc.async_accept(tuple_aw);
      if (aec) co_return;
      asio::co_spawn(ioc, session(svc, std::move(c)), asio::detached);
    }
  }, asio::detached);
  svc.async_wait_retired([&](baton::error_code ec, baton::restart_report r) {
    if (ec) return;
    std::printf("baton-echo: %s\n", baton::to_string(r, name).c_str());
    std::fflush(stdout);
    ioc.stop();
  });
  try {
    ioc.run();
  } catch (const std::exception& e) {  // e.g. the listening address is taken
    std::fprintf(stderr, "baton-echo: %s\n", e.what());
    return 1;
  }
  return status;
}
