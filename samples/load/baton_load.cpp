// baton-load: an HTTP/1.1 keep-alive load generator that can restart the server under load and
// report what the clients saw. N connections each send `GET /` back to back (closed loop) for a
// fixed time; every response is checked (status 200, complete body) and its X-Baton-Generation
// and X-Baton-Pid headers are recorded. Optionally a restart command (e.g. `batonctl restart
// NAME`) runs K times during the load; the report compares latency just before, during and just
// after each restart. Exit status 0 only if no request failed, no connection failed and every
// restart command exited 0.
//
//   baton-load --target HOST:PORT [--connections N] [--duration SECS] [--threads T]
//              [--restart-cmd "CMD" [--restarts K] [--first-restart-at S] [--restart-interval S]]
//              [--upload-every N [--upload-size BYTES]] [--svg FILE] [--json FILE] [--quiet]
//   baton-load --stand-in [same options, no --target]   test mode: serves itself (see below)
//   baton-load --serve HOST:PORT [--generation G] [--duration SECS]   the stand-in server alone
//
// The stand-in server answers every request with 200 and the headers a Baton sample server
// sends, so the tool can be tested before (and without) a real server. Under --stand-in it runs
// on a thread of this process, behind a real loopback socket; each restart command that exits 0
// bumps its generation, so the per-generation accounting is exercised too.
//
// This tool is a client of any HTTP/1.1 server and deliberately does not link Baton itself.
#include "../cli.hpp"

#include <boost/asio.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <charconv>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

// The few operating-system calls this sample needs, kept in one place.
#ifdef _WIN32
#include <io.h>
#include <windows.h>
#else
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;
using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace platform {

#ifdef _WIN32
void init() {}
std::uint64_t process_id() { return ::GetCurrentProcessId(); }
bool stderr_is_tty() { return ::_isatty(::_fileno(stderr)) != 0; }
// _popen runs `cmd.exe /c CMD`. When CMD starts with a quote, cmd.exe removes the first and the
// last quote of the line, which breaks a quoted program path followed by quoted arguments; one
// extra pair around the whole line is what it removes instead.
FILE* open_pipe(const std::string& cmd) { return ::_popen(("\"" + cmd + "\"").c_str(), "r"); }
// _pclose returns the command's exit code.
int close_pipe(FILE* f) { return ::_pclose(f); }
// Winsock sockets are inheritable by default, and _popen starts its child with inheritance on.
void not_inherited(SOCKET s) { ::SetHandleInformation(reinterpret_cast<HANDLE>(s), HANDLE_FLAG_INHERIT, 0); }
#else
// A write to a connection the server has closed must fail with EPIPE, not kill the tool. The
// soft limit on descriptors (often 1024) is raised to the hard one: each connection takes one,
// two with --stand-in.
void init() {
  std::signal(SIGPIPE, SIG_IGN);
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}
std::uint64_t process_id() { return static_cast<std::uint64_t>(::getpid()); }
bool stderr_is_tty() { return ::isatty(::fileno(stderr)) != 0; }
FILE* open_pipe(const std::string& cmd) { return ::popen(cmd.c_str(), "r"); }
int close_pipe(FILE* f) {
  const int st = ::pclose(f);
  if (st == -1) return -1;
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return -1;
}
// Asio's sockets are not close-on-exec, and popen's child would otherwise keep copies.
void not_inherited(int fd) { ::fcntl(fd, F_SETFD, FD_CLOEXEC); }
#endif

}  // namespace platform

