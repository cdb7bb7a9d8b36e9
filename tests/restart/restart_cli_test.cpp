// batonctl against a running baton-http: both real programs (samples/), batonctl's --json output
// parsed as JSON, its exit codes checked (docs in `batonctl --help`).
#include "restart_support.hpp"

#include "test_prelude.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>  // Boost.JSON's sources: tests/support/boost_json.cpp

#include <algorithm>

using namespace baton::test::prelude;
using namespace baton::test;

namespace {

namespace json = boost::json;

std::string program(const std::string& name) { return helper_exe("../samples/" + name); }

// Runs batonctl with `args`; returns its exit code and leaves its standard output in `out`.
int batonctl(const std::vector<std::string>& args, std::string& out) {
  std::vector<std::string> argv{program("batonctl")};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_capture(argv, out);
}

// Parses one JSON object; a test failure (and an empty object) if `text` is not one.
json::object parse_object(const std::string& text) {
  boost::system::error_code ec;
  auto v = json::parse(text, ec);
  EXPECT_FALSE(ec) << "not JSON: " << text;
  EXPECT_TRUE(v.is_object()) << text;
  return !ec && v.is_object() ? v.as_object() : json::object{};
}

std::int64_t integer(const json::object& o, const char* key) {
  auto* v = o.if_contains(key);
  EXPECT_TRUE(v && v->is_int64()) << key << " missing or not an integer in " << json::serialize(o);
  return v && v->is_int64() ? v->as_int64() : -1;
}
std::string text(const json::object& o, const char* key) {
  auto* v = o.if_contains(key);
  EXPECT_TRUE(v && v->is_string()) << key << " missing or not a string in " << json::serialize(o);
  return v && v->is_string() ? std::string(v->as_string()) : std::string();
}
bool boolean(const json::object& o, const char* key) {
  auto* v = o.if_contains(key);
  EXPECT_TRUE(v && v->is_bool()) << key << " missing or not a boolean in " << json::serialize(o);
  return v && v->is_bool() && v->as_bool();
}

// The baton-http program, its output in a file (whence the port); whatever generation is current
// at the end is killed.
struct sample_http {
  std::string name = unique_name("cli");
  name_guard guard{name};
  std::string log = temp_path("http-log");
  child first;
  unsigned short port = 0;

  explicit sample_http(const std::vector<std::string>& more_args = {}) {
    std::vector<std::string> argv{program("baton-http"), "--name", name, "--listen", "127.0.0.1:0"};
    argv.insert(argv.end(), more_args.begin(), more_args.end());
    first = child::run_to_file(argv, log);
    const auto until = std::chrono::steady_clock::now() + 60s;
    while (port == 0 && std::chrono::steady_clock::now() < until) {
      const auto s = read_file(log);
      const auto at = s.find("listening on 127.0.0.1:");
      if (at != std::string::npos) port = static_cast<unsigned short>(std::atoi(s.c_str() + at + 23));
      else nap(20ms);
    }
    EXPECT_NE(port, 0) << "baton-http did not start; its output: " << read_file(log);
  }
  // Kills whatever generation answers until none has answered for 2 s: a restart that a test
  // left under way may put a next generation in charge some 500 ms after its predecessor died.
  ~sample_http() {
    const auto until = std::chrono::steady_clock::now() + 30s;
    auto answered = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() < until && std::chrono::steady_clock::now() - answered < 2s) {
      const auto pid = service_generation_pid(name, 2s);
      if (pid == 0) {
        nap(100ms);
        continue;
      }
      kill_process(pid);
      answered = std::chrono::steady_clock::now();
    }
    first.kill();
    remove_file(log);
  }
  // Waits until generation `g` (0: any) is in charge and serving (a restart may still be going on).
  bool wait_serving(std::uint64_t g) {
    const auto until = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < until) {
      baton::error_code ec;
      const auto st = baton::request_status(name, 5s, ec);
      if (!ec && (g == 0 || st.find("generation " + std::to_string(g) + "\n") != std::string::npos) &&
          st.find("state serving") != std::string::npos)
        return true;
      nap(50ms);
    }
    return false;
  }
};

}  // namespace

