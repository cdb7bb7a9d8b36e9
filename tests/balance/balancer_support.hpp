#pragma once
// What the tests of the program baton-balancer (samples/) share: the program run by the test (a
// plain balancer, or a restartable front with --name) and keep-alive clients that check every
// response and note which worker process answered.
#include "../keeper/keeper_support.hpp"
#include "detail/platform.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace baton::test {

// baton-balancer run by the test, listening and serving its metrics on ports it chose itself
// (read back from its output).
struct balancer_run {
  std::string out = temp_path("balancer-out");
  child run;
  unsigned short port = 0, metrics_port = 0;
  std::set<std::uint32_t> worker_pids;  // every worker seen, killed at the end if still there
  std::string service;  // --name: a restartable front (no --metrics: its port would change)

  // `service` empty: a plain balancer with --metrics; else `--name service`. `listen`: HOST:PORT.
  explicit balancer_run(const std::vector<std::string>& options, std::string service_name = "",
                        const std::string& listen = "127.0.0.1:0")
      : service(std::move(service_name)) {
    std::vector<std::string> argv{program("baton-balancer"), "--listen", listen};
    if (service.empty()) argv.insert(argv.end(), {"--metrics", "127.0.0.1:0"});
    else argv.insert(argv.end(), {"--name", service});
    argv.insert(argv.end(), options.begin(), options.end());
    run = child::run_to_file(argv, out);
    // It prints its ports once its workers have joined and it listens.
    for (const auto until = steady::now() + 60s; steady::now() < until && run.running(); nap(20ms)) {
      const std::string text = read_file(out);
      port = port_after(text, "listening on 127.0.0.1:");
      metrics_port = port_after(text, "metrics on http://127.0.0.1:");
      if (port != 0 && (metrics_port != 0 || !service.empty())) break;
    }
  }
  ~balancer_run() {
    // Gracefully: `batonctl stop` for a restartable front (whichever generation runs now), else
    // SIGTERM where there is one (the balancer then removes its channel, and its workers, seeing
    // it gone, exit and remove theirs); whatever is left is killed, and what a killed process left
    // in /dev/shm is removed (Windows: its objects die with it).
    if (!service.empty()) {
      std::string ignored;
      if (batonctl({"stop", service}, ignored) != 0) kill_service_generation(service);
    }
    if (terminate_process(run.pid())) run.wait(20s);
    run.kill();
    for (auto pid : worker_pids)
      if (process_exists(pid)) kill_process(pid);
    for (const auto until = steady::now() + 10s; steady::now() < until; nap(10ms))
      if (std::none_of(worker_pids.begin(), worker_pids.end(), [](auto p) { return process_exists(p); })) break;
    baton::error_code ec;
    const std::string mine = service.empty() ? "balancer-" + std::to_string(run.pid()) : service;
    for (const auto& n : baton::detail::list_channel_names(ec))
      if (n.rfind(mine, 0) == 0) baton::channel::remove_stale(n, ec);
    remove_file(out);
  }

  static unsigned short port_after(const std::string& text, const std::string& what) {
    const auto at = text.find(what);
    return at == std::string::npos ? 0 : static_cast<unsigned short>(std::atoi(text.c_str() + at + what.size()));
  }

  std::string metrics() {
    http_conn c;
    response r;
    if (!c.connect(metrics_port) || !c.get("/metrics", r) || r.status != 200) return "";
    return r.body;
  }
  // The value of the sample `name{service="…"<labels>}` (0 if absent).
  std::uint64_t metric(const std::string& text, const std::string& name, const std::string& labels = "") {
    const std::string label = service.empty() ? "balancer-" + std::to_string(run.pid()) : service;
    const std::string key = name + "{service=\"" + label + "\"" + labels + "} ";
    const auto at = text.find("\n" + key);
    return at == std::string::npos ? 0 : std::stoull(text.substr(at + 1 + key.size()));
  }
};