namespace {

constexpr auto tuple_aw = asio::as_tuple(asio::use_awaitable);
constexpr auto bucket_width = 100ms;
constexpr auto connect_timeout = 5s;
constexpr auto request_timeout = 5s;
// After the duration, in-flight requests get this long (more than one request timeout).
constexpr auto grace = 6s;
// A restart command still running this long after the load ended is given up on.
constexpr auto restart_grace = 10s;

double seconds(clock_type::duration d) { return std::chrono::duration<double>(d).count(); }

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Latency histogram: log-linear bins over microseconds, 16 per power of two (each bin at most
// 1/16 wide, so a percentile read from it is within ~3 % of the true value). 448 bins reach 2^31 us.

class histogram {
 public:
  static constexpr std::size_t bins = 448;

  void add(std::uint64_t us) {
    ++n_[bin_of(us)];
    ++count_;
  }
  void merge(const histogram& o) {
    for (std::size_t i = 0; i < bins; ++i) n_[i] += o.n_[i];
    count_ += o.count_;
  }
  std::uint64_t count() const { return count_; }

  /// The p-quantile (0..1) in microseconds, or NaN without samples.
  double percentile_us(double p) const {
    if (count_ == 0) return std::nan("");
    const auto rank =
        std::max<std::uint64_t>(1, static_cast<std::uint64_t>(std::ceil(p * static_cast<double>(count_))));
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < bins; ++i) {
      seen += n_[i];
      if (seen >= rank) return bin_mid(i);
    }
    return bin_mid(bins - 1);
  }

 private:
  static std::size_t bin_of(std::uint64_t us) {
    us = std::min<std::uint64_t>(us, (std::uint64_t{1} << 31) - 1);
    if (us < 16) return static_cast<std::size_t>(us);
    const int msb = static_cast<int>(std::bit_width(us)) - 1;  // >= 4
    const auto mantissa = (us >> (msb - 4)) & 15;
    return static_cast<std::size_t>((msb - 3) * 16 + mantissa);
  }
  static double bin_mid(std::size_t b) {
    if (b < 16) return static_cast<double>(b) + 0.5;
    const std::size_t k = b / 16, m = b % 16;
    const double width = static_cast<double>(std::uint64_t{1} << (k - 1));
    return static_cast<double>((16 + m) << (k - 1)) + width / 2;
  }

  std::array<std::uint64_t, bins> n_{};
  std::uint64_t count_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Configuration and shared state.

struct options {
  std::string target;  // HOST:PORT as given (also the Host header)
  bool stand_in = false;
  unsigned stand_in_fault = 0;  // stand-in drops every Nth request unanswered (tests)
  unsigned connections = 200;
  double duration_s = 10;
  unsigned threads = std::clamp(std::thread::hardware_concurrency(), 1u, 4u);
  std::string restart_cmd;
  unsigned restarts = 0;
  std::optional<double> first_restart_at, restart_interval;
  unsigned upload_every = 0;
  std::size_t upload_size = 64 * 1024;
  std::string svg, json;
  bool quiet = false;
};

// Counters every thread updates; read by the main thread for the progress line.
struct shared_state {
  clock_type::time_point t0, end;
  tcp::endpoint endpoint;
  std::string get_request, upload_request;
  unsigned upload_every = 0;
  std::size_t n_buckets = 0;
  std::atomic<std::uint64_t> ok{0}, failed{0}, connect_errors{0};
  std::atomic<int> open_connections{0};
  std::atomic<int> running_connections{0};
  std::atomic<std::uint64_t> max_generation{0};
  // Held while a socket is created and made non-inheritable, and while the restart command is
  // started, so that no child process is started between the two.
  std::mutex spawn_mutex;

  std::size_t bucket_of(clock_type::time_point t) const {
    const auto i = (t - t0) / bucket_width;
    return static_cast<std::size_t>(std::clamp<std::int64_t>(i, 0, static_cast<std::int64_t>(n_buckets) - 1));
  }
};

// What one I/O thread saw; written by that thread only, merged after the run.
struct thread_stats {
  struct bucket {
    std::uint64_t ok = 0, failed = 0;
    std::unique_ptr<histogram> latency;  // allocated on first use
  };
  std::vector<bucket> timeline;
  std::map<std::uint64_t, std::uint64_t> per_generation;  // 0: header missing
  std::set<std::uint64_t> pids;
  std::map<std::string, std::uint64_t> failure_reasons;
  std::uint64_t pid_switches = 0;   // same connection, next response from another pid
  std::uint64_t server_closes = 0;  // a complete response with `Connection: close`
  std::uint64_t connects = 0;     // successful connects, the first one included
};

std::uint64_t header_number(const http::response<http::string_body>& res, std::string_view name) {
  const auto v = res[beast::string_view(name.data(), name.size())];
  std::uint64_t n = 0;
  const auto r = std::from_chars(v.data(), v.data() + v.size(), n);
  return r.ec == std::errc{} ? n : 0;
}

// ---------------------------------------------------------------------------------------------
// One keep-alive client connection.

struct client_conn {
  explicit client_conn(const asio::any_io_executor& ex) : sock(ex), watchdog(ex) {}
  tcp::socket sock;
  asio::steady_timer watchdog;
  clock_type::time_point deadline = clock_type::now() + connect_timeout;
  bool done = false, timed_out = false;

  // Deadlines only move forward in the closed loop, so the watchdog, already waiting for an
  // earlier deadline, wakes up, sees it has not passed, and waits again; cancel only if earlier.
  void set_deadline(clock_type::time_point d) {
    deadline = d;
    if (watchdog.expiry() > d) watchdog.cancel();
  }
};

// Closes the socket when the current operation's deadline passes; the pending operation then
// fails with operation_aborted and `timed_out` tells why.
asio::awaitable<void> watch(std::shared_ptr<client_conn> c) {
  while (!c->done) {
    c->watchdog.expires_at(c->deadline);
    co_await c->watchdog.async_wait(tuple_aw);
    if (c->done) break;
    if (clock_type::now() >= c->deadline) {
      c->timed_out = true;
      boost::system::error_code ec;
      c->sock.close(ec);
      c->deadline = clock_type::now() + request_timeout;
    }
  }
}

asio::awaitable<void> run_connection(shared_state& g, thread_stats& st) {
  auto ex = co_await asio::this_coro::executor;
  auto c = std::make_shared<client_conn>(ex);
  asio::co_spawn(ex, watch(c), asio::detached);
  asio::steady_timer pause(ex);
  beast::flat_buffer buf;
  bool connected = false;
  std::uint64_t last_pid = 0;
  unsigned n_requests = 0;

  auto fail = [&](std::string reason, bool connect_error) {
    auto& b = st.timeline[g.bucket_of(clock_type::now())];
    ++b.failed;
    ++st.failure_reasons[std::move(reason)];
    ++(connect_error ? g.connect_errors : g.failed);
    if (connected) --g.open_connections;
    connected = false;
    boost::system::error_code ec;
    c->sock.close(ec);
  };

  while (clock_type::now() < g.end) {
    if (!connected) {
      c->timed_out = false;
      c->set_deadline(clock_type::now() + connect_timeout);
      boost::system::error_code ec;
      {
        std::lock_guard lk(g.spawn_mutex);
        c->sock.open(g.endpoint.protocol(), ec);
        if (!ec) platform::not_inherited(c->sock.native_handle());
      }
      if (!ec) std::tie(ec) = co_await c->sock.async_connect(g.endpoint, tuple_aw);
      if (ec) {
        fail(c->timed_out ? "connect: timeout" : "connect: " + ec.message(), true);
        // Back off a little, so a server that is down is not hammered by every connection.
        pause.expires_after(100ms);
        co_await pause.async_wait(tuple_aw);
        continue;
      }
      c->sock.set_option(tcp::no_delay(true), ec);
      connected = true;
      ++g.open_connections;
      ++st.connects;
      buf.clear();
      last_pid = 0;
    }

    const bool upload = g.upload_every != 0 && ++n_requests % g.upload_every == 0;
    const auto t_start = clock_type::now();
    c->set_deadline(t_start + request_timeout);
    auto [wec, wn] =
        co_await asio::async_write(c->sock, asio::buffer(upload ? g.upload_request : g.get_request), tuple_aw);
    if (wec) {
      fail(c->timed_out ? "write: timeout" : "write: " + wec.message(), false);
      continue;
    }
    http::response_parser<http::string_body> parser;
    parser.body_limit(1 << 20);
    auto [rec, rn] = co_await http::async_read(c->sock, buf, parser, tuple_aw);
    const auto t_end = clock_type::now();
    if (rec) {
      if (c->timed_out)
        fail("read: timeout", false);
      else if (rec == http::error::end_of_stream)
        fail("read: connection closed before the response", false);
      else if (rec == http::error::partial_message)
        fail("read: connection closed mid-response", false);
      else
        fail("read: " + rec.message(), false);
      continue;
    }
    const auto& res = parser.get();
    auto& b = st.timeline[g.bucket_of(t_end)];
    if (res.result_int() != 200) {
      ++b.failed;
      ++st.failure_reasons["status " + std::to_string(res.result_int())];
      ++g.failed;
    } else {
      ++b.ok;
      if (!b.latency) b.latency = std::make_unique<histogram>();
      b.latency->add(
          static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(t_end - t_start).count()));
      const auto gen = header_number(res, "X-Baton-Generation");
      const auto pid = header_number(res, "X-Baton-Pid");
      ++st.per_generation[gen];
      if (pid != 0) {
        st.pids.insert(pid);
        if (last_pid != 0 && pid != last_pid) ++st.pid_switches;
        last_pid = pid;
      }
      for (auto m = g.max_generation.load(); gen > m && !g.max_generation.compare_exchange_weak(m, gen);) {
      }
      ++g.ok;
    }
    if (!res.keep_alive()) {  // a polite close is not a failure; the next loop connects
      ++st.server_closes;
      --g.open_connections;
      connected = false;
      boost::system::error_code ec;
      c->sock.shutdown(tcp::socket::shutdown_both, ec);
      c->sock.close(ec);
    }
  }
  if (connected) --g.open_connections;
  boost::system::error_code ec;
  c->sock.shutdown(tcp::socket::shutdown_both, ec);
  c->sock.close(ec);
  c->done = true;
  c->watchdog.cancel();
  --g.running_connections;
}

// ---------------------------------------------------------------------------------------------
// The stand-in server: 200 with X-Baton-Generation and X-Baton-Pid, keep-alive, any method.

class stand_in_server {
 public:
  stand_in_server(const tcp::endpoint& ep, std::uint64_t generation, unsigned fault_every)
      : acceptor_(ioc_, ep), generation_(generation), fault_every_(fault_every) {
    platform::not_inherited(acceptor_.native_handle());
    asio::co_spawn(ioc_, accept_loop(), asio::detached);
    thread_ = std::thread([this] { ioc_.run(); });
  }
  ~stand_in_server() {
    ioc_.stop();
    thread_.join();
  }
  tcp::endpoint local_endpoint() const { return acceptor_.local_endpoint(); }
  void bump_generation() { ++generation_; }
  // Runs the server on the calling thread too (for --serve) until `until`.
  void wait_until(clock_type::time_point until) {
    while (clock_type::now() < until)
      std::this_thread::sleep_for(std::min<clock_type::duration>(until - clock_type::now(), 1s));
  }

