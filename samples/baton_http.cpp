// baton-http: an HTTP/1.1 keep-alive server on Boost.Beast that restarts without dropping a
// connection. Start it, then run `batonctl restart NAME` (or send SIGHUP on Linux, or set the
// event Local\baton.NAME.restart on Windows): a new process takes over the listening socket and
// every open connection, between two requests, and the old one exits.
//
//   baton-http --name NAME --listen HOST:PORT [--drain-deadline-ms N]
//
//   GET /            200 "ok", headers X-Baton-Generation, X-Baton-Pid, X-Baton-Requests
//                    (requests served on this connection, across generations)
//   GET /slow?ms=N   the same after N ms (a request in flight during a restart)
//   POST /upload     200 "<bytes> <crc32c>" of the body (an upload during a restart); POST / too
//   GET /metrics     Baton's counters in Prometheus text format
#include "http_server.hpp"

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

using namespace baton_samples;

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  http_service_options o;
  std::string listen = "127.0.0.1:8080";
  for (std::size_t i = 0; i + 1 < args.size(); i += 2) {
    if (args[i] == "--name") o.name = args[i + 1];
    else if (args[i] == "--listen") listen = args[i + 1];
    else if (args[i] == "--drain-deadline-ms") o.restart.drain_deadline = std::chrono::milliseconds(std::stol(args[i + 1]));
    else if (args[i] == "--ready-timeout-ms") o.restart.ready_timeout = std::chrono::milliseconds(std::stol(args[i + 1]));
    else if (args[i] == "--allow-restart-binary") o.restart.allow_restart_binary = args[i + 1] == "1";
  }
  if (o.name.empty() || !parse_endpoint(listen, o.listen)) {
    std::fprintf(stderr, "usage: baton-http --name NAME --listen HOST:PORT [--drain-deadline-ms N] [--ready-timeout-ms N] "
                 "[--allow-restart-binary 1]\n");
    return 2;
  }
  o.restart.next_args = args;  // the next generation runs with the same command line
  return run_http_service(o);
}
