// baton-http: an HTTP/1.1 keep-alive server on Boost.Beast that restarts without dropping a
// connection. Start it, then run `batonctl restart NAME` (or send SIGHUP on Linux, or set the
// event Local\baton.NAME.restart on Windows): a new process takes over the listening socket and
// every open connection, between two requests, and the old one exits.
//
//   baton-http --name NAME [--listen HOST:PORT] [--fdname NAME[:NAME...]] [--drain-deadline-ms N]
//              [--ready-timeout-ms N] [--allow-restart-binary 0|1]
//
//   Socket activation (systemd, or systemd-socket-activate, with or without baton-run): every
//   listening socket passed is served and --listen is not bound; --fdname serves only the sockets
//   of those names (FileDescriptorName=). Under systemd without a keeper it says READY=1, and at
//   each restart MAINPID= the new generation (NotifyAccess=all).
//
//   GET /            200 "ok", headers X-Baton-Generation, X-Baton-Pid, X-Baton-Requests
//                    (requests served on this connection, across generations)
//   GET /slow?ms=N   the same after N ms (a request in flight during a restart)
//   POST /upload     200 "<bytes> <crc32c>" of the body (an upload during a restart); POST / too
//   GET /metrics     Baton's counters in Prometheus text format
#include "http_server.hpp"
#include "service_main.hpp"

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

using namespace baton_samples;

int main(int argc, char** argv) {
  baton_cli::parser cli(
      "baton-http", "--name NAME [--listen HOST:PORT] [options]",
      "An HTTP/1.1 keep-alive server that restarts without dropping a connection: `batonctl restart NAME`\n"
      "(or SIGHUP on Linux, or the event Local\\baton.NAME.restart on Windows) starts the next generation,\n"
      "which takes over the listening socket and every open connection between two requests.\n"
      "Endpoints: GET / (200 \"ok\"), GET /slow?ms=N, POST /upload, GET /metrics.");
  baton_cli::service_options(cli, "address to listen on (port 0: any free port, printed)", "127.0.0.1:8080");
  cli.text("--fdname", "NAME[:NAME...]",
           "socket activation: serve only the passed sockets of these names (default: every socket passed)");
  cli.integer("--drain-deadline-ms", 0, 86400000, "how long a restart waits for connections to reach a safe point")
      .defaults("30000");
  cli.integer("--ready-timeout-ms", 1, 86400000, "how long a restart waits for the next generation to announce itself")
      .defaults("10000");
  cli.integer("--allow-restart-binary", 0, 1, "1: accept `batonctl restart --binary PATH`").defaults("0");
  cli.epilog(baton_cli::service_exit_statuses);
  if (auto rc = cli.parse(argc, argv)) return *rc;
  http_service_options o;
  o.name = cli.str("--name");
  if (auto rc = baton_cli::check_service_name(cli, o.name)) return *rc;
  if (!parse_endpoint(cli.str("--listen"), o.listen))
    return cli.fail("--listen: '" + cli.str("--listen") + "' is not HOST:PORT (e.g. 127.0.0.1:8080, [::1]:0)");
  for (std::size_t from = 0, to = 0; cli.has("--fdname") && from <= cli.str("--fdname").size(); from = to + 1) {
    const auto& all = cli.str("--fdname");
    to = std::min(all.find(':', from), all.size());
    const auto n = all.substr(from, to - from);
    // systemd's own rule for FileDescriptorName=: 1-255 printable ASCII characters, no ':'.
    if (n.empty() || n.size() > 255 || std::any_of(n.begin(), n.end(), [](char c) { return c < ' ' || c > '~'; }))
      return cli.fail("--fdname: '" + n + "' is not a socket name (1-255 printable ASCII characters; several: A:B)");
    o.restart.activated_names.push_back(n);
  }
  o.restart.drain_deadline = std::chrono::milliseconds(cli.num("--drain-deadline-ms"));
  o.restart.ready_timeout = std::chrono::milliseconds(cli.num("--ready-timeout-ms"));
  o.restart.allow_restart_binary = cli.num("--allow-restart-binary") == 1;
  o.restart.next_args.assign(argv + 1, argv + argc);  // the next generation runs with the same command line
  return run_http_service(o);
}