 private:
  asio::awaitable<void> accept_loop() {
    for (;;) {
      auto [ec, s] = co_await acceptor_.async_accept(tuple_aw);
      if (ec) co_return;
      platform::not_inherited(s.native_handle());
      s.set_option(tcp::no_delay(true), ec);
      asio::co_spawn(ioc_, session(std::move(s)), asio::detached);
    }
  }
  asio::awaitable<void> session(tcp::socket s) {
    // With room reserved, Beast reads a request body in 64 KiB pieces; otherwise it grows the
    // buffer 512 bytes per read, and each read costs a wineserver round trip under Wine.
    beast::flat_buffer buf;
    buf.reserve(128 * 1024);
    const std::string pid = std::to_string(platform::process_id());
    for (;;) {
      http::request_parser<http::string_body> req;
      req.body_limit(16 << 20);
      auto [ec, n] = co_await http::async_read(s, buf, req, tuple_aw);
      if (ec) co_return;
      if (fault_every_ != 0 && ++served_ % fault_every_ == 0) co_return;  // drop it unanswered
      http::response<http::string_body> res{http::status::ok, 11};
      res.set(http::field::content_type, "text/plain");
      res.set("X-Baton-Generation", std::to_string(generation_.load()));
      res.set("X-Baton-Pid", pid);
      res.body() = "ok\n";
      res.keep_alive(req.get().keep_alive());
      res.prepare_payload();
      auto [wec, wn] = co_await http::async_write(s, res, tuple_aw);
      if (wec || !res.keep_alive()) co_return;
    }
  }

  asio::io_context ioc_;
  tcp::acceptor acceptor_;
  std::atomic<std::uint64_t> generation_;
  unsigned fault_every_;
  std::uint64_t served_ = 0;  // touched by the server thread only
  std::thread thread_;
};

// ---------------------------------------------------------------------------------------------
// Restarts, run one after another on their own thread.

struct restart_record {
  double scheduled_s = 0;
  double start_s = -1, end_s = -1;  // relative to the start of the load; -1: not started / not ended
  int exit_status = -1;
  std::string output;  // the command's line (stdout and stderr; see restart_runner::run)
  std::string error;   // why it did not run, if so
};

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) s.pop_back();
  std::size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  return s.substr(i);
}

// Everything written to stderr goes through here, so that events do not tear the progress line.
class console {
 public:
  explicit console(bool quiet) : quiet_(quiet), tty_(platform::stderr_is_tty()) {}
  void progress(const std::string& line) {
    if (quiet_) return;
    std::lock_guard lk(m_);
    if (tty_)
      std::fprintf(stderr, "\r%-100s", line.c_str());
    else
      std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
    pending_ = tty_;
  }
  void event(const std::string& line) {
    if (quiet_) return;
    std::lock_guard lk(m_);
    std::fprintf(stderr, "%s%s\n", pending_ ? "\r\n" : "", line.c_str());
    std::fflush(stderr);
    pending_ = false;
  }
  void finish() {
    std::lock_guard lk(m_);
    if (pending_) std::fprintf(stderr, "\n");
    pending_ = false;
  }

 private:
  std::mutex m_;
  bool quiet_, tty_, pending_ = false;
};

struct restart_runner {
  std::vector<restart_record> records;  // guarded by m
  std::mutex m;
  std::condition_variable cv;
  bool stop = false, finished = false;

  void run(const std::string& cmd, shared_state& g, stand_in_server* stand_in, console& con) {
    for (std::size_t i = 0;; ++i) {
      double when = 0;
      {
        std::unique_lock lk(m);
        if (i >= records.size()) break;
        when = records[i].scheduled_s;
        const auto at = g.t0 + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(when));
        cv.wait_until(lk, at, [&] { return stop; });
        if (stop || clock_type::now() >= g.end) {
          records[i].error = "not started: the load had ended";
          continue;
        }
      }
      const auto start = clock_type::now();
      {
        std::lock_guard lk(m);
        records[i].start_s = seconds(start - g.t0);
      }
      con.event("restart " + std::to_string(i + 1) + ": running `" + cmd + "` at " +
                fmt("%.2f", seconds(start - g.t0)) + " s");
      FILE* f = nullptr;
      {
        std::lock_guard lk(g.spawn_mutex);
        f = platform::open_pipe(cmd + " 2>&1");
      }
      // The command's line: batonctl's verdict ("restarted ..." / "restart of ... failed: ...")
      // if it printed one, even when something else (a warning on stderr) came after it;
      // otherwise the last non-empty line.
      std::string last, verdict;
      int status = -1;
      if (f != nullptr) {
        char line[4096];
        while (std::fgets(line, sizeof line, f) != nullptr) {
          auto t = trim(line);
          if (t.rfind("restarted ", 0) == 0 || t.rfind("restart of ", 0) == 0) verdict = t;
          if (!t.empty()) last = std::move(t);
        }
        status = platform::close_pipe(f);
      }
      if (!verdict.empty()) last = std::move(verdict);
      const auto end = clock_type::now();
      if (f != nullptr && status == 0 && stand_in != nullptr) stand_in->bump_generation();
      {
        std::lock_guard lk(m);
        auto& r = records[i];
        r.end_s = seconds(end - g.t0);
        r.exit_status = status;
        r.output = last;
        if (f == nullptr) r.error = "could not start the command";
      }
      con.event("restart " + std::to_string(i + 1) + ": exit " + std::to_string(status) + " after " +
                fmt("%.3f", seconds(end - start)) + " s: " + last);
    }
    std::lock_guard lk(m);
    finished = true;
    cv.notify_all();
  }
};

// ---------------------------------------------------------------------------------------------
// Results: the merged timeline and the report, SVG and JSON written from it.

struct bucket_result {
  std::uint64_t ok = 0, failed = 0;
  histogram latency;
  int open = 0;
  std::uint64_t generation = 0;
};

struct window_stats {
  std::uint64_t requests = 0, failed = 0;
  double p50_ms = std::nan(""), p99_ms = std::nan("");
  bool covered = false;  // the window lies (at least partly) within the load
};

