// baton-run: the keeper (baton/keeper.hpp). The process a supervisor watches: it starts every
// generation of a hot-restartable service as its own child and keeps its pid across restarts.
//
//   baton-run [--drain-ms N] [--name SERVICE] [--quiet] [--log FILE] [--service SVCNAME] -- PROGRAM ARGS...
//
//   SIGHUP (Linux), `batonctl restart SERVICE` or the Windows event Local\baton.SERVICE.restart:
//       the next generation is started by the keeper and takes over from the one in charge.
//   SIGTERM / SIGINT: a graceful stop of the generation in charge; a second one stops at once.
//   --service SVCNAME (Windows): runs as that service of the Service Control Manager (sc stop is
//       the graceful stop, `sc control SVCNAME 128` a restart).
//   Exit status: the last generation's (128 + signal if a signal ended it).
#include "cli.hpp"

#include <baton/channel.hpp>
#include <baton/keeper.hpp>

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  baton_cli::parser cli(
      "baton-run", "[--drain-ms N] [--name SERVICE] [--quiet] [--log FILE] [--service SVCNAME] -- PROGRAM ARGS...",
      "Keeps a hot-restartable Baton service: starts PROGRAM (a path) as its first generation and every\n"
      "later generation as its own child, so that its pid, the one a supervisor (systemd, a container's\n"
      "PID 1, the Windows Service Control Manager) watches, never changes. Restart: SIGHUP (Linux),\n"
      "`batonctl restart SERVICE`, or the event Local\\baton.SERVICE.restart (Windows). SIGTERM or\n"
      "SIGINT: the service stops gracefully; a second one stops it at once. Every child is reaped,\n"
      "orphans too (it can run as PID 1).\n"
      "\n"
      "As a Windows service (--service; the Service Control Manager must start it):\n"
      "  sc create SVCNAME binPath= \"C:\\path\\baton-run.exe --service SVCNAME --log C:\\path\\keeper.log\n"
      "      -- C:\\path\\baton-http.exe --name web --listen 0.0.0.0:8080\"\n"
      "  sc start SVCNAME        START_PENDING until generation 1 is in charge, then RUNNING\n"
      "  sc control SVCNAME 128  restart (as SIGHUP); the service stays RUNNING, batonctl restart works too\n"
      "  sc stop SVCNAME         graceful stop: STOP_PENDING while the generations drain, then STOPPED\n"
      "  sc query SVCNAME        STOPPED with WIN32_EXIT_CODE 0, or 1066 and SERVICE_EXIT_CODE the status");
  cli.integer("--drain-ms", 0, 86400000, "on a stop, how long the generations may drain before they are stopped at once")
      .defaults("30000");
  cli.text("--name", "SERVICE", "the service's name (default: learned from the first generation)");
  cli.flag("--quiet", "do not log the keeper's events to standard error");
  cli.text("--log", "FILE", "append the keeper's events to FILE instead of standard error (a service has none)");
  cli.text("--service", "SVCNAME",
           "Windows: run as this service of the Service Control Manager, which must have started baton-run");
  cli.positionals(1, 100000).epilog(
      "exit status: the last generation's (128 + N if signal N ended it), 2 for a wrong command line,\n"
      "127 if PROGRAM could not be started. A generation that crashes is not restarted: the keeper ends\n"
      "with its status and the supervisor decides. --service outside the Service Control Manager (or on\n"
      "Linux, where systemd is the supervisor) fails with exit status 1.");
  if (auto rc = cli.parse(argc, argv)) return *rc;
  baton::keeper_options o;
  o.program = cli.positional()[0];
  o.args.assign(cli.positional().begin() + 1, cli.positional().end());
  o.service = cli.str("--name");
  if (!o.service.empty() && !baton::channel::valid_name(o.service))
    return cli.fail("--name: '" + o.service + "' is not a service name (1-64 characters from A-Z a-z 0-9 . _ -, not starting with '.')");
  o.drain_deadline = std::chrono::milliseconds(cli.num("--drain-ms"));
  o.windows_service = cli.str("--service");
  std::FILE* log = stderr;
  if (cli.has("--log") && !(log = std::fopen(cli.str("--log").c_str(), "a")))
    return cli.fail("--log: cannot open '" + cli.str("--log") + "' for appending");
  if (!cli.has("--quiet"))
    o.log = [log](const std::string& line) {
      std::fprintf(log, "%s\n", line.c_str());
      std::fflush(log);
    };
  boost::asio::io_context ioc;
  baton::keeper k(ioc.get_executor(), o);
  int status = 1;
  k.async_run([&](baton::error_code ec, int st) {
    if (ec) std::fprintf(stderr, "baton-run: %s\n", ec.message().c_str());
    if (ec && log != stderr && o.log) o.log("baton-run: " + ec.message());
    status = ec && st == 0 ? 1 : st;
    ioc.stop();
  });
  ioc.run();
  return status;
}
