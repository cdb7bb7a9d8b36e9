#pragma once
// Shared by the hot-restart tests: a blocking HTTP/1.1 client, keep-alive client load that checks
// every response, and a service run by helper processes of the test binary (role http_gen, in
// restart_test.cpp).
#include "net_helpers.hpp"
#include "test_prelude.hpp"
#include "test_support.hpp"

#include <baton/restart.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>

namespace baton::test {

using namespace baton::test::prelude;

struct response {
  int status = 0;
  std::map<std::string, std::string> headers;
  std::string body;
  std::uint64_t header_u64(const std::string& k) const {
    auto it = headers.find(k);
    return it == headers.end() ? 0 : std::stoull(it->second);
  }
};

// Reads one HTTP/1.1 response from `s` (blocking); `buf` keeps what was read beyond it.
inline bool read_response(tcp::socket& s, std::string& buf, response& r) {
  baton::error_code ec;
  std::size_t hdr_end;
  while ((hdr_end = buf.find("\r\n\r\n")) == std::string::npos) {
    char tmp[4096];
    const auto n = s.read_some(asio::buffer(tmp), ec);
    if (ec == asio::error::interrupted) continue;  // io_uring task work (Asio's io_uring backend, docs/io_uring.md)
    if (ec) return false;
    buf.append(tmp, n);
  }
  r = response{};
  const std::string head = buf.substr(0, hdr_end);
  if (head.rfind("HTTP/1.1 ", 0) != 0) return false;
  r.status = std::atoi(head.c_str() + 9);
  std::size_t pos = head.find("\r\n");
  while (pos != std::string::npos && pos + 2 < head.size()) {
    const auto next = head.find("\r\n", pos + 2);
    const auto line = head.substr(pos + 2, (next == std::string::npos ? head.size() : next) - pos - 2);
    const auto colon = line.find(':');
    if (colon != std::string::npos) {
      std::string k = line.substr(0, colon);
      for (auto& ch : k) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      r.headers[k] = line.substr(colon + 2);
    }
    pos = next;
  }
  const std::size_t len = r.header_u64("content-length");
  buf.erase(0, hdr_end + 4);
  while (buf.size() < len) {
    char tmp[4096];
    const auto n = s.read_some(asio::buffer(tmp), ec);
    if (ec == asio::error::interrupted) continue;
    if (ec) return false;
    buf.append(tmp, n);
  }
  r.body = buf.substr(0, len);
  buf.erase(0, len);
  return true;
}

// A blocking HTTP/1.1 client connection with receive timeouts.
struct http_conn {
  asio::io_context ioc;
  tcp::socket s{ioc};
  std::string buf;

  bool connect(unsigned short port) {
    buf.clear();
    return try_connect_loopback(ioc, s, port);
  }
  bool send(const std::string& raw) {
    baton::error_code ec;
    write_all(s, asio::buffer(raw), ec);
    return !ec;
  }
  bool read(response& r) { return read_response(s, buf, r); }
  bool get(const std::string& target, response& r) {
    return send("GET " + target + " HTTP/1.1\r\nHost: t\r\n\r\n") && read(r);
  }
};

// Keep-alive clients hammering the server, checking every response.
struct load {
  unsigned short port;
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> ok{0}, failed{0}, conn_errors{0}, sequence_errors{0};
  std::mutex m;
  std::set<std::uint64_t> generations;
  std::vector<std::thread> threads;

  load(unsigned short p, unsigned conns) : port(p) {
    for (unsigned i = 0; i < conns; ++i) threads.emplace_back([this] { run(); });
  }
  ~load() { finish(); }
  void finish() {
    stop = true;
    for (auto& t : threads)
      if (t.joinable()) t.join();
  }
  void run() {
    http_conn c;
    if (!c.connect(port)) {
      ++conn_errors;
      return;
    }
    std::uint64_t expect = 1;
    std::set<std::uint64_t> gens;
    while (!stop) {
      response r;
      if (!c.get("/", r) || r.status != 200) {
        ++failed;
        if (!c.connect(port)) ++conn_errors;
        expect = 1;
        continue;
      }
      if (r.header_u64("x-baton-requests") != expect) ++sequence_errors;
      expect = r.header_u64("x-baton-requests") + 1;
      gens.insert(r.header_u64("x-baton-generation"));
      ++ok;
    }
    std::lock_guard lk(m);
    generations.insert(gens.begin(), gens.end());
  }
  std::uint64_t ok_now() const { return ok.load(); }
};

// A service run by helper processes: the first generation is our child; later ones are started
// by their predecessors. Whatever generation is last is killed at the end.
struct running_service {
  std::string name = unique_name("rs");
  name_guard guard{name};
  std::string port_file = temp_path("port");
  std::string mode_file = temp_path("mode");
  child first;
  unsigned short port = 0;

  /// `mode`: written to the mode file before the first generation starts (see http_gen).
  explicit running_service(const std::string& first_generation_fault = "", const std::string& mode = "") {
    if (!mode.empty()) write_file(mode_file, mode);
    // The first generation is our child: a fault for it travels in its environment.
    set_env("BATON_FAULT", first_generation_fault);
    first = child::spawn("http_gen", {name, port_file, mode_file});
    set_env("BATON_FAULT", "");
    EXPECT_TRUE(wait_for_file(port_file, 60s));
    port = static_cast<unsigned short>(std::stoi(read_file(port_file)));
  }
  ~running_service() {
    for (int i = 0; i < 3; ++i) {
      const auto pid = service_generation_pid(name);
      if (pid == 0) break;
      kill_process(pid);
      nap(50ms);
    }
    first.kill();
    remove_file(port_file);
    for (int g = 1; g <= 32; ++g) remove_file(pid_file(g));
    remove_file(mode_file);
  }
  /// Written by generation `g` of http_gen once it has started: its pid.
  std::string pid_file(std::uint64_t g) const { return port_file + ".gen" + std::to_string(g); }
  baton::restart_report restart(baton::error_code& ec, std::chrono::milliseconds timeout = 120s) {
    return baton::request_restart(name, "", timeout, ec);
  }
  std::uint64_t generation() {
    baton::error_code ec;
    const auto st = baton::request_status(name, 10s, ec);
    const auto p = st.find("generation ");
    return ec || p == std::string::npos ? 0 : std::stoull(st.substr(p + 11));
  }
};

inline void wait_for_requests(load& l, std::uint64_t more) {
  const auto until = std::chrono::steady_clock::now() + 60s;
  const auto target = l.ok_now() + more;
  while (l.ok_now() < target && std::chrono::steady_clock::now() < until) nap(5ms);
}

}  // namespace baton::test