struct results {
  std::vector<bucket_result> timeline;
  double load_s = 0;
  std::uint64_t ok = 0, failed = 0, connect_errors = 0, stuck_at_stop = 0;
  std::uint64_t pid_switches = 0, server_closes = 0, connects = 0;
  histogram overall;
  std::map<std::uint64_t, std::uint64_t> per_generation;
  std::set<std::uint64_t> pids;
  std::map<std::string, std::uint64_t> failure_reasons;
  std::vector<restart_record> restarts;
  std::vector<std::array<window_stats, 3>> restart_windows;  // before, during, after

  // Buckets [floor(from/0.1), ceil(to/0.1)), clamped to the load.
  window_stats window(double from_s, double to_s) const {
    window_stats w;
    const double bw = seconds(bucket_width);
    const auto n = static_cast<std::int64_t>(timeline.size());
    const auto b0 = std::clamp<std::int64_t>(static_cast<std::int64_t>(std::floor(from_s / bw + 1e-9)), 0, n);
    const auto b1 = std::clamp<std::int64_t>(static_cast<std::int64_t>(std::ceil(to_s / bw - 1e-9)), 0, n);
    histogram h;
    for (auto b = b0; b < b1; ++b) {
      const auto& tb = timeline[static_cast<std::size_t>(b)];
      h.merge(tb.latency);
      w.requests += tb.ok;
      w.failed += tb.failed;
      w.covered = true;
    }
    w.p50_ms = h.percentile_us(0.50) / 1000;
    w.p99_ms = h.percentile_us(0.99) / 1000;
    return w;
  }
};

std::string ms(double v) { return std::isnan(v) ? "n/a" : fmt("%.2f", v); }

// `s` with each character that `table` names replaced by its escape; with `control`, any other
// control character (below 0x20) by what `control` makes of it.
std::string escaped(const std::string& s, std::initializer_list<std::pair<char, const char*>> table,
                    std::string (*control)(unsigned char) = nullptr) {
  std::string o;
  for (const char ch : s) {
    const auto hit = std::find_if(table.begin(), table.end(), [ch](const auto& e) { return e.first == ch; });
    if (hit != table.end())
      o += hit->second;
    else if (control && static_cast<unsigned char>(ch) < 0x20)
      o += control(static_cast<unsigned char>(ch));
    else
      o += ch;
  }
  return o;
}

std::string json_escape(const std::string& s) {
  return escaped(s, {{'"', "\\\""}, {'\\', "\\\\"}, {'\n', "\\n"}, {'\r', "\\r"}, {'\t', "\\t"}},
                 [](unsigned char ch) { return fmt("\\u%04x", ch); });
}
std::string json_num(double v) { return std::isnan(v) ? "null" : fmt("%.3f", v); }

std::string xml_escape(const std::string& s) {
  return escaped(s, {{'<', "&lt;"}, {'>', "&gt;"}, {'&', "&amp;"}, {'"', "&quot;"}});
}