// Keep-alive connections, each issuing GET /?c=<conn>&n=<seq> back to back until stopped (or a
// bound in time or count). Every response must echo its own request target: a request lost or
// answered twice shows as a mismatch. A failed connection reconnects; its failure is charged to
// the worker that answered it last.
class keepalive_load {
 public:
  keepalive_load(unsigned short port, unsigned conns) : port_(port), conns_(conns) {
    for (unsigned i = 0; i < conns; ++i) threads_.emplace_back([this, i] { run(i); });
  }
  ~keepalive_load() { finish(); }
  void finish() {
    stop_ = true;
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

  // Worker pid that answered each connection last (0: not answered since it (re)connected).
  std::vector<std::uint32_t> owners() const {
    std::vector<std::uint32_t> v;
    for (auto& c : conns_) v.push_back(c.pid.load());
    return v;
  }
  std::map<std::uint32_t, unsigned> spread() const {
    std::map<std::uint32_t, unsigned> m;
    for (auto pid : owners()) ++m[pid];
    return m;
  }
  std::uint64_t ok() const { return ok_.load(); }
  // "id (moves m, failures f)" of each connection last answered by `pid`.
  std::string history_of(std::uint32_t pid) const {
    std::string t;
    for (std::size_t i = 0; i < conns_.size(); ++i)
      if (conns_[i].pid == pid)
        t += std::to_string(i) + " (moves " + std::to_string(conns_[i].moves) + ", failures " +
             std::to_string(conns_[i].failures) + ") ";
    return t;
  }
  std::uint64_t mismatches() const { return mismatches_.load(); }
  std::uint64_t moved() const { return moved_.load(); }
  // Failed requests charged to worker `pid`.
  std::uint64_t failures_of(std::uint32_t pid) {
    std::lock_guard lk(m_);
    return failures_[pid];
  }
  // The first failures: which connection, on which worker, how.
  std::string failure_log() {
    std::lock_guard lk(m_);
    return log_;
  }
  std::uint64_t failures() {
    std::lock_guard lk(m_);
    std::uint64_t n = 0;
    for (auto& [pid, k] : failures_) n += k;
    return n;
  }

 private:
  struct conn_state {
    std::atomic<std::uint32_t> pid{0};
    std::atomic<unsigned> moves{0}, failures{0};
  };

  void run(unsigned id) {
    constexpr std::uint64_t max_requests = 1'000'000;
    const auto until = steady::now() + 240s;
    http_conn c;
    bool open = false;
    for (std::uint64_t seq = 0; !stop_ && seq < max_requests && steady::now() < until; ++seq) {
      if (!open && !(open = c.connect(port_))) {
        nap(10ms);
        continue;
      }
      const std::string target = "/?c=" + std::to_string(id) + "&n=" + std::to_string(seq);
      response r;
      const std::uint32_t before = conns_[id].pid.load();
      const bool sent = c.send("GET " + target + " HTTP/1.1\r\nHost: t\r\n\r\n"), answered = sent && c.read(r);
      if (!answered || r.status != 200) {
        {
          std::lock_guard lk(m_);
          ++failures_[before];
          if (log_.size() < 4000)
            log_ += "conn " + std::to_string(id) + " request " + std::to_string(seq) + " on pid " + std::to_string(before) +
                    " (moves " + std::to_string(conns_[id].moves) + "): " +
                    (!sent ? "write failed" : !answered ? "no answer" : "status " + std::to_string(r.status)) + "; ";
        }
        conns_[id].pid = 0;
        ++conns_[id].failures;
        open = false;
        continue;
      }
      if (r.headers["x-baton-request"] != target) ++mismatches_;
      const auto pid = static_cast<std::uint32_t>(r.header_u64("x-baton-pid"));
      if (before != 0 && pid != before) ++moved_, ++conns_[id].moves;  // the same TCP connection, now another worker
      conns_[id].pid = pid;
      ++ok_;
    }
  }

  unsigned short port_;
  std::vector<conn_state> conns_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> ok_{0}, mismatches_{0}, moved_{0};
  std::mutex m_;
  std::map<std::uint32_t, std::uint64_t> failures_;
  std::string log_;
};

inline std::string show(const std::map<std::uint32_t, unsigned>& s) {
  std::string t;
  for (auto& [pid, n] : s) t += (pid ? "pid " + std::to_string(pid) : std::string("none")) + "=" + std::to_string(n) + " ";
  return t;
}

}  // namespace baton::test
