// batonctl: controls hot-restartable Baton services of the same user on this host.
//
//   batonctl restart NAME [--binary PATH] [--timeout-ms N]
//       Starts the next generation of NAME (its own binary, or PATH) and returns once it has
//       taken over everything: exit 0 and one line of summary; or exit 1 and the reason. Exit 3:
//       the next generation took over but connections were left behind (not moved by the drain
//       deadline); the summary says how many.
//       --binary is refused (errc::restart_binary_refused) unless the service allows it
//       (restart_options::allow_restart_binary; baton-http/baton-echo --allow-restart-binary 1).
//   batonctl status NAME
//       Generation, pid, connections and counters of the running generation.
#include <baton/restart.hpp>

#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  std::vector<std::string> a(argv + 1, argv + argc);
  if (a.size() < 2 || (a[0] != "restart" && a[0] != "status")) {
    std::fprintf(stderr,
                 "usage: batonctl restart NAME [--binary PATH] [--timeout-ms N]\n"
                 "       batonctl status NAME\n");
    return 2;
  }
  const std::string& name = a[1];
  std::string binary;
  std::chrono::milliseconds timeout{60000};
  for (std::size_t i = 2; i + 1 < a.size(); i += 2) {
    if (a[i] == "--binary") binary = a[i + 1];
    else if (a[i] == "--timeout-ms") timeout = std::chrono::milliseconds(std::stol(a[i + 1]));
  }
  baton::error_code ec;
  if (a[0] == "status") {
    const auto text = baton::request_status(name, std::chrono::milliseconds(5000), ec);
    if (ec) {
      std::fprintf(stderr, "status of %s failed: %s\n", name.c_str(), ec.message().c_str());
      return 1;
    }
    std::printf("%s\n", text.c_str());
    return 0;
  }
  const auto r = baton::request_restart(name, binary, timeout, ec);
  std::printf("%s\n", baton::to_string(r, name).c_str());
  if (r.ec) return 1;
  return r.connections_not_moved ? 3 : 0;
}
