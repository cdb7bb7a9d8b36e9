#pragma once
// What the small restartable samples (baton-echo, baton-udp-echo) share around their service: the
// --name and --listen options checked, and the io_context run until the generation retires.
#include "cli.hpp"

#include <baton/restart.hpp>

#include <boost/asio/io_context.hpp>
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

/// Declares --name and --listen (`listen_help` says what the address is for).
inline void service_options(parser& cli, const std::string& listen_help) {
  cli.text("--name", "NAME", "service name (1-64 characters from A-Z a-z 0-9 . _ -)").required();
  cli.text("--listen", "HOST:PORT", listen_help).required();
}
/// The exit statuses of a restartable sample, for its --help.
inline constexpr const char* service_exit_statuses =
    "exit status: 0 when this generation handed over to the next, 1 if it could not start, 2 for a\n"
    "wrong command line.";

/// Reads --name and --listen from `cli` into `out`; an exit status (cli.fail) if one is wrong.
/// `example` is a HOST:PORT shown in the message.
inline std::optional<int> read_service_address(parser& cli, const std::string& example, service_address& out) {
  out.name = cli.str("--name");
  const std::string listen = cli.str("--listen");
  if (!baton::channel::valid_name(out.name))
    return cli.fail("--name: '" + out.name +
                    "' is not a service name (1-64 characters from A-Z a-z 0-9 . _ -, not starting with '.')");
  const auto colon = listen.rfind(':');
  std::uint64_t port = 0;
  baton::error_code ec;
  if (colon != std::string::npos) out.address = boost::asio::ip::make_address(listen.substr(0, colon), ec);
  if (colon == std::string::npos || ec || !parse_uint(listen.substr(colon + 1), 0, 65535, port))
    return cli.fail("--listen: '" + listen + "' is not HOST:PORT (e.g. " + example + ")");
  out.port = static_cast<unsigned short>(port);
  return std::nullopt;
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

}  // namespace baton_cli