// A "round" tick step (1, 2 or 5 times a power of ten) giving about `ticks` ticks up to `max`.
double nice_step(double max, int ticks) {
  if (!(max > 0)) return 1;
  const double raw = max / ticks;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / mag;
  return (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
}
std::string tick_label(double v, double step) {
  return step >= 1 ? fmt("%.0f", v) : step >= 0.1 ? fmt("%.1f", v) : fmt("%.2f", v);
}

std::string make_svg(const results& r, const options& o) {
  // The main plot, then the time axis, then a strip with the open connections.
  const double W = 1000, H = 530, left = 80, right = 80, top = 50, ph = 330;
  const double pw = W - left - right, strip_top = top + ph + 60, strip_h = 50;
  const double bw = seconds(bucket_width);
  const std::size_t n = r.timeline.size();
  const double t_max = std::max(bw, static_cast<double>(n) * bw);
  double rps_max = 0, p99_max = 0;
  for (const auto& b : r.timeline) {
    rps_max = std::max(rps_max, static_cast<double>(b.ok) / bw);
    if (b.latency.count() != 0) p99_max = std::max(p99_max, b.latency.percentile_us(0.99) / 1000);
  }
  const double rps_step = nice_step(rps_max, 6), p99_step = nice_step(p99_max, 6), t_step = nice_step(t_max, 10);
  const double rps_top = std::max(rps_step, std::ceil(rps_max / rps_step) * rps_step);
  const double p99_top = std::max(p99_step, std::ceil(p99_max / p99_step) * p99_step);
  auto x = [&](double t) { return left + pw * t / t_max; };
  auto y_rps = [&](double v) { return top + ph * (1 - v / rps_top); };
  auto y_p99 = [&](double v) { return top + ph * (1 - v / p99_top); };

  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
    << ' ' << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  s << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s << "<text x=\"" << left << "\" y=\"22\" font-size=\"15\" font-weight=\"bold\">"
    << xml_escape("baton-load: " + o.target + ", " + std::to_string(o.connections) + " keep-alive connections")
    << "</text>\n";
  s << "<text x=\"" << left << "\" y=\"38\" fill=\"#444\">" << r.ok << " requests ok, " << r.failed << " failed, "
    << r.connect_errors << " connection errors; overall p50 " << ms(r.overall.percentile_us(0.5) / 1000) << " ms, p99 "
    << ms(r.overall.percentile_us(0.99) / 1000) << " ms</text>\n";
  // Restart windows first, so the lines are drawn over them.
  for (std::size_t i = 0; i < r.restarts.size(); ++i) {
    const auto& rr = r.restarts[i];
    if (rr.start_s < 0) continue;
    const double end = rr.end_s < 0 ? t_max : std::min(rr.end_s, t_max);
    const double x0 = x(std::min(rr.start_s, t_max)), x1 = std::max(x(end), x0 + 2);
    s << "<rect x=\"" << x0 << "\" y=\"" << top << "\" width=\"" << x1 - x0 << "\" height=\"" << ph
      << "\" fill=\"#f4b942\" fill-opacity=\"0.35\"/>\n";
    s << "<text x=\"" << x0 + 3 << "\" y=\"" << top + 14 + 14 * static_cast<double>(i % 2)
      << "\" fill=\"#8a5a00\">restart " << i + 1 << " ("
      << (rr.end_s < 0 ? std::string("unfinished") : fmt("%.0f ms", (rr.end_s - rr.start_s) * 1000)) << ", exit "
      << rr.exit_status << ")</text>\n";
  }
  // Grid and axes.
  for (double v = 0; v <= rps_top + rps_step / 2; v += rps_step) {
    s << "<line x1=\"" << left << "\" x2=\"" << left + pw << "\" y1=\"" << y_rps(v) << "\" y2=\"" << y_rps(v)
      << "\" stroke=\"#e4e4e4\"/>\n";
    s << "<text x=\"" << left - 6 << "\" y=\"" << y_rps(v) + 4 << "\" text-anchor=\"end\" fill=\"#1f5fa8\">"
      << tick_label(v, rps_step) << "</text>\n";
  }
  for (double v = 0; v <= p99_top + p99_step / 2; v += p99_step)
    s << "<text x=\"" << left + pw + 6 << "\" y=\"" << y_p99(v) + 4 << "\" fill=\"#c0392b\">" << tick_label(v, p99_step)
      << "</text>\n";
  for (double t = 0; t <= t_max + t_step / 100; t += t_step) {
    s << "<line x1=\"" << x(t) << "\" x2=\"" << x(t) << "\" y1=\"" << top + ph << "\" y2=\"" << top + ph + 5
      << "\" stroke=\"#333\"/>\n";
    s << "<text x=\"" << x(t) << "\" y=\"" << top + ph + 18 << "\" text-anchor=\"middle\">" << tick_label(t, t_step)
      << "</text>\n";
  }
  s << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"none\" stroke=\"#333\"/>\n";
  s << "<text x=\"" << left + pw / 2 << "\" y=\"" << top + ph + 38
    << "\" text-anchor=\"middle\">time since start of load (s), " << fmt("%.0f", bw * 1000) << " ms buckets</text>\n";
  s << "<text transform=\"translate(22," << top + ph / 2
    << ") rotate(-90)\" text-anchor=\"middle\" fill=\"#1f5fa8\">requests/s</text>\n";
  s << "<text transform=\"translate(" << W - 18 << ',' << top + ph / 2
    << ") rotate(90)\" text-anchor=\"middle\" fill=\"#c0392b\">p99 latency (ms)</text>\n";
  // Requests/s: one point per bucket, at its middle.
  s << "<polyline fill=\"none\" stroke=\"#1f5fa8\" stroke-width=\"1.5\" points=\"";
  for (std::size_t i = 0; i < n; ++i)
    s << x((static_cast<double>(i) + 0.5) * bw) << ',' << y_rps(static_cast<double>(r.timeline[i].ok) / bw) << ' ';
  s << "\"/>\n";
  // p99: a path broken where a bucket has no completed request.
  s << "<path fill=\"none\" stroke=\"#c0392b\" stroke-width=\"1.5\" d=\"";
  bool pen_down = false;
  for (std::size_t i = 0; i < n; ++i) {
    if (r.timeline[i].latency.count() == 0) {
      pen_down = false;
      continue;
    }
    s << (pen_down ? 'L' : 'M') << x((static_cast<double>(i) + 0.5) * bw) << ','
      << y_p99(r.timeline[i].latency.percentile_us(0.99) / 1000) << ' ';
    pen_down = true;
  }
  s << "\"/>\n";
  // A dashed line where a higher generation first answered.
  for (std::size_t i = 1; i < n; ++i)
    if (r.timeline[i].generation > r.timeline[i - 1].generation && r.timeline[i - 1].generation != 0) {
      const double gx = x(static_cast<double>(i) * bw);
      s << "<line x1=\"" << gx << "\" x2=\"" << gx << "\" y1=\"" << top << "\" y2=\"" << top + ph
        << "\" stroke=\"#2e7d32\" stroke-dasharray=\"4 3\"/>"
        << "<text x=\"" << gx + 3 << "\" y=\"" << top + ph - 10 << "\" fill=\"#2e7d32\">generation "
        << r.timeline[i].generation << "</text>\n";
    }
  // Failures: a red mark under the plot for every bucket that had one.
  for (std::size_t i = 0; i < n; ++i)
    if (r.timeline[i].failed != 0)
      s << "<rect x=\"" << x(static_cast<double>(i) * bw) << "\" y=\"" << top + ph - 6 << "\" width=\""
        << std::max(2.0, pw * bw / t_max) << "\" height=\"6\" fill=\"red\"><title>" << r.timeline[i].failed
        << " failed</title></rect>\n";
  // Open connections, scaled to the configured number, so that a dip (reconnects) stands out.
  const double open_top = std::max<double>(o.connections, [&] {
    int m = 0;
    for (const auto& b : r.timeline) m = std::max(m, b.open);
    return static_cast<double>(m);
  }());
  s << "<rect x=\"" << left << "\" y=\"" << strip_top << "\" width=\"" << pw << "\" height=\"" << strip_h
    << "\" fill=\"none\" stroke=\"#999\"/>\n";
  s << "<text x=\"" << left - 6 << "\" y=\"" << strip_top + 4 << "\" text-anchor=\"end\" fill=\"#555\">"
    << fmt("%.0f", open_top) << "</text>";
  s << "<text x=\"" << left - 6 << "\" y=\"" << strip_top + strip_h + 4 << "\" text-anchor=\"end\" fill=\"#555\">0</text>\n";
  s << "<text x=\"" << left + 4 << "\" y=\"" << strip_top + strip_h + 16
    << "\" fill=\"#555\">open connections (sampled at the end of each bucket)</text>\n";
  s << "<polyline fill=\"none\" stroke=\"#555\" stroke-width=\"1.2\" points=\"";
  for (std::size_t i = 0; i < n; ++i)
    s << x((static_cast<double>(i) + 1) * bw) << ','
      << strip_top + strip_h * (1 - static_cast<double>(r.timeline[i].open) / open_top) << ' ';
  s << "\"/>\n";
  // Legend.
  const double lx = left + pw - 300, ly = top - 30;
  s << "<line x1=\"" << lx << "\" x2=\"" << lx + 20 << "\" y1=\"" << ly << "\" y2=\"" << ly
    << "\" stroke=\"#1f5fa8\" stroke-width=\"2\"/>"
    << "<text x=\"" << lx + 24 << "\" y=\"" << ly + 4 << "\">requests/s</text>\n";
  s << "<line x1=\"" << lx + 100 << "\" x2=\"" << lx + 120 << "\" y1=\"" << ly << "\" y2=\"" << ly
    << "\" stroke=\"#c0392b\" stroke-width=\"2\"/>"
    << "<text x=\"" << lx + 124 << "\" y=\"" << ly + 4 << "\">p99 latency</text>\n";
  s << "<rect x=\"" << lx + 210 << "\" y=\"" << ly - 6
    << "\" width=\"20\" height=\"12\" fill=\"#f4b942\" fill-opacity=\"0.35\"/>"
    << "<text x=\"" << lx + 234 << "\" y=\"" << ly + 4 << "\">restart</text>\n";
  s << "</svg>\n";
  return s.str();
}

std::string make_json(const results& r, const options& o) {
  std::ostringstream s;
  s << "{\n  \"target\": \"" << json_escape(o.target) << "\",\n  \"connections\": " << o.connections
    << ",\n  \"threads\": " << o.threads << ",\n  \"duration_s\": " << json_num(o.duration_s)
    << ",\n  \"load_s\": " << json_num(r.load_s) << ",\n";
  s << "  \"totals\": {\"requests_ok\": " << r.ok << ", \"failed_requests\": " << r.failed
    << ", \"connection_errors\": " << r.connect_errors << ", \"stuck_at_stop\": " << r.stuck_at_stop
    << ", \"requests_per_s\": " << json_num(static_cast<double>(r.ok) / o.duration_s)
    << ", \"p50_ms\": " << json_num(r.overall.percentile_us(0.5) / 1000)
    << ", \"p99_ms\": " << json_num(r.overall.percentile_us(0.99) / 1000) << ", \"pid_switches\": " << r.pid_switches
    << ", \"server_closes\": " << r.server_closes << ", \"connects\": " << r.connects << "},\n";
  s << "  \"generations\": {";
  for (auto it = r.per_generation.begin(); it != r.per_generation.end(); ++it)
    s << (it == r.per_generation.begin() ? "" : ", ") << '"' << it->first << "\": " << it->second;
  s << "},\n  \"pids\": [";
  for (auto it = r.pids.begin(); it != r.pids.end(); ++it) s << (it == r.pids.begin() ? "" : ", ") << *it;
  s << "],\n  \"failure_reasons\": {";
  for (auto it = r.failure_reasons.begin(); it != r.failure_reasons.end(); ++it)
    s << (it == r.failure_reasons.begin() ? "" : ", ") << '"' << json_escape(it->first) << "\": " << it->second;
  s << "},\n  \"restarts\": [";
  for (std::size_t i = 0; i < r.restarts.size(); ++i) {
    const auto& rr = r.restarts[i];
    s << (i ? "," : "") << "\n    {\"scheduled_s\": " << json_num(rr.scheduled_s)
      << ", \"start_s\": " << (rr.start_s < 0 ? "null" : json_num(rr.start_s))
      << ", \"end_s\": " << (rr.end_s < 0 ? "null" : json_num(rr.end_s)) << ", \"exit_status\": " << rr.exit_status
      << ", \"output\": \"" << json_escape(rr.output) << "\", \"error\": \"" << json_escape(rr.error) << "\"";
    static constexpr const char* names[3] = {"before", "during", "after"};
    for (int w = 0; w < 3; ++w) {
      const auto& ws = r.restart_windows[i][w];
      s << ", \"" << names[w] << "\": {\"requests\": " << ws.requests << ", \"failed\": " << ws.failed
        << ", \"p50_ms\": " << json_num(ws.p50_ms) << ", \"p99_ms\": " << json_num(ws.p99_ms) << "}";
    }
    s << "}";
  }
  s << "\n  ],\n  \"command\": \"" << json_escape(o.restart_cmd) << "\",\n";
  s << "  \"timeline\": {\"bucket_ms\": "
    << std::chrono::duration_cast<std::chrono::milliseconds>(bucket_width).count();
  auto column = [&](const char* name, auto get) {
    s << ",\n    \"" << name << "\": [";
    for (std::size_t i = 0; i < r.timeline.size(); ++i) s << (i ? "," : "") << get(r.timeline[i]);
    s << "]";
  };
  column("requests", [](const bucket_result& b) { return std::to_string(b.ok); });
  column("failures", [](const bucket_result& b) { return std::to_string(b.failed); });
  column("p50_ms", [](const bucket_result& b) { return json_num(b.latency.percentile_us(0.5) / 1000); });
  column("p99_ms", [](const bucket_result& b) { return json_num(b.latency.percentile_us(0.99) / 1000); });
  column("open_connections", [](const bucket_result& b) { return std::to_string(b.open); });
  column("generation", [](const bucket_result& b) { return std::to_string(b.generation); });
  s << "\n  }\n}\n";
  return s.str();
}

bool write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  return static_cast<bool>(f.flush());
}

