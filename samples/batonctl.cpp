// batonctl: controls hot-restartable Baton services of the same user on this host.
//
//   batonctl restart NAME [--binary PATH] [--timeout-ms N] [--json]
//       Starts the next generation of NAME (its own binary, or PATH) and returns once it has
//       taken over everything, with one line of summary (or one JSON object). --binary is refused
//       (errc::restart_binary_refused) unless the service allows it
//       (restart_options::allow_restart_binary; baton-http/baton-echo --allow-restart-binary 1).
//   batonctl status NAME [--json]
//       Generation, pid, state, connections and counters of the running generation.
//   batonctl stop NAME [--timeout-ms N] [--json]
//       Stops NAME's running generation gracefully (as SIGTERM does): no new connections, the
//       requests in flight finish, every connection closes after its last response, the name is
//       released; prints how each connection ended.
//   batonctl list [--json]
//       The services of this user on this host, each with its status (Linux; Windows cannot
//       list named objects simply and says so).
//   batonctl clean [NAME]
//       Removes what killed services (of NAME, or all of this user's) left in /dev/shm; never
//       the objects of a live service. Windows: named objects vanish with their processes.
// Exit status: see `exit_codes` below (also in --help).
#include "cli.hpp"

#include <baton/error.hpp>
#include <baton/restart.hpp>

#include <boost/asio/error.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace {

using ms = std::chrono::milliseconds;

const char* const exit_codes =
    "exit status:\n"
    "  0  done (restart: the next generation took over everything; stop: every connection closed\n"
    "     after its last response)\n"
    "  1  failed: the service was not found, did not answer, or the restart failed (the running\n"
    "     generation keeps serving); `list` on Windows, which cannot list services\n"
    "  2  wrong command line\n"
    "  3  restart: the next generation took over, but some connections were not moved by the\n"
    "     drain deadline and ended with the old generation (the summary says how many); stop:\n"
    "     some connections were still in a request at the drain deadline and were cut\n"
    "  4  restart: no answer within --timeout-ms; the restart may still be under way (the\n"
    "     message says what the service reports now; check again with `batonctl status NAME`)";

// ---- JSON, written by hand ----------------------------------------------------------------------

std::string quoted(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          o += buf;
        } else {
          o += static_cast<char>(c);  // UTF-8 passes through unchanged
        }
    }
  }
  return o + "\"";
}

