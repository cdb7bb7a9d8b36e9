#pragma once
// Shared by the keeper's tests (keeper_test.cpp, keeper_service_test.cpp): the sample programs
// (baton-run, baton-http, batonctl) and what a test asks of the service they run.
#include "../restart/restart_support.hpp"
#include "test_prelude.hpp"

namespace baton::test {

using namespace std::chrono_literals;

using steady = std::chrono::steady_clock;

inline std::string program(const std::string& name) { return helper_exe("../samples/" + name); }

inline int batonctl(const std::vector<std::string>& args, std::string& out) {
  std::vector<std::string> argv{program("batonctl")};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_capture(argv, out);
}

// A loopback port nobody listens on now (baton-http is then told to listen on it).
inline unsigned short free_port() {
  asio::io_context ioc;
  tcp::acceptor a(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

// The generation that answers a new connection's GET / (0: no answer).
inline std::uint64_t generation_answering(unsigned short port) {
  http_conn c;
  response r;
  if (!c.connect(port) || !c.get("/", r) || r.status != 200) return 0;
  return r.header_u64("x-baton-generation");
}

inline bool wait_generation(unsigned short port, std::uint64_t g, std::chrono::seconds within = 60s) {
  const auto until = steady::now() + within;
  while (steady::now() < until) {
    if (generation_answering(port) == g) return true;
    nap(50ms);
  }
  return false;
}

// Ends the load and checks that it saw no failure and reached `generation` (and at least
// `min_ok` good responses).
inline void finish_clean_load(load& l, std::uint64_t generation, std::uint64_t min_ok = 0) {
  l.finish();
  EXPECT_EQ(l.failed.load(), 0u);
  EXPECT_EQ(l.conn_errors.load(), 0u);
  EXPECT_EQ(l.sequence_errors.load(), 0u);
  EXPECT_GE(l.ok.load(), min_ok);
  EXPECT_TRUE(l.generations.count(generation)) << "the load never reached generation " << generation;
}

// How many times `text` contains `what`.
inline std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace baton::test