// ---------------------------------------------------------------------------------------------
// The run.

int run_load(options o) {
  asio::io_context setup;
  std::unique_ptr<stand_in_server> stand_in;
  shared_state g;
  if (o.stand_in) {
    stand_in =
        std::make_unique<stand_in_server>(tcp::endpoint(asio::ip::address_v4::loopback(), 0), 1, o.stand_in_fault);
    g.endpoint = stand_in->local_endpoint();
    o.target = "127.0.0.1:" + std::to_string(g.endpoint.port());
  } else {
    const auto colon = o.target.rfind(':');
    if (colon == std::string::npos) throw std::invalid_argument("--target must be HOST:PORT");
    std::string host = o.target.substr(0, colon);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    tcp::resolver resolver(setup);
    const auto eps = resolver.resolve(host, o.target.substr(colon + 1), tcp::resolver::numeric_service);
    g.endpoint = eps.begin()->endpoint();
  }
  g.get_request = "GET / HTTP/1.1\r\nHost: " + o.target + "\r\nUser-Agent: baton-load\r\nAccept: */*\r\n\r\n";
  g.upload_request = "POST / HTTP/1.1\r\nHost: " + o.target +
                     "\r\nUser-Agent: baton-load\r\nContent-Type: application/octet-stream\r\n" +
                     "Content-Length: " + std::to_string(o.upload_size) + "\r\n\r\n";
  for (std::size_t i = 0; i < o.upload_size; ++i) g.upload_request += static_cast<char>('a' + i % 26);
  g.upload_every = o.upload_every;
  const auto duration = std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(o.duration_s));
  g.n_buckets = static_cast<std::size_t>((duration + grace) / bucket_width) + 2;

  console con(o.quiet);
  restart_runner runner;
  if (!o.restart_cmd.empty()) {
    const double first = o.first_restart_at.value_or(o.duration_s * 0.25);
    const double interval = o.restart_interval.value_or((o.duration_s - first) / o.restarts);
    for (unsigned i = 0; i < o.restarts; ++i) {
      runner.records.emplace_back();
      runner.records.back().scheduled_s = first + interval * i;
    }
  }
  if (!o.quiet) {
    std::fprintf(stderr, "baton-load: %u connections to %s for %.1f s on %u threads", o.connections, o.target.c_str(),
                 o.duration_s, o.threads);
    if (!runner.records.empty()) {
      std::fprintf(stderr, "; %zu restart(s) at", runner.records.size());
      for (const auto& r : runner.records) std::fprintf(stderr, " %.2f s", r.scheduled_s);
    }
    std::fprintf(stderr, "\n");
  }

  // Declared before the io_contexts: coroutine frames destroyed with them still refer to these.
  std::vector<thread_stats> stats(o.threads);
  for (auto& s : stats) s.timeline.resize(g.n_buckets);
  std::vector<std::unique_ptr<asio::io_context>> contexts;
  for (unsigned t = 0; t < o.threads; ++t) contexts.push_back(std::make_unique<asio::io_context>(1));

  g.t0 = clock_type::now();
  g.end = g.t0 + duration;
  g.running_connections = static_cast<int>(o.connections);
  for (unsigned i = 0; i < o.connections; ++i)
    asio::co_spawn(*contexts[i % o.threads], run_connection(g, stats[i % o.threads]), asio::detached);
  std::vector<std::thread> io_threads;
  for (auto& c : contexts) io_threads.emplace_back([&c] { c->run(); });
  std::thread restart_thread;
  if (!runner.records.empty()) restart_thread = std::thread([&] { runner.run(o.restart_cmd, g, stand_in.get(), con); });

  // Sample the gauges at the end of every bucket; print progress once a second.
  std::vector<int> open_samples(g.n_buckets, 0);
  std::vector<std::uint64_t> gen_samples(g.n_buckets, 0);
  std::uint64_t last_ok = 0;
  clock_type::time_point stopped_at;
  for (std::size_t k = 1;; ++k) {
    std::this_thread::sleep_until(g.t0 + static_cast<long long>(k) * bucket_width);
    const auto now = clock_type::now();
    if (k - 1 < g.n_buckets) {
      open_samples[k - 1] = g.open_connections.load();
      gen_samples[k - 1] = g.max_generation.load();
    }
    if (k % 10 == 0) {
      const auto ok = g.ok.load();
      con.progress(fmt("%6.1f s", seconds(now - g.t0)) + fmt("  %8.0f req/s", static_cast<double>(ok - last_ok)) +
                   "  open " + std::to_string(g.open_connections.load()) + "  generation " +
                   std::to_string(g.max_generation.load()) + "  failed " + std::to_string(g.failed.load()) +
                   "  connect errors " + std::to_string(g.connect_errors.load()));
      last_ok = ok;
    }
    if ((now >= g.end && g.running_connections.load() == 0) || now >= g.end + grace) {
      stopped_at = now;
      break;
    }
  }
  con.finish();
  results r;
  // Connections still running now are stuck past every deadline (should not happen): count them.
  r.stuck_at_stop = static_cast<std::uint64_t>(std::max(0, g.running_connections.load()));
  for (auto& c : contexts) c->stop();
  for (auto& t : io_threads) t.join();

  {
    std::unique_lock lk(runner.m);
    runner.stop = true;
    runner.cv.notify_all();
    runner.cv.wait_until(lk, clock_type::now() + restart_grace,
                         [&] { return runner.finished || runner.records.empty(); });
    r.restarts = runner.records;
  }
  const bool restarts_done = runner.records.empty() || runner.finished;
  if (restart_thread.joinable()) {
    if (restarts_done)
      restart_thread.join();
    else
      restart_thread.detach();  // stuck in the command; we exit without it (see the end)
  }

  // Merge.
  r.load_s = seconds(std::min(stopped_at, g.end + grace) - g.t0);
  const auto used =
      std::min<std::size_t>(g.n_buckets, static_cast<std::size_t>(std::ceil(r.load_s / seconds(bucket_width))));
  r.timeline.resize(used);
  for (auto& s : stats) {
    for (std::size_t i = 0; i < used; ++i) {
      r.timeline[i].ok += s.timeline[i].ok;
      r.timeline[i].failed += s.timeline[i].failed;
      if (s.timeline[i].latency) r.timeline[i].latency.merge(*s.timeline[i].latency);
    }
    for (auto& [k, v] : s.per_generation) r.per_generation[k] += v;
    for (auto& [k, v] : s.failure_reasons) r.failure_reasons[k] += v;
    r.pids.insert(s.pids.begin(), s.pids.end());
    r.pid_switches += s.pid_switches;
    r.server_closes += s.server_closes;
    r.connects += s.connects;
  }
  for (std::size_t i = 0; i < used; ++i) {
    r.timeline[i].open = open_samples[i];
    r.timeline[i].generation = gen_samples[i];
    r.overall.merge(r.timeline[i].latency);
  }
  r.ok = g.ok;
  r.failed = g.failed + r.stuck_at_stop;
  if (r.stuck_at_stop) r.failure_reasons["still running at the hard stop"] += r.stuck_at_stop;
  r.connect_errors = g.connect_errors;
  for (const auto& rr : r.restarts) {
    std::array<window_stats, 3> w;
    if (rr.start_s >= 0) {
      const double end = rr.end_s >= 0 ? rr.end_s : r.load_s;
      w = {r.window(rr.start_s - 1, rr.start_s), r.window(rr.start_s, end), r.window(end, end + 1)};
    }
    r.restart_windows.push_back(w);
  }

  // The report.
  std::printf("baton-load: %s, %u keep-alive connections, %u threads, %.1f s\n", o.target.c_str(), o.connections,
              o.threads, o.duration_s);
  std::printf("requests      %llu ok, %llu failed, %llu connection errors, %.0f req/s\n",
              static_cast<unsigned long long>(r.ok), static_cast<unsigned long long>(r.failed),
              static_cast<unsigned long long>(r.connect_errors), static_cast<double>(r.ok) / o.duration_s);
  if (r.overall.count() == 0)
    std::printf("latency       n/a (no request succeeded)\n");
  else
    std::printf("latency       p50 %s ms, p99 %s ms\n", ms(r.overall.percentile_us(0.5) / 1000).c_str(),
                ms(r.overall.percentile_us(0.99) / 1000).c_str());
  std::printf("generations  ");
  if (r.per_generation.empty()) std::printf(" (none)");
  for (auto it = r.per_generation.begin(); it != r.per_generation.end(); ++it)
    std::printf("%s %s: %llu", it == r.per_generation.begin() ? "" : ",",
                it->first == 0 ? "(no header)" : std::to_string(it->first).c_str(),
                static_cast<unsigned long long>(it->second));
  std::printf("  (highest %llu)\n", static_cast<unsigned long long>(g.max_generation.load()));
  std::printf("server pids   %zu distinct:", r.pids.size());
  for (auto p : r.pids) std::printf(" %llu", static_cast<unsigned long long>(p));
  std::printf("\n");
  std::printf(
      "keep-alive    %llu times a connection's next response came from another pid without reconnecting; %llu closed "
      "by the server; "
      "%llu connects for %u connections\n",
      static_cast<unsigned long long>(r.pid_switches), static_cast<unsigned long long>(r.server_closes),
      static_cast<unsigned long long>(r.connects), o.connections);
  unsigned restarts_ok = 0;
  for (std::size_t i = 0; i < r.restarts.size(); ++i) {
    const auto& rr = r.restarts[i];
    if (rr.start_s < 0) {
      std::printf("restart %zu     %s\n", i + 1, rr.error.c_str());
      continue;
    }
    if (rr.end_s < 0) {
      std::printf("restart %zu     at %.2f s, still running %.0f s after the load ended (left running)\n", i + 1,
                  rr.start_s, seconds(restart_grace));
      continue;
    }
    if (rr.exit_status == 0) ++restarts_ok;
    std::printf("restart %zu     at %.2f s, took %.3f s, exit %d: %s\n", i + 1, rr.start_s, rr.end_s - rr.start_s,
                rr.exit_status, rr.error.empty() ? rr.output.c_str() : rr.error.c_str());
    const auto& w = r.restart_windows[i];
    auto show = [](const window_stats& ws) {
      return ws.covered ? ms(ws.p50_ms) + " / " + ms(ws.p99_ms) + " ms (" + std::to_string(ws.requests) + " req, " +
                              std::to_string(ws.failed) + " failed)"
                        : std::string("n/a (outside the load)");
    };
    std::printf("  p50 / p99   before %s, during %s, after %s\n", show(w[0]).c_str(), show(w[1]).c_str(),
                show(w[2]).c_str());
  }
  if (!r.failure_reasons.empty()) {
    std::printf("failures     ");
    for (auto& [why, n] : r.failure_reasons)
      std::printf(" %llu x %s;", static_cast<unsigned long long>(n), why.c_str());
    std::printf("\n");
  }
  bool written = true;
  if (!o.svg.empty()) {
    if (write_file(o.svg, make_svg(r, o)))
      std::printf("svg           %s\n", o.svg.c_str());
    else
      std::printf("svg           could not write %s\n", o.svg.c_str()), written = false;
  }
  if (!o.json.empty()) {
    if (write_file(o.json, make_json(r, o)))
      std::printf("json          %s\n", o.json.c_str());
    else
      std::printf("json          could not write %s\n", o.json.c_str()), written = false;
  }
  const bool pass = r.failed == 0 && r.connect_errors == 0 && restarts_ok == r.restarts.size();
  std::string result = pass ? "RESULT: PASS (" : "RESULT: FAIL (";
  result += std::to_string(r.failed) + " failed requests, " + std::to_string(r.connect_errors) + " connection errors";
  for (std::size_t i = 0; i < r.restarts.size(); ++i) {
    const auto& rr = r.restarts[i];
    if (rr.start_s < 0)
      result += ", restart " + std::to_string(i + 1) + " not run";
    else if (rr.end_s < 0)
      result += ", restart " + std::to_string(i + 1) + " unfinished";
    else
      result += ", restart " + std::to_string(i + 1) + " exited " + std::to_string(rr.exit_status);
  }
  std::printf("%s)\n", result.c_str());
  std::fflush(stdout);
  if (!restarts_done) std::_Exit(1);  // a restart command is stuck; do not wait for it
  return !pass ? 1 : written ? 0 : 2;
}