TEST(restart, batonctl_status_json) {
  sample_http svc;
  ASSERT_NE(svc.port, 0);
  http_conn c;  // one open keep-alive connection, counted by the status
  ASSERT_TRUE(c.connect(svc.port));
  response r;
  ASSERT_TRUE(c.get("/", r));
  std::string out;
  ASSERT_EQ(batonctl({"status", svc.name, "--json"}, out), 0) << out;
  const auto o = parse_object(out);
  EXPECT_EQ(text(o, "service"), svc.name);
  EXPECT_EQ(integer(o, "generation"), 1);
  EXPECT_EQ(integer(o, "pid"), svc.first.pid());
  EXPECT_EQ(text(o, "state"), "serving");
  EXPECT_EQ(integer(o, "connections"), 1);
  EXPECT_EQ(integer(o, "listeners"), 1);
  EXPECT_GE(integer(o, "accepted"), 1);

  // A service that does not exist: exit 1, and still one JSON object, with the reason.
  ASSERT_EQ(batonctl({"status", svc.name + "-none", "--json", "--timeout-ms", "2000"}, out), 1) << out;
  const auto e = parse_object(out);
  EXPECT_FALSE(boolean(e, "ok"));
  EXPECT_EQ(text(e, "error"), baton::make_error_code(errc::service_not_found).message());
}

TEST(restart, batonctl_list) {
  sample_http svc;
  ASSERT_NE(svc.port, 0);
  std::string out;
  const int rc = batonctl({"list", "--json"}, out);
  if (host_is_windows()) {
    // Windows cannot list named objects simply: batonctl says so on stderr and exits 1.
    EXPECT_EQ(rc, 1) << out;
    EXPECT_EQ(out, "");
    return;
  }
  ASSERT_EQ(rc, 0) << out;
  const auto o = parse_object(out);
  const auto* services = o.if_contains("services");
  ASSERT_TRUE(services && services->is_array()) << out;
  int found = 0;
  for (const auto& s : services->as_array()) {
    ASSERT_TRUE(s.is_object()) << out;
    if (text(s.as_object(), "service") != svc.name) continue;
    ++found;
    EXPECT_EQ(integer(s.as_object(), "generation"), 1);
    EXPECT_EQ(integer(s.as_object(), "pid"), svc.first.pid());
    EXPECT_EQ(integer(s.as_object(), "connections"), 0);
  }
  EXPECT_EQ(found, 1) << out;
  // The table: a header line and one line for the service, with its pid.
  ASSERT_EQ(batonctl({"list"}, out), 0) << out;
  EXPECT_NE(out.find("NAME"), std::string::npos) << out;
  const auto line = out.find(svc.name + " ");
  ASSERT_NE(line, std::string::npos) << out;
  EXPECT_NE(out.find(" " + std::to_string(svc.first.pid()) + " ", line), std::string::npos) << out;
}

TEST(restart, batonctl_restart_json) {
  sample_http svc;
  ASSERT_NE(svc.port, 0);
  http_conn c;
  ASSERT_TRUE(c.connect(svc.port));
  response r;
  ASSERT_TRUE(c.get("/", r));
  std::string out;
  ASSERT_EQ(batonctl({"restart", svc.name, "--json"}, out), 0) << out;
  const auto o = parse_object(out);
  EXPECT_EQ(text(o, "service"), svc.name);
  EXPECT_TRUE(boolean(o, "ok"));
  EXPECT_TRUE(o.contains("error") && o.at("error").is_null()) << out;
  EXPECT_FALSE(boolean(o, "timed_out"));
  EXPECT_EQ(integer(o, "old_generation"), 1);
  EXPECT_EQ(integer(o, "new_generation"), 2);
  EXPECT_EQ(integer(o, "old_pid"), svc.first.pid());
  const auto new_pid = integer(o, "new_pid");
  EXPECT_GT(new_pid, 0);
  EXPECT_NE(new_pid, svc.first.pid());
  EXPECT_EQ(integer(o, "listeners_moved"), 1);
  EXPECT_EQ(integer(o, "connections_moved"), 1);
  EXPECT_EQ(integer(o, "connections_not_moved"), 0);
  EXPECT_EQ(integer(o, "connections_lost"), 0);
  EXPECT_GE(integer(o, "handover_us"), 0);
  // The connection went on with the new generation.
  ASSERT_TRUE(c.get("/", r));
  EXPECT_EQ(r.header_u64("x-baton-generation"), 2u);
  EXPECT_EQ(r.header_u64("x-baton-requests"), 2u);
  ASSERT_EQ(batonctl({"status", svc.name, "--json"}, out), 0) << out;
  const auto st = parse_object(out);
  EXPECT_EQ(integer(st, "generation"), 2);
  EXPECT_EQ(integer(st, "pid"), new_pid);
  EXPECT_EQ(integer(st, "inherited"), 1);
  EXPECT_EQ(integer(st, "connections_lost"), 0);
}