bool all_digits(const std::string& s) {
  if (s.empty() || s.size() > 19) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

// One JSON object from (key, already-encoded value) pairs.
using fields = std::vector<std::pair<std::string, std::string>>;
std::string object(const fields& f) {
  std::string o = "{";
  for (std::size_t i = 0; i < f.size(); ++i) o += (i ? ", " : "") + quoted(f[i].first) + ": " + f[i].second;
  return o + "}";
}
std::string number(std::uint64_t v) { return std::to_string(v); }
std::string number(std::int64_t v) { return std::to_string(v); }

// request_status's "key value" lines: numbers stay numbers, everything else is a string.
fields status_fields(const std::string& text) {
  fields f;
  std::size_t from = 0;
  while (from < text.size()) {
    auto nl = text.find('\n', from);
    if (nl == std::string::npos) nl = text.size();
    const std::string line = text.substr(from, nl - from);
    from = nl + 1;
    const auto sp = line.find(' ');
    if (line.empty()) continue;
    const std::string key = line.substr(0, sp), value = sp == std::string::npos ? "" : line.substr(sp + 1);
    f.emplace_back(key, all_digits(value) ? value : quoted(value));
  }
  return f;
}
std::string field(const fields& f, const std::string& key) {
  for (auto& [k, v] : f)
    if (k == key) return v.size() >= 2 && v.front() == '"' ? v.substr(1, v.size() - 2) : v;
  return "-";
}

// ---- the commands -------------------------------------------------------------------------------

int status(const std::string& name, ms timeout, bool json) {
  baton::error_code ec;
  const auto text = baton::request_status(name, timeout, ec);
  if (ec) {
    if (json) std::printf("%s\n", object({{"service", quoted(name)}, {"ok", "false"}, {"error", quoted(ec.message())}}).c_str());
    else std::fprintf(stderr, "status of %s failed: %s\n", name.c_str(), ec.message().c_str());
    return 1;
  }
  if (json) std::printf("%s\n", object(status_fields(text)).c_str());
  else std::printf("%s\n", text.c_str());
  return 0;
}

int list(ms timeout, bool json) {
  baton::error_code ec;
  const auto names = baton::list_services(ec);
  if (ec == boost::asio::error::operation_not_supported) {
    std::fprintf(stderr, "batonctl list: Windows offers no simple way to list named objects, so services cannot be "
                         "found here; ask one by its name: batonctl status NAME\n");
    return 1;
  }
  if (ec) {
    std::fprintf(stderr, "batonctl list: cannot list services: %s\n", ec.message().c_str());
    return 1;
  }
  std::vector<std::string> rows;
  if (!json && !names.empty())
    std::printf("%-24s %10s %8s %11s  %s\n", "NAME", "GENERATION", "PID", "CONNECTIONS", "STATE");
  for (const auto& n : names) {
    const auto text = baton::request_status(n, timeout, ec);
    const auto f = status_fields(text);
    if (json) {
      rows.push_back(ec ? object({{"service", quoted(n)}, {"error", quoted(ec.message())}}) : object(f));
    } else if (ec) {
      std::printf("%-24s %10s %8s %11s  no answer: %s\n", n.c_str(), "-", "-", "-", ec.message().c_str());
    } else {
      std::printf("%-24s %10s %8s %11s  %s\n", n.c_str(), field(f, "generation").c_str(), field(f, "pid").c_str(),
                  field(f, "connections").c_str(), field(f, "state").c_str());
    }
  }
  if (json) {
    std::string out = "{\"services\": [";
    for (std::size_t i = 0; i < rows.size(); ++i) out += (i ? ", " : "") + rows[i];
    std::printf("%s]}\n", out.c_str());
  } else if (names.empty()) {
    std::printf("no Baton services of this user on this host\n");
  }
  return 0;
}

int clean(const std::string& name) {
  baton::error_code ec;
  const auto removed = baton::remove_dead_channels(name, ec);
  if (ec == boost::asio::error::operation_not_supported) {
    std::printf("batonctl clean: nothing to clean on Windows: named objects vanish with the last process that "
                "holds them\n");
    return 0;
  }
  if (ec) {
    std::fprintf(stderr, "batonctl clean: cannot list /dev/shm: %s\n", ec.message().c_str());
    return 1;
  }
  for (const auto& n : removed) std::printf("removed %s (its owner is dead)\n", n.c_str());
  if (removed.empty()) std::printf("nothing to clean%s\n", name.empty() ? "" : (" for " + name).c_str());
  return 0;
}

// `timeout_text`: what a restart that timed out left behind (then `now` is the status now, or
// empty if none answered).
std::string report_json(const std::string& name, const baton::restart_report& r, const std::string& timeout_text,
                        const std::string& now) {
  const bool timed_out = !timeout_text.empty();
  auto us = [](std::chrono::microseconds d) { return number(static_cast<std::int64_t>(d.count())); };
  fields f{{"service", quoted(name)},
           {"ok", r.ec ? "false" : "true"},
           {"error", timed_out ? quoted(timeout_text) : r.ec ? quoted(r.ec.message()) : "null"},
           {"timed_out", timed_out ? "true" : "false"}};
  if (!r.detail.empty()) f.emplace_back("detail", quoted(r.detail));
  if (timed_out) {
    f.emplace_back("status_now", now.empty() ? "null" : object(status_fields(now)));
  } else {
    f.insert(f.end(), {{"old_generation", number(r.old_generation)},
                       {"new_generation", number(r.new_generation)},
                       {"old_pid", number(std::uint64_t{r.old_pid})},
                       {"new_pid", number(std::uint64_t{r.new_pid})},
                       {"listeners_moved", number(r.listeners_moved)},
                       {"udp_sockets_moved", number(r.udp_sockets_moved)},
                       {"connections_moved", number(r.connections_moved)},
                       {"connections_not_moved", number(r.connections_not_moved)},
                       {"connections_lost", number(r.connections_lost)},
                       {"stopped", r.stopped ? "true" : "false"},
                       {"connections_closed", number(r.connections_closed)},
                       {"connections_closed_gracefully", number(r.connections_closed_gracefully)},
                       {"ready_us", us(r.ready_time)},
                       {"listeners_us", us(r.listeners_time)},
                       {"handover_us", us(r.handover_time)},
                       {"old_exit_us", us(r.old_exit_time)}});
  }
  return object(f);
}

// What a restart that got no answer in time left behind, in words: compares the status before
// the request with the status now.
std::string after_timeout(const std::string& name, const std::string& before, const std::string& now,
                          const baton::error_code& now_ec) {
  const auto b = status_fields(before), n = status_fields(now);
  std::string s;
  if (now_ec) {
    s = "no generation answers now (" + now_ec.message() + "), as while generations hand over";
  } else if (!before.empty() && field(n, "generation") != field(b, "generation")) {
    s = "generation " + field(n, "generation") + " (pid " + field(n, "pid") + ") is " + field(n, "state") +
        ", generation " + field(b, "generation") + " was in charge before: the restart went on after the timeout";
  } else {
    const auto state = field(n, "state");
    s = "generation " + field(n, "generation") + " (pid " + field(n, "pid") + ") is " + state;
    s += state == "starting-next" || state == "handing-over" ? ": the restart is still under way"
         : state == "serving" ? ": the restart has not started yet, or it failed"
                              : "";
  }
  return s + "; check with `batonctl status " + name + "`";
}

int restart(const std::string& name, const std::string& binary, ms timeout, bool json) {
  baton::error_code ec;
  // The status before, to tell afterwards whether a restart that timed out went on; best effort
  // (a service that cannot answer it fails the restart request below with the reason).
  std::string before = baton::request_status(name, std::min(timeout, ms(2000)), ec);
  if (ec) before.clear();
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = baton::request_restart(name, binary, timeout, ec);
  // control_exchange fails with move_timeout when no answer came within the whole timeout; a
  // restart that failed on its own answers earlier.
  const bool timed_out = r.ec == baton::errc::move_timeout && std::chrono::steady_clock::now() - t0 >= timeout;
  std::string now;
  if (timed_out) {
    baton::error_code sec;
    now = baton::request_status(name, ms(2000), sec);
    const auto what = "no answer within " + std::to_string(timeout.count()) + " ms, the restart may still be under way: " +
                      after_timeout(name, before, now, sec);
    if (sec) now.clear();
    if (json) std::printf("%s\n", report_json(name, r, what, now).c_str());
    else std::printf("restart of %s timed out: %s\n", name.c_str(), what.c_str());
    return 4;
  }
  if (json) std::printf("%s\n", report_json(name, r, "", now).c_str());
  else std::printf("%s\n", baton::to_string(r, name).c_str());
  if (r.ec) return 1;
  return r.connections_not_moved ? 3 : 0;
}

int stop(const std::string& name, ms timeout, bool json) {
  baton::error_code ec;
  const auto r = baton::request_stop(name, timeout, ec);
  if (json) std::printf("%s\n", report_json(name, r, "", "").c_str());
  else if (r.ec) std::printf("stop of %s failed: %s\n", name.c_str(), r.ec.message().c_str());
  else std::printf("%s\n", baton::to_string(r, name).c_str());
  if (r.ec) return 1;
  return r.connections_not_moved ? 3 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  baton_cli::parser cli("batonctl",
                        "restart NAME [--binary PATH] [--timeout-ms N] [--json]\n"
                        "status NAME [--timeout-ms N] [--json]\n"
                        "stop NAME [--timeout-ms N] [--json]\n"
                        "list [--timeout-ms N] [--json]\n"
                        "clean [NAME]",
                        "Controls the hot-restartable Baton services of this user on this host.\n"
                        "  restart  starts the next generation of service NAME and waits until it has taken over\n"
                        "  status   generation, pid, state, connections and counters of NAME's running generation\n"
                        "  stop     stops NAME gracefully: requests in flight finish, connections close, the name is freed\n"
                        "  list     every service of this user with its generation, pid and connections (Linux)\n"
                        "  clean    removes what killed services (NAME's, or all) left in /dev/shm; live ones are left alone");
  cli.text("--binary", "PATH", "restart: the next generation's executable (the service must allow it)");
  cli.integer("--timeout-ms", 1, 86400000,
              "how long to wait for an answer (default: restart and stop 60000, status 5000, list 1000 per service)");
  cli.flag("--json", "print one JSON object instead of text");
  cli.positionals(0, 2).epilog(exit_codes);
  if (auto rc = cli.parse(argc, argv)) return *rc;
  const auto& p = cli.positional();
  if (p.empty()) return cli.fail("missing command: restart, status, stop, list or clean");
  const std::string& cmd = p[0];
  const bool json = cli.has("--json");
  auto timeout = [&](long long def) { return ms(cli.has("--timeout-ms") ? static_cast<long long>(cli.num("--timeout-ms")) : def); };
  if (cmd == "list") {
    if (p.size() > 1) return cli.fail("list takes no NAME");
    if (cli.has("--binary")) return cli.fail("--binary is an option of restart only");
    return list(timeout(1000), json);
  }
  if (cmd == "clean") {
    if (cli.has("--binary") || cli.has("--json") || cli.has("--timeout-ms")) return cli.fail("clean takes no options");
    return clean(p.size() > 1 ? p[1] : "");
  }
  if (cmd != "restart" && cmd != "status" && cmd != "stop")
    return cli.fail("unknown command '" + cmd + "' (restart, status, stop, list or clean)");
  if (p.size() < 2) return cli.fail(cmd + " needs the service's NAME");
  if (cmd == "status") {
    if (cli.has("--binary")) return cli.fail("--binary is an option of restart only");
    return status(p[1], timeout(5000), json);
  }
  if (cmd == "stop") {
    if (cli.has("--binary")) return cli.fail("--binary is an option of restart only");
    return stop(p[1], timeout(60000), json);
  }
  return restart(p[1], cli.str("--binary"), timeout(60000), json);
}