int run_serve(const std::string& where, std::uint64_t generation, double duration_s) {
  const auto colon = where.rfind(':');
  if (colon == std::string::npos) throw std::invalid_argument("--serve needs HOST:PORT");
  asio::io_context setup;
  tcp::resolver resolver(setup);
  const auto ep = resolver.resolve(where.substr(0, colon), where.substr(colon + 1), tcp::resolver::numeric_service)
                      .begin()
                      ->endpoint();
  stand_in_server server(ep, generation, 0);
  std::printf("baton-load stand-in: serving on %s:%u, generation %llu, pid %llu\n", ep.address().to_string().c_str(),
              server.local_endpoint().port(), static_cast<unsigned long long>(generation),
              static_cast<unsigned long long>(platform::process_id()));
  std::fflush(stdout);
  server.wait_until(duration_s > 0 ? clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                                                             std::chrono::duration<double>(duration_s))
                                   : clock_type::time_point::max());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  platform::init();
  baton_cli::parser cli(
      "baton-load",
      "--target HOST:PORT [--connections N] [--duration SECS] [--threads T]\n"
      " [--restart-cmd \"CMD\" [--restarts K] [--first-restart-at S] [--restart-interval S]]\n"
      " [--upload-every N [--upload-size BYTES]] [--svg FILE] [--json FILE] [--quiet]\n"
      "--stand-in [the same options, without --target]\n"
      "--serve HOST:PORT [--generation G] [--duration SECS]",
      "An HTTP/1.1 keep-alive load generator: N connections send GET / back to back for a fixed time, every\n"
      "response is checked; optionally a restart command (e.g. `batonctl restart NAME`) runs K times during\n"
      "the load, and the report compares latency before, during and after each restart. --stand-in serves\n"
      "itself (a thread behind a real loopback socket); --serve runs that stand-in server alone.");
  const options d;
  cli.text("--target", "HOST:PORT", "the server to drive");
  cli.flag("--stand-in", "drive a stand-in server of this process instead of --target");
  cli.integer("--stand-in-fault", 0, 1000000000, "the stand-in drops every Nth request unanswered (0: none; tests)")
      .defaults("0");
  cli.text("--serve", "HOST:PORT", "run the stand-in server alone on HOST:PORT (port 0: any)");
  cli.integer("--generation", 0, UINT64_MAX, "--serve: the generation it reports").defaults("1");
  cli.integer("--connections", 1, 1000000, "keep-alive connections").defaults(std::to_string(d.connections));
  cli.decimal("--duration", true, "seconds of load (--serve: how long to serve; default: until killed)")
      .metavar("SECS").defaults("10");
  cli.integer("--threads", 1, 1024, "I/O threads").metavar("T").defaults("min(CPUs, 4)");
  cli.text("--restart-cmd", "\"CMD\"", "run through the shell during the load");
  cli.integer("--restarts", 0, 1000000, "how many times to run --restart-cmd").metavar("K").defaults("1 with --restart-cmd");
  cli.decimal("--first-restart-at", false, "seconds from the start to the first restart").metavar("S")
      .defaults("25% of the duration");
  cli.decimal("--restart-interval", true, "seconds between restarts").metavar("S").defaults("(duration - first) / K");
  cli.integer("--upload-every", 0, 1000000000, "every Nth request on a connection is POST / with a body (0: none)")
      .defaults("0");
  cli.integer("--upload-size", 0, 1u << 30, "bytes of each upload's body").metavar("BYTES").defaults("65536");
  cli.text("--svg", "FILE", "write the timeline as an SVG chart");
  cli.text("--json", "FILE", "write the timeline as JSON");
  cli.flag("--quiet", "no progress line and no restart events on stderr");
  cli.epilog("exit status: 0 when no request failed, no connection failed and every restart command exited 0;\n"
             "1 otherwise; 2 for a wrong command line or a run that could not start or write its files.");
  if (auto rc = cli.parse(argc, argv)) return *rc;
  options o;
  o.target = cli.str("--target");
  o.stand_in = cli.has("--stand-in");
  o.stand_in_fault = static_cast<unsigned>(cli.num("--stand-in-fault"));
  o.connections = static_cast<unsigned>(cli.num("--connections"));
  if (cli.has("--duration")) o.duration_s = cli.dec("--duration");
  if (cli.has("--threads")) o.threads = static_cast<unsigned>(cli.num("--threads"));
  o.restart_cmd = cli.str("--restart-cmd");
  if (cli.has("--restarts")) o.restarts = static_cast<unsigned>(cli.num("--restarts"));
  if (cli.has("--first-restart-at")) o.first_restart_at = cli.dec("--first-restart-at");
  if (cli.has("--restart-interval")) o.restart_interval = cli.dec("--restart-interval");
  o.upload_every = static_cast<unsigned>(cli.num("--upload-every"));
  o.upload_size = cli.num("--upload-size");
  o.svg = cli.str("--svg");
  o.json = cli.str("--json");
  o.quiet = cli.has("--quiet");
  try {
    if (cli.has("--serve"))
      return run_serve(cli.str("--serve"), cli.num("--generation"), cli.has("--duration") ? o.duration_s : 0);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "baton-load: %s\n", e.what());
    return 2;
  }
  if (o.target.empty() == !o.stand_in) return cli.fail("give exactly one of --target HOST:PORT and --stand-in");
  if (!o.restart_cmd.empty() && o.restarts == 0) o.restarts = 1;
  if (o.restart_cmd.empty() && o.restarts != 0) return cli.fail("--restarts needs --restart-cmd");
  o.threads = std::min(o.threads, o.connections);
  try {
    return run_load(std::move(o));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "baton-load: %s\n", e.what());
    return 2;
  }
}