// A restart that leaves a connection behind at the drain deadline succeeds with exit 3: the
// connection is in the middle of a slow request (no safe point) for longer than the deadline.
TEST(restart, batonctl_restart_exit_3_when_connections_were_not_moved) {
  sample_http svc({"--drain-deadline-ms", "300"});
  ASSERT_NE(svc.port, 0);
  http_conn c;
  ASSERT_TRUE(c.connect(svc.port));
  ASSERT_TRUE(c.send("GET /slow?ms=4000 HTTP/1.1\r\nHost: t\r\n\r\n"));
  nap(200ms);  // the request has arrived and is being served
  std::string out;
  ASSERT_EQ(batonctl({"restart", svc.name, "--json"}, out), 3) << out;
  const auto o = parse_object(out);
  EXPECT_TRUE(boolean(o, "ok"));
  EXPECT_EQ(integer(o, "new_generation"), 2);
  EXPECT_EQ(integer(o, "connections_not_moved"), 1);
}

// A restart that gets no answer within --timeout-ms exits 4 and says what the service reports
// now and how to check again; the restart itself may go on.
TEST(restart, batonctl_restart_timeout) {
  sample_http svc;
  ASSERT_NE(svc.port, 0);
  std::string out;
  ASSERT_EQ(batonctl({"restart", svc.name, "--timeout-ms", "1"}, out), 4) << out;
  EXPECT_NE(out.find("restart of " + svc.name + " timed out"), std::string::npos) << out;
  EXPECT_NE(out.find("check with `batonctl status " + svc.name + "`"), std::string::npos) << out;
  // Whatever happened to that one, the service ends up serving; then the same in JSON.
  ASSERT_TRUE(svc.wait_serving(0));
  ASSERT_EQ(batonctl({"restart", svc.name, "--timeout-ms=1", "--json"}, out), 4) << out;
  const auto o = parse_object(out);
  EXPECT_EQ(text(o, "service"), svc.name);
  EXPECT_FALSE(boolean(o, "ok"));
  EXPECT_TRUE(boolean(o, "timed_out"));
  EXPECT_NE(text(o, "error").find("may still be under way"), std::string::npos) << out;
  EXPECT_TRUE(o.contains("status_now")) << out;
  // A restart still going on when the test ends would leave a generation behind.
  EXPECT_TRUE(svc.wait_serving(0));
}

// list_services names a service's control channel and no other channel: batonctl list sends a
// status request to each name it gets, and another program's channel must never receive one.
TEST(restart, list_services_names_control_channels_only) {
  sample_http svc;
  ASSERT_NE(svc.port, 0);
  asio::io_context ioc;
  const std::string plain = unique_name("plain");
  name_guard plain_guard(plain);
  auto rx = baton::channel::create(ioc.get_executor(), plain);
  baton::error_code ec;
  const auto names = baton::list_services(ec);
  if (host_is_windows()) {
    EXPECT_EQ(ec, boost::asio::error::operation_not_supported);
    EXPECT_TRUE(names.empty());
    return;
  }
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_EQ(std::count(names.begin(), names.end(), svc.name), 1);
  EXPECT_EQ(std::count(names.begin(), names.end(), plain), 0);
  // Nor are batonctl's reply channels (ctl-<pid>-<n>).
  for (const auto& n : names) EXPECT_NE(n.rfind("ctl-", 0), 0u) << n;
  std::string out;
  ASSERT_EQ(batonctl({"list"}, out), 0) << out;
  EXPECT_EQ(out.find(plain), std::string::npos) << out;
  baton::ticket t;
  EXPECT_FALSE(rx.try_receive(t, ec)) << "batonctl list sent a ticket to a channel that is not a service's";
}

// `batonctl stop`: the real baton-http stops gracefully, says how its connections ended, exits 0.
TEST(restart, batonctl_stop_json) {
  sample_http svc;
  ASSERT_NE(svc.port, 0);
  http_conn c;
  ASSERT_TRUE(c.connect(svc.port));
  response r;
  ASSERT_TRUE(c.get("/", r));
  std::string out;
  ASSERT_EQ(batonctl({"stop", svc.name, "--json"}, out), 0) << out;
  const auto o = parse_object(out);
  EXPECT_TRUE(boolean(o, "ok"));
  EXPECT_TRUE(boolean(o, "stopped"));
  EXPECT_EQ(integer(o, "old_generation"), 1);
  EXPECT_EQ(integer(o, "connections_closed"), 1);
  EXPECT_EQ(integer(o, "connections_not_moved"), 0);
  EXPECT_EQ(svc.first.wait(30s), 0) << "baton-http exits 0 after a graceful stop";
  EXPECT_FALSE(c.get("/", r)) << "the idle connection was closed";
  // Nothing left to stop: the name is free.
  EXPECT_EQ(batonctl({"stop", svc.name}, out), 1) << out;
}
