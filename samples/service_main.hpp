#pragma once
// What the small restartable samples (baton-echo, baton-udp-echo) share around their service: the
// --name and --listen options checked, and the io_context run until the generation retires. The
// HTTP and WebSocket samples use the option declarations and the name check.
#include "cli.hpp"

#include <baton/restart.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/ip/address.hpp>

#include <cstdio>
#include <exception>
#include <optional>
#include <string>

namespace baton_cli {

/// --name (a service name) and --listen (HOST:PORT), checked.
struct service_address {
  std::string name;
  boost::asio::ip::address address;
  unsigned short port = 0;
};

/// Declares --name and --listen (`listen_help` says what the address is for; required unless it
/// has a default, `listen_default`).
inline void service_options(parser& cli, const std::string& listen_help, const std::string& listen_default = "") {
  cli.text("--name", "NAME", "service name (1-64 characters from A-Z a-z 0-9 . _ -)").required();
  cli.text("--listen", "HOST:PORT", listen_help);
  if (listen_default.empty())
    cli.required();
  else
    cli.defaults(listen_default);
}
/// The exit statuses of a restartable sample, for its --help.
inline constexpr const char* service_exit_statuses =
    "exit status: 0 when this generation handed over to the next, 1 if it could not start, 2 for a\n"
    "wrong command line.";

/// An exit status (cli.fail) if `name`, the value of --name, is not a service name.
inline std::optional<int> check_service_name(parser& cli, const std::string& name) {
  if (baton::channel::valid_name(name)) return std::nullopt;
  return cli.fail("--name: '" + name +
                  "' is not a service name (1-64 characters from A-Z a-z 0-9 . _ -, not starting with '.')");
}

/// Reads --name and --listen from `cli` into `out`; an exit status (cli.fail) if one is wrong.
/// `example` is a HOST:PORT shown in the message.
inline std::optional<int> read_service_address(parser& cli, const std::string& example, service_address& out) {
  out.name = cli.str("--name");
  const std::string listen = cli.str("--listen");
  if (auto rc = check_service_name(cli, out.name)) return rc;
  const auto colon = listen.rfind(':');
  std::uint64_t port = 0;
  baton::error_code ec;
  if (colon != std::string::npos) out.address = boost::asio::ip::make_address(listen.substr(0, colon), ec);
  if (colon == std::string::npos || ec || !parse_uint(listen.substr(colon + 1), 0, 65535, port))
    return cli.fail("--listen: '" + listen + "' is not HOST:PORT (e.g. " + example + ")");
  out.port = static_cast<unsigned short>(port);
  return std::nullopt;
}

/// Parses the command line (options declared, --name and --listen among them; --help ends with
/// the exit statuses) and reads --name and --listen into `out` (read_service_address). An exit
/// status when the program should end now.
inline std::optional<int> parse_service_command_line(parser& cli, int argc, char** argv, const std::string& example,
                                                     service_address& out) {
  cli.epilog(service_exit_statuses);
  if (auto rc = cli.parse(argc, argv)) return rc;
  return read_service_address(cli, example, out);
}

/// Restart options for a sample: the next generation runs with the same command line, and what
/// the service reports goes to stderr (the library reports and never prints).
inline baton::restart_options same_command_line(int argc, char** argv) {
  baton::restart_options opts;
  opts.next_args.assign(argv + 1, argv + argc);
  opts.log = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  return opts;
}

/// After async_start: false if it failed (said on stderr, `status` 1, `ioc` stopped).
inline bool joined(const char* program, baton::error_code ec, const std::string& name, int& status,
                   boost::asio::io_context& ioc) {
  if (!ec) return true;
  std::fprintf(stderr, "%s: cannot join service %s: %s\n", program, name.c_str(), ec.message().c_str());
  status = 1;
  ioc.stop();
  return false;
}

/// Runs `ioc` until this generation of `svc` retires (after printing its report) or the start
/// fails (`status` set); an exception (e.g. the address is taken) is printed and gives 1.
inline int run_until_retired(const char* program, boost::asio::io_context& ioc, baton::service& svc, const int& status) {
  svc.async_wait_retired([&, program](baton::error_code ec, baton::restart_report r) {
    if (ec) return;
    std::printf("%s: %s\n", program, baton::to_string(r, svc.name()).c_str());
    std::fflush(stdout);
    ioc.stop();
  });
  try {
    ioc.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    return 1;
  }
  return status;
}

/// Runs a restartable sample's service `name` (with `opts`) on one thread: joins it (exit status 1
/// if it cannot), then runs `serve(ioc, svc)` as a coroutine, until this generation retires
/// (run_until_retired: an exception, e.g. the address is taken, gives 1 too).
template <class Serve>
int run_service(const char* program, const std::string& name, const baton::restart_options& opts, Serve serve) {
  boost::asio::io_context ioc(1);
  baton::service svc(ioc.get_executor(), name, opts);
  int status = 0;
  boost::asio::co_spawn(ioc, [&]() -> boost::asio::awaitable<void> {
    auto [ec] = co_await svc.async_start(boost::asio::as_tuple(boost::asio::use_awaitable));
    if (!joined(program, ec, name, status, ioc)) co_return;
    co_await serve(ioc, svc);
  }, boost::asio::detached);
  return run_until_retired(program, ioc, svc, status);
}

}  // namespace baton_cli
