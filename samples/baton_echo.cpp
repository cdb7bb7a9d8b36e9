// baton-echo: an echo server that restarts without dropping a connection. Each connection moves
// to the next generation as soon as it is idle (everything received has been echoed).
//
//   baton-echo --name NAME --listen HOST:PORT
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
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string name, listen;
  bool allow_binary = false;
  for (std::size_t i = 0; i + 1 < args.size(); i += 2) {
    if (args[i] == "--name") name = args[i + 1];
    else if (args[i] == "--listen") listen = args[i + 1];
    else if (args[i] == "--allow-restart-binary") allow_binary = args[i + 1] == "1";
  }
  const auto colon = listen.rfind(':');
  if (name.empty() || colon == std::string::npos) {
    std::fprintf(stderr, "usage: baton-echo --name NAME --listen HOST:PORT [--allow-restart-binary 1]\n");
    return 2;
  }
  const tcp::endpoint ep(asio::ip::make_address(listen.substr(0, colon)),
                         static_cast<unsigned short>(std::stoi(listen.substr(colon + 1))));
  baton::restart_options opts;
  opts.next_args = args;
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
  ioc.run();
  return status;
}
