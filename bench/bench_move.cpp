// Moving live TCP connections between two processes, each benchmark beside its raw peer measured
// in the same run. The parent is process A (pinned to its first allowed CPU); the helper, this
// binary re-run with `--role=...`, is process B (pinned to the second CPU).
//
// 1. Move latency (one loopback TCP connection ping-ponged A -> B -> A):
//    BM_MoveLatency_Baton/S   A moves the connection to B with baton::async_send over B's channel;
//                             B moves it straight back over A's channel. A sample is one move's
//                             source-side time: from async_send() to its completion (the target
//                             took it and acknowledged). Samples of both directions are collected
//                             (A's in A, B's through shared memory); p50_us / p99_us are computed
//                             from them. The iteration time (manual) is A's move. hop_p50_us /
//                             hop_p99_us: A's round trip (send start -> connection back) / 2.
//                             S = 0: transfer_strategy::pidfd_getfd, 1: scm_rights.
//    BM_MoveLatency_RawScm    the raw peer: a bare TCP socket fd ping-ponged over a Unix datagram
//                             socketpair with SCM_RIGHTS (sendmsg, close own copy; the other side
//                             recvmsg()s it and does the same). A sample is round trip / 2.
// 2. Move throughput (bursts of 1,000 connections A -> B):
//    BM_MoveBurst_Baton/S     A starts 1,000 async_sends at once; the iteration time runs until
//                             the last completes. Untimed: a control ticket tells B to move them
//                             all back, and A receives them.
//    BM_MoveBurst_RawScm/K    the raw peer: A sends 1,000 TCP socket fds over a Unix datagram
//                             socketpair, K fds per sendmsg (K = 1 or 64), closing its copies; B
//                             receives them all and answers with one message; the time runs until
//                             that answer. Untimed: B sends them back.
//    BM_MoveBurst_RawScmReactor/K  the same raw loop plus the work on each descriptor that no
//                             move ending in a reactor-driven socket can skip: A takes it out of
//                             an epoll set before sending it (what releasing an Asio socket does),
//                             B fstat()s it and adds it to an epoll set of its own before
//                             answering. The floor of a move that ends in a usable socket.
//    items_per_second = connections per second.
// 3. Data path after a move (64 connections, 64-byte messages echoed by B, A is the client):
//    BM_DataPath/0            B's echo server uses plain boost::asio::ip::tcp::socket objects it
//                             accepted itself.
//    BM_DataPath/1            B's echo server uses baton::connection objects that arrived by a
//                             move from A (A accepted them and moved them with the default
//                             strategy). The client side is the same code in both.
//    One iteration = 100 round trips on each of the 64 connections (all in flight at once);
//    items_per_second = messages (round trips) per second.
// Ratios Baton / raw are printed to stderr at the end of the run (median over repetitions).
//
// Every wait is bounded (5 s per phase in A; the helper exits when A is gone, asks it to stop, or
// nothing happened for 5 s), counts are bounded, and names carry the pid (bench_support.hpp).
#include "bench_support.hpp"

#include <baton/move.hpp>

#include "posix/scm_rights_push.hpp"

#include <benchmark/benchmark.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <cmath>
#include <functional>
#include <map>
#include <memory>

#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>

namespace asio = boost::asio;
using asio::ip::tcp;
using bench::control;
using bench::steady;
using namespace std::chrono_literals;

namespace {

constexpr int warmup_moves = 20;
constexpr std::size_t burst = 1000;
constexpr int echo_conns = 64;
constexpr std::size_t echo_bytes = 64;
constexpr int echo_round_trips = 100;  // per connection and iteration
constexpr std::uint64_t max_moves = 10'000'000;
constexpr std::uint64_t max_echoes = 1'000'000'000;
constexpr std::size_t max_samples = 1u << 20;
constexpr auto helper_poll = 100ms;

// Parent <-> helper data beside bench::control (its own shared-memory object).
struct shared_data {
  std::atomic<std::uint32_t> port;      // echo server (plain): its listening port
  std::atomic<std::uint64_t> nsamples;  // B's move samples written so far
  double samples_us[max_samples];       // B's per-move source-side times
};

// Per benchmark key: (iterations, value) of every call; the calls with the most iterations are
// the measured ones (the others are Google Benchmark's iteration-count probes).
std::map<std::string, std::vector<std::pair<std::int64_t, double>>> g_results;

void record(benchmark::State& state, const std::string& key, double value) {
  if (!state.error_occurred() && value > 0)
    g_results[key].emplace_back(static_cast<std::int64_t>(state.iterations()), value);
}

double measured(const std::string& key) {
  const auto it = g_results.find(key);
  if (it == g_results.end()) return NAN;
  std::int64_t most = 0;
  for (const auto& c : it->second) most = std::max(most, c.first);
  std::vector<double> v;
  for (const auto& c : it->second)
    if (c.first == most) v.push_back(c.second);
  return bench::quantile(v, 0.5);
}

baton::transfer_strategy strategy_of(long v) {
  return v == 0 ? baton::transfer_strategy::pidfd_getfd : baton::transfer_strategy::scm_rights;
}
const char* strategy_name(long v) { return v == 0 ? "pidfd_getfd" : "scm_rights"; }

void raise_fd_limit() {
  rlimit r{};
  ::getrlimit(RLIMIT_NOFILE, &r);
  r.rlim_cur = r.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &r);
}

double us(steady::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

/// Runs `io` until `done()` (handlers that make it true call io.stop()) or `limit` passes.
template <class Done>
bool drive(asio::io_context& io, Done done, steady::duration limit = bench::wait_deadline) {
  if (done()) return true;
  bool expired = false;
  asio::steady_timer deadline(io, limit);
  deadline.async_wait([&](baton::error_code e) {
    if (!e) expired = true, io.stop();
  });
  while (!done() && !expired) {
    io.restart();
    io.run();
  }
  deadline.cancel();
  io.restart();
  io.poll();  // completes the cancelled wait (it refers to `expired`)
  return done();
}

/// Removes a helper's channel names if the helper died without doing so (after the session).
struct stale_channel_guard {
  std::string name;
  ~stale_channel_guard() {
    baton::error_code ec;
    baton::channel::remove_stale(name, ec);
  }
};

/// Bounds the blocking system calls of this thread: from `after` on, SIGALRM arrives every
/// millisecond (the handler does nothing and is installed without SA_RESTART), so a blocking call
/// returns EINTR instead of hanging. Used around Baton bursts with scm_rights, where the source's
/// sendmsg() to the target's datagram socket blocks while the target's queue is full.
struct syscall_watchdog {
  explicit syscall_watchdog(steady::duration after) {
    itimerval t{};
    const auto s = std::chrono::duration_cast<std::chrono::microseconds>(after).count();
    t.it_value.tv_sec = static_cast<time_t>(s / 1000000);
    t.it_value.tv_usec = static_cast<suseconds_t>(s % 1000000);
    t.it_interval.tv_usec = 1000;
    ::setitimer(ITIMER_REAL, &t, nullptr);
  }
  ~syscall_watchdog() {
    itimerval t{};
    ::setitimer(ITIMER_REAL, &t, nullptr);
  }
};

void install_sigalrm() {
  struct sigaction sa {};
  sa.sa_handler = [](int) {};
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART
  ::sigaction(SIGALRM, &sa, nullptr);
}

/// `n` loopback TCP connections: the client ends and the accepted server ends.
bool make_connections(asio::io_context& io, std::size_t n, std::vector<tcp::socket>& clients,
                      std::vector<tcp::socket>& servers, std::string& err) {
  baton::error_code ec;
  tcp::acceptor acc(io);
  acc.open(tcp::v4(), ec);
  if (!ec) acc.bind({asio::ip::address_v4::loopback(), 0}, ec);
  if (!ec) acc.listen(asio::socket_base::max_listen_connections, ec);
  const auto ep = ec ? tcp::endpoint{} : acc.local_endpoint(ec);
  for (std::size_t i = 0; i < n && !ec; ++i) {
    tcp::socket c(io);
    c.connect(ep, ec);
    if (ec) break;
    tcp::socket s = acc.accept(ec);
    if (ec) break;
    c.set_option(tcp::no_delay(true), ec);
    s.set_option(tcp::no_delay(true), ec);
    clients.push_back(std::move(c));
    servers.push_back(std::move(s));
  }
  if (ec) err = "loopback connections: " + ec.message();
  return !ec;
}

// Raw SCM_RIGHTS over a socketpair ---------------------------------------------------------------

struct raw_header {
  std::uint32_t kind;   // 1 = descriptors, 2 = "got them all"
  std::uint32_t total;  // descriptors in this burst
};
constexpr std::size_t max_fds_per_msg = 64;

bool send_fds(int sock, const int* fds, std::size_t n, raw_header h) {
  // Descriptors through Baton's sendmsg wrapper (one SCM_RIGHTS message, nothing else); the
  // answer, which carries none, as a plain send.
  const long r = n > 0 ? baton::detail::send_with_fds(sock, fds, n, &h, sizeof h, nullptr, 0, MSG_NOSIGNAL)
                       : ::send(sock, &h, sizeof h, MSG_NOSIGNAL);
  return r == static_cast<long>(sizeof h);
}

/// Appends the received descriptors to `out`. Returns false on error or timeout (errno says).
bool recv_fds(int sock, std::vector<int>& out, raw_header& h) {
  iovec iov{&h, sizeof h};
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * max_fds_per_msg)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof ctrl;
  const ssize_t r = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  if (r != static_cast<ssize_t>(sizeof h)) {
    if (r >= 0) errno = EPROTO;
    return false;
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < k; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      out.push_back(fd);
    }
  }
  return true;
}

void set_timeouts(int sock, steady::duration d) {
  const auto u = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
  timeval tv{static_cast<time_t>(u / 1000000), static_cast<suseconds_t>(u % 1000000)};
  ::setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/// A datagram socketpair: [0] stays in the parent (close-on-exec), [1] is inherited by the helper.
struct socket_pair {
  int fd[2] = {-1, -1};
  bool open() {
    if (::socketpair(AF_UNIX, SOCK_DGRAM, 0, fd) != 0) return false;
    ::fcntl(fd[0], F_SETFD, FD_CLOEXEC);
    set_timeouts(fd[0], bench::wait_deadline);
    return true;
  }
  void close_child_end() {
    if (fd[1] >= 0) ::close(fd[1]);
    fd[1] = -1;
  }
  ~socket_pair() {
    for (int f : fd)
      if (f >= 0) ::close(f);
  }
};

struct fd_list {
  std::vector<int> fds;
  ~fd_list() {
    for (int f : fds) ::close(f);
  }
};

// 1. Move latency ------------------------------------------------------------------------------

void report_latency(benchmark::State& state, std::vector<double>& moves, std::vector<double>& hops,
                    const std::string& move_key, const std::string& hop_key) {
  if (moves.empty()) return;
  state.counters["p50_us"] = bench::quantile(moves, 0.50);
  state.counters["p99_us"] = bench::quantile(moves, 0.99);
  state.counters["samples"] = static_cast<double>(moves.size());
  record(state, move_key, state.counters["p50_us"]);
  if (!hops.empty()) {
    state.counters["hop_p50_us"] = bench::quantile(hops, 0.50);
    state.counters["hop_p99_us"] = bench::quantile(hops, 0.99);
    if (!hop_key.empty()) record(state, hop_key, state.counters["hop_p50_us"]);
  }
}

// Starts the helper `role` pinned to another CPU than this process's (pinned too, while `pin`
// lives). False if the run was skipped: a single CPU, or the helper did not start.
bool start_on_other_cpu(benchmark::State& state, std::optional<bench::pin_guard>& pin, bench::session& s,
                        const std::string& role, std::vector<std::string> args) {
  const int helper_cpu = bench::place(pin, false);
  if (helper_cpu < 0) {
    state.SkipWithError("needs 2 CPUs");
    return false;
  }
  return s.start(state, role, std::move(args), helper_cpu);
}

// The parent's side of a run against a raw-peer helper (in `mode`, `per_msg` descriptors per
// message) over a socketpair: fd[0] is this side's end.
struct raw_peer_run {
  socket_pair sp;
  std::optional<bench::pin_guard> pin;
  bench::session s;

  // False if the run was skipped (the reason given to `state`).
  bool start(benchmark::State& state, const char* mode, std::size_t per_msg) {
    if (!sp.open()) {
      state.SkipWithError("socketpair failed");
      return false;
    }
    if (!start_on_other_cpu(state, pin, s, "raw-peer", {std::to_string(sp.fd[1]), mode, std::to_string(per_msg)}))
      return false;
    sp.close_child_end();
    return true;
  }
};

// The parent's side of a run against a baton-peer helper: channel A (the helper sends to it), the
// shared data block, the helper itself (in `mode`: pingpong or burst) and channel B (to the helper).
struct peer_run {
  std::string a_name = bench::unique_name("mvA"), b_name = bench::unique_name("mvB");
  std::string data_name = bench::unique_name("data");
  bench::shm data_mem;
  shared_data* data = nullptr;
  baton::channel rx;
  std::optional<bench::pin_guard> pin;
  std::optional<stale_channel_guard> b_guard;
  bench::session s;
  baton::channel tx;

  // False if the run was skipped (the reason given to `state`).
  bool start(benchmark::State& state, asio::io_context& io, long strategy, const char* mode) {
    baton::error_code ec;
    baton::channel::remove_stale(a_name, ec);
    baton::channel::remove_stale(b_name, ec);
    if (!data_mem.create(data_name, sizeof(shared_data))) return skip(state, "shm_open(data) failed");
    data = new (data_mem.get()) shared_data;
    rx = baton::channel::create(io.get_executor(), a_name, {}, ec);
    if (ec) return skip(state, "channel::create: " + ec.message());
    b_guard.emplace();
    b_guard->name = b_name;
    if (!start_on_other_cpu(state, pin, s, "baton-peer", {a_name, b_name, data_name, std::to_string(strategy), mode}))
      return false;
    tx = baton::channel::open(io.get_executor(), b_name, {}, ec);
    if (ec) return skip(state, "channel::open: " + ec.message());
    return true;
  }
  static bool skip(benchmark::State& state, const std::string& why) {
    state.SkipWithError(why.c_str());
    return false;
  }
};

void BM_MoveLatency_Baton(benchmark::State& state) {
  const long strategy = static_cast<long>(state.range(0));
  state.SetLabel(strategy_name(strategy));
  asio::io_context io;
  peer_run run;
  if (!run.start(state, io, strategy, "pingpong")) return;
  auto &rx = run.rx, &tx = run.tx;
  auto* data = run.data;
  const auto& s = run.s;
  // Sockets only now: Asio's descriptors are not close-on-exec, the helper must not inherit them.
  std::vector<tcp::socket> clients, servers;
  std::string err;
  if (!make_connections(io, 1, clients, servers, err)) return state.SkipWithError(err.c_str());
  baton::connection conn(std::move(servers[0]));
  baton::move_options opts;
  opts.strategy = strategy_of(strategy);

  // One round: A -> B (timed in A) and B -> A (timed in B). State outlives a failed round.
  bool sent = false, back = false;
  baton::error_code send_ec, recv_ec;
  steady::time_point t0, t1, t2;
  auto round = [&]() -> std::string {
    sent = back = false;
    baton::async_receive(rx, [&](baton::error_code e, baton::arrival a) {
      t2 = steady::now();
      recv_ec = e;
      back = true;
      if (!e) conn = std::move(a.conn);
      if (sent) io.stop();
    });
    io.restart();
    io.poll();  // the receive is waiting on the doorbell before the clock starts
    t0 = steady::now();
    baton::async_send(tx, std::move(conn), opts, [&](baton::error_code e, baton::connection c) {
      t1 = steady::now();
      send_ec = e;
      sent = true;
      if (e) conn = std::move(c);
      if (back) io.stop();
    });
    if (!drive(io, [&] { return sent && back; })) return "timed out (no verdict or no connection back)";
    if (send_ec) return "async_send: " + send_ec.message();
    if (recv_ec) return "async_receive: " + recv_ec.message();
    if (!conn.is_open()) return "connection back but closed";
    return {};
  };
  for (int i = 0; i < warmup_moves; ++i)
    if (auto e = round(); !e.empty()) return state.SkipWithError(("warm-up: " + e).c_str());
  std::vector<double> moves, hops;
  for (auto _ : state) {
    if (auto e = round(); !e.empty()) {
      state.SkipWithError(e.c_str());
      break;
    }
    moves.push_back(us(t1 - t0));
    hops.push_back(us(t2 - t0) / 2);
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
  }
  // B's samples of its moves back: one per round (warm-up included); B writes each once its send
  // completes, which may be a little after A received the connection.
  const std::uint64_t want = static_cast<std::uint64_t>(warmup_moves) + moves.size();
  if (!state.error_occurred()) {
    if (!bench::wait_until([&] { return data->nsamples.load(std::memory_order_acquire) >= want; }, s.ctl, 1s))
      state.SkipWithError("helper's samples missing");
    for (std::uint64_t i = warmup_moves; i < std::min<std::uint64_t>(want, max_samples); ++i)
      moves.push_back(data->samples_us[i]);
  }
  const std::string k = strategy_name(strategy);
  report_latency(state, moves, hops, "lat_move/" + k, "lat_hop/" + k);
}

void BM_MoveLatency_RawScm(benchmark::State& state) {
  raw_peer_run run;
  if (!run.start(state, "pingpong", 1)) return;
  const int sock = run.sp.fd[0];
  asio::io_context io;
  std::vector<tcp::socket> clients, servers;
  std::string err;
  if (!make_connections(io, 1, clients, servers, err)) return state.SkipWithError(err.c_str());
  baton::error_code ec;
  fd_list held;
  held.fds.push_back(servers[0].release(ec));
  if (ec) return state.SkipWithError("release failed");

  steady::time_point t0, t1;
  auto round = [&]() -> bool {
    t0 = steady::now();
    const int fd = held.fds.back();
    if (!send_fds(sock, &fd, 1, {1, 1})) return false;
    ::close(fd);
    held.fds.pop_back();
    raw_header h{};
    if (!recv_fds(sock, held.fds, h) || held.fds.size() != 1) return false;
    t1 = steady::now();
    return true;
  };
  for (int i = 0; i < warmup_moves; ++i)
    if (!round()) return state.SkipWithError("warm-up: no answer");
  std::vector<double> hops, none;
  for (auto _ : state) {
    if (!round()) {
      state.SkipWithError(("no answer: " + std::string(std::strerror(errno))).c_str());
      break;
    }
    hops.push_back(us(t1 - t0) / 2);
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count() / 2);
  }
  report_latency(state, hops, none, "lat_raw", "");
}

// 2. Move throughput ---------------------------------------------------------------------------

// Runs a burst benchmark: `one_burst(dt)` moves one burst (`dt`: the time it took; an error message
// if it failed) once as a warm-up, then once per iteration, each timed by its `dt`. The rate in
// connections per second is recorded under `key`.
template <class OneBurst>
void run_bursts(benchmark::State& state, OneBurst&& one_burst, const std::string& key) {
  steady::duration dt{};
  if (auto e = one_burst(dt); !e.empty()) return state.SkipWithError(("warm-up: " + e).c_str());
  double total = 0;
  for (auto _ : state) {
    if (auto e = one_burst(dt); !e.empty()) {
      state.SkipWithError(e.c_str());
      break;
    }
    const double sec = std::chrono::duration<double>(dt).count();
    total += sec;
    state.SetIterationTime(sec);
  }
  const auto items = static_cast<std::int64_t>(state.iterations() * burst);
  state.SetItemsProcessed(items);
  if (total > 0) record(state, key, static_cast<double>(items) / total);
}

void BM_MoveBurst_Baton(benchmark::State& state) {
  const long strategy = static_cast<long>(state.range(0));
  state.SetLabel(strategy_name(strategy));
  raise_fd_limit();
  asio::io_context io;
  peer_run run;
  if (!run.start(state, io, strategy, "burst")) return;
  auto &rx = run.rx, &tx = run.tx;
  const auto& s = run.s;
  std::vector<tcp::socket> clients, servers;
  std::string err;
  if (!make_connections(io, burst, clients, servers, err)) return state.SkipWithError(err.c_str());
  std::vector<baton::connection> conns;
  for (auto& sk : servers) conns.emplace_back(std::move(sk));
  baton::move_options opts;
  opts.strategy = strategy_of(strategy);

  std::size_t completed = 0, failures = 0, received = 0;
  baton::error_code first_error;
  steady::time_point t1;
  std::uint64_t bursts = 0;
  auto one_burst = [&](steady::duration& dt) -> std::string {
    completed = failures = received = 0;
    first_error.clear();
    const auto t0 = steady::now();
    {
      syscall_watchdog wd(bench::wait_deadline);
      for (std::size_t i = 0; i < burst; ++i) {
        baton::async_send(tx, std::move(conns[i]), opts, [&, i](baton::error_code e, baton::connection c) {
          if (e) {
            if (!failures++) first_error = e;
            conns[i] = std::move(c);
          }
          if (++completed == burst) t1 = steady::now(), io.stop();
        });
      }
      if (!drive(io, [&] { return completed == burst; }))
        return "timed out: " + std::to_string(completed) + " of " + std::to_string(burst) + " moves completed";
    }
    dt = t1 - t0;
    if (failures) return std::to_string(failures) + " moves failed, first: " + first_error.message();
    // Untimed: B moves them all back.
    conns.clear();
    baton::ticket t;
    t.kind = baton::ticket_kind::control;
    t.method = baton::transfer_method::none;
    t.id = baton::ticket_id::random();
    tx.async_send(std::move(t), [&](baton::error_code e) {
      if (e && !failures++) first_error = e;
    });
    std::function<void()> arm = [&] {
      baton::async_receive(rx, [&](baton::error_code e, baton::arrival a) {
        if (e || a.kind != baton::ticket_kind::connection) {
          if (!failures++) first_error = e ? e : make_error_code(baton::errc::ticket_bad_kind);
          return io.stop();
        }
        conns.push_back(std::move(a.conn));
        if (++received == burst) return io.stop();
        arm();
      });
    };
    arm();
    if (!drive(io, [&] { return received == burst || failures > 0; }) || failures)
      return "moving back: " + std::to_string(received) + " received" +
             (failures ? ", error: " + first_error.message() : std::string());
    // The helper's sends complete once it sees our acks: start the next burst when it is idle.
    ++bursts;
    if (!bench::wait_until([&] { return s.ctl->done.load(std::memory_order_acquire) >= bursts; }, s.ctl))
      return "the helper's moves back did not complete";
    return {};
  };
  run_bursts(state, one_burst, std::string("burst/") + strategy_name(strategy));
}

// `reactor`: each descriptor also leaves an epoll set before it is sent, and the helper fstat()s
// it and adds it to an epoll set of its own before it answers (BM_MoveBurst_RawScmReactor).
void BM_MoveBurst_Raw(benchmark::State& state, bool reactor) {
  const auto per_msg = static_cast<std::size_t>(state.range(0));
  raise_fd_limit();
  raw_peer_run run;
  if (!run.start(state, reactor ? "burst-reactor" : "burst", per_msg)) return;
  const int sock = run.sp.fd[0];
  asio::io_context io;
  std::vector<tcp::socket> clients, servers;
  std::string err;
  if (!make_connections(io, burst, clients, servers, err)) return state.SkipWithError(err.c_str());
  fd_list held;
  for (auto& sk : servers) {
    baton::error_code ec;
    held.fds.push_back(sk.release(ec));
    if (ec) return state.SkipWithError("release failed");
  }
  const int ep = reactor ? ::epoll_create1(EPOLL_CLOEXEC) : -1;
  auto register_all = [&] {
    for (int fd : held.fds) {
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
      ev.data.fd = fd;
      ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
  };
  if (reactor) register_all();
  const raw_header fds_msg{1, static_cast<std::uint32_t>(burst)};
  auto one_burst = [&](steady::duration& dt) -> std::string {
    const auto t0 = steady::now();
    for (std::size_t i = 0; i < burst; i += per_msg) {
      const std::size_t n = std::min(per_msg, burst - i);
      if (reactor)
        for (std::size_t j = i; j < i + n; ++j) ::epoll_ctl(ep, EPOLL_CTL_DEL, held.fds[j], nullptr);
      if (!send_fds(sock, held.fds.data() + i, n, fds_msg)) return std::string("sendmsg: ") + std::strerror(errno);
      for (std::size_t j = i; j < i + n; ++j) ::close(held.fds[j]);
    }
    held.fds.clear();
    raw_header h{};
    std::vector<int> none;
    if (!recv_fds(sock, none, h) || h.kind != 2) return std::string("no answer: ") + std::strerror(errno);
    dt = steady::now() - t0;
    // Untimed: B sends them back (and they are registered here again).
    while (held.fds.size() < burst)
      if (!recv_fds(sock, held.fds, h)) return std::string("moving back: ") + std::strerror(errno);
    if (reactor) register_all();
    return {};
  };
  run_bursts(state, one_burst, (reactor ? "burst_raw_reactor/" : "burst_raw/") + std::to_string(per_msg));
  if (ep >= 0) ::close(ep);
}
void BM_MoveBurst_RawScm(benchmark::State& state) { BM_MoveBurst_Raw(state, false); }
void BM_MoveBurst_RawScmReactor(benchmark::State& state) { BM_MoveBurst_Raw(state, true); }

// 3. Data path after a move ----------------------------------------------------------------------

// Client side (A), the same for both servers: write 64 bytes, read the echo, check it, repeat.
struct echo_client {
  tcp::socket sock;
  std::array<char, echo_bytes> out{}, in{};
  int left = 0;
  std::uint32_t seq = 0;
  explicit echo_client(tcp::socket s) : sock(std::move(s)) {}
};

void BM_DataPath(benchmark::State& state) {
  const bool moved = state.range(0) == 1;
  state.SetLabel(moved ? "baton::connection after a move" : "plain tcp::socket");
  asio::io_context io;
  const auto b_name = bench::unique_name("echo");
  const auto data_name = bench::unique_name("data");
  baton::error_code ec;
  baton::channel::remove_stale(b_name, ec);
  bench::shm data_mem;
  if (!data_mem.create(data_name, sizeof(shared_data))) return state.SkipWithError("shm_open(data) failed");
  auto* data = new (data_mem.get()) shared_data;
  std::optional<bench::pin_guard> pin;
  const int helper_cpu = bench::place(pin, false);
  if (helper_cpu < 0) return state.SkipWithError("needs 2 CPUs");
  stale_channel_guard b_guard{b_name};
  bench::session s;
  if (!s.start(state, "echo-server", {data_name, b_name, moved ? "baton" : "plain"}, helper_cpu)) return;

  std::vector<std::unique_ptr<echo_client>> clients;
  if (moved) {
    // A accepts the connections and moves the server ends to B.
    auto tx = baton::channel::open(io.get_executor(), b_name, {}, ec);
    if (ec) return state.SkipWithError(("channel::open: " + ec.message()).c_str());
    std::vector<tcp::socket> cs, ss;
    std::string err;
    if (!make_connections(io, echo_conns, cs, ss, err)) return state.SkipWithError(err.c_str());
    for (auto& c : cs) clients.push_back(std::make_unique<echo_client>(std::move(c)));
    std::size_t done = 0, failed = 0;
    for (auto& sk : ss)
      baton::async_send(tx, baton::connection(std::move(sk)), [&](baton::error_code e, baton::connection) {
        failed += e ? 1 : 0;
        if (++done == ss.size()) io.stop();
      });
    if (!drive(io, [&] { return done == ss.size(); }) || failed)
      return state.SkipWithError("moving the connections to the echo server failed");
  } else {
    const tcp::endpoint ep(asio::ip::address_v4::loopback(), static_cast<unsigned short>(data->port.load()));
    for (int i = 0; i < echo_conns; ++i) {
      tcp::socket c(io);
      c.connect(ep, ec);
      if (!ec) c.set_option(tcp::no_delay(true), ec);
      if (ec) return state.SkipWithError(("connect: " + ec.message()).c_str());
      clients.push_back(std::make_unique<echo_client>(std::move(c)));
    }
  }

  int finished = 0;
  bool bad = false;
  std::function<void(echo_client&)> step = [&](echo_client& c) {
    std::memcpy(c.out.data(), &c.seq, sizeof c.seq);
    asio::async_write(c.sock, asio::buffer(c.out), [&](baton::error_code e, std::size_t) {
      if (e) return bad = true, io.stop();
      asio::async_read(c.sock, asio::buffer(c.in), [&](baton::error_code e2, std::size_t) {
        if (e2 || c.in != c.out) return bad = true, io.stop();
        ++c.seq;
        if (--c.left > 0) return step(c);
        if (++finished == echo_conns) io.stop();
      });
    });
  };
  auto run_round = [&]() -> bool {
    finished = 0;
    for (auto& c : clients) {
      c->left = echo_round_trips;
      step(*c);
    }
    return drive(io, [&] { return finished == echo_conns || bad; }) && !bad;
  };
  if (!run_round()) return state.SkipWithError("warm-up: echo failed or timed out");
  // The echo server's CPU time (user + system) over the timed rounds: its cost per message,
  // independent of which side is the bottleneck.
  clockid_t server_clock{};
  const bool have_clock = ::clock_getcpuclockid(s.helper.pid(), &server_clock) == 0;
  auto server_cpu = [&] {
    timespec ts{};
    if (!have_clock || ::clock_gettime(server_clock, &ts) != 0) return 0.0;
    return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
  };
  const double server_cpu0 = server_cpu();
  double total = 0;
  for (auto _ : state) {
    const auto t0 = steady::now();
    const bool ok = run_round();
    const auto t1 = steady::now();
    if (!ok) {
      state.SkipWithError("echo failed or timed out");
      break;
    }
    const double sec = std::chrono::duration<double>(t1 - t0).count();
    total += sec;
    state.SetIterationTime(sec);
  }
  const auto items = static_cast<std::int64_t>(state.iterations()) * echo_conns * echo_round_trips;
  state.SetItemsProcessed(items);
  state.SetBytesProcessed(items * static_cast<std::int64_t>(echo_bytes) * 2);
  if (items > 0 && have_clock) {
    state.counters["server_cpu_ns_per_msg"] = (server_cpu() - server_cpu0) / static_cast<double>(items);
    record(state, moved ? "echo_cpu/baton" : "echo_cpu/plain", state.counters["server_cpu_ns_per_msg"]);
  }
  if (total > 0) record(state, moved ? "echo/baton" : "echo/plain", static_cast<double>(items) / total);
}

BENCHMARK(BM_MoveLatency_RawScm)->UseManualTime();
BENCHMARK(BM_MoveLatency_Baton)->Arg(0)->Arg(1)->UseManualTime();
BENCHMARK(BM_MoveBurst_RawScm)->Arg(1)->Arg(64)->UseManualTime();
BENCHMARK(BM_MoveBurst_RawScmReactor)->Arg(64)->UseManualTime();
BENCHMARK(BM_MoveBurst_Baton)->Arg(0)->Arg(1)->UseManualTime();
BENCHMARK(BM_DataPath)->Arg(0)->Arg(1)->UseManualTime();

// Helper roles -------------------------------------------------------------------------------

/// Calls `check()` every helper_poll on `io`; stops `io` when it returns false.
struct housekeeping {
  asio::steady_timer timer;
  std::function<bool()> check;
  asio::io_context& io;
  housekeeping(asio::io_context& i, std::function<bool()> f) : timer(i), check(std::move(f)), io(i) { arm(); }
  void arm() {
    timer.expires_after(helper_poll);
    timer.async_wait([this](baton::error_code e) {
      if (e) return;
      if (!check()) return io.stop();
      arm();
    });
  }
};

// A helper role's shared memory: the control block and the shared data, attached.
struct helper_blocks {
  bench::shm ctl_mem, data_mem;
  control* ctl = nullptr;
  shared_data* data = nullptr;

  // 0 once both are attached, else the exit status (2; the parent hears of it when the control
  // block could be attached).
  int attach(const std::string& ctl_name, const std::string& data_name) {
    if (!ctl_mem.open(ctl_name, sizeof(control))) return 2;
    ctl = ctl_mem.as<control>();
    if (!data_mem.open(data_name, sizeof(shared_data))) return ctl->failed.store(1), 2;
    data = data_mem.as<shared_data>();
    return 0;
  }
};

// args: CTL A B DATA STRATEGY MODE. Creates channel B, opens A. pingpong: moves every connection
// that arrives straight back, timing each move. burst: keeps what arrives; a control ticket makes
// it move everything back at once.
int role_baton_peer(char** args) {
  helper_blocks h;
  if (const int rc = h.attach(args[0], args[3])) return rc;
  const std::string a_name = args[1], b_name = args[2], mode = args[5];
  const bool pingpong = mode == "pingpong";
  baton::move_options opts;
  opts.strategy = strategy_of(std::stol(args[4]));
  raise_fd_limit();
  asio::io_context io;
  baton::error_code ec;
  baton::channel::remove_stale(b_name, ec);
  auto rx = baton::channel::create(io.get_executor(), b_name, {}, ec);
  if (ec) {
    std::fprintf(stderr, "baton-peer: channel::create: %s\n", ec.message().c_str());
    return h.ctl->failed.store(1), 1;
  }
  auto tx = baton::channel::open(io.get_executor(), a_name, {}, ec);
  if (ec) {
    std::fprintf(stderr, "baton-peer: channel::open: %s\n", ec.message().c_str());
    return h.ctl->failed.store(1), 1;
  }
  bool fail = false;
  std::uint64_t moves = 0, samples = 0;
  std::size_t returning = 0;
  auto last = steady::now();
  std::vector<baton::connection> held;
  auto fail_with = [&](const char* what, const baton::error_code& e) {
    std::fprintf(stderr, "baton-peer: %s: %s\n", what, e.message().c_str());
    fail = true;
    io.stop();
  };
  std::function<void()> arm = [&] {
    baton::async_receive(rx, [&](baton::error_code e, baton::arrival a) {
      if (e == asio::error::operation_aborted) return;
      if (e) return fail_with("async_receive", e);
      last = steady::now();
      arm();
      if (a.kind == baton::ticket_kind::connection) {
        if (!pingpong) return held.push_back(std::move(a.conn));
        if (++moves > max_moves) return io.stop();
        // Posted behind the receive just armed, so that it waits on the doorbell before the
        // clock starts (as in A).
        asio::post(io, [&, c = std::make_shared<baton::connection>(std::move(a.conn))] {
          const auto t0 = steady::now();
          baton::async_send(tx, std::move(*c), opts, [&, t0](baton::error_code se, baton::connection) {
            const auto t1 = steady::now();
            if (se) return fail_with("async_send", se);
            if (samples < max_samples) h.data->samples_us[samples] = us(t1 - t0);
            h.data->nsamples.store(++samples, std::memory_order_release);
          });
        });
      } else if (a.kind == baton::ticket_kind::control) {
        moves += held.size();
        if (moves > max_moves) return io.stop();
        returning += held.size();
        for (auto& c : held)
          baton::async_send(tx, std::move(c), opts, [&](baton::error_code se, baton::connection) {
            if (se) return fail_with("async_send", se);
            // All moved back and acknowledged: A may start its next burst.
            if (--returning == 0) h.ctl->done.fetch_add(1, std::memory_order_release);
          });
        held.clear();
      }
    });
  };
  arm();
  housekeeping hk(io, [&] { return bench::parent_wants_us(h.ctl) && steady::now() - last < bench::wait_deadline; });
  h.ctl->ready.store(1, std::memory_order_release);
  while (!fail && !io.stopped()) io.run();
  return bench::helper_exit(h.ctl, fail);
}

// args: CTL FD MODE PER_MSG. pingpong: sends every descriptor back at once. burst: collects a
// burst, answers, then sends them back PER_MSG per message.
int role_raw_peer(char** args) {
  bench::shm ctl_mem;
  if (!ctl_mem.open(args[0], sizeof(control))) return 2;
  auto* ctl = ctl_mem.as<control>();
  const int sock = std::stoi(args[1]);
  const bool pingpong = std::string(args[2]) == "pingpong";
  const bool reactor = std::string(args[2]) == "burst-reactor";
  const int ep = reactor ? ::epoll_create1(EPOLL_CLOEXEC) : -1;
  const auto per_msg = std::min<std::size_t>(std::stoul(args[3]), max_fds_per_msg);
  raise_fd_limit();
  ::fcntl(sock, F_SETFD, FD_CLOEXEC);
  set_timeouts(sock, helper_poll);
  ctl->ready.store(1, std::memory_order_release);
  std::vector<int> fds;
  auto last = steady::now();
  bool fail = false;
  for (std::uint64_t moves = 0; moves < max_moves && !fail;) {
    raw_header h{};
    if (!recv_fds(sock, fds, h)) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) fail = true;
      if (!bench::parent_wants_us(ctl) || steady::now() - last > bench::wait_deadline) break;
      continue;
    }
    last = steady::now();
    if (pingpong) {
      for (int fd : fds) {
        if (!send_fds(sock, &fd, 1, {1, 1})) fail = true;
        ::close(fd);
        ++moves;
      }
      fds.clear();
      continue;
    }
    if (fds.size() < h.total) continue;
    if (reactor) {
      // What an import does with each at least: check it, register it with the reactor.
      for (int fd : fds) {
        struct stat st {};
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
        ev.data.fd = fd;
        if (::fstat(fd, &st) != 0 || ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) fail = true;
      }
    }
    if (!send_fds(sock, nullptr, 0, {2, h.total})) fail = true;
    if (reactor)  // untimed by A: unregister before sending them back
      for (int fd : fds) ::epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
    for (std::size_t i = 0; i < fds.size() && !fail; i += per_msg) {
      const std::size_t n = std::min(per_msg, fds.size() - i);
      if (!send_fds(sock, fds.data() + i, n, {1, static_cast<std::uint32_t>(fds.size())})) fail = true;
    }
    moves += fds.size();
    for (int fd : fds) ::close(fd);
    fds.clear();
  }
  for (int fd : fds) ::close(fd);
  return bench::helper_exit(ctl, fail);
}

// Echo server side (B): read 64 bytes, write them back, repeat. The same code for both streams.
template <class Stream>
struct echo_session : std::enable_shared_from_this<echo_session<Stream>> {
  Stream s;
  std::array<char, echo_bytes> buf{};
  std::uint64_t& echoes;
  std::uint64_t& bad;
  echo_session(Stream st, std::uint64_t& e, std::uint64_t& b) : s(std::move(st)), echoes(e), bad(b) {}
  void start() {
    asio::async_read(s, asio::buffer(buf), [self = this->shared_from_this()](baton::error_code e, std::size_t) {
      if (e) return;  // the client closed: done
      asio::async_write(self->s, asio::buffer(self->buf), [self](baton::error_code e2, std::size_t) {
        if (e2) return void(++self->bad);
        if (++self->echoes < max_echoes) self->start();
      });
    });
  }
};

// args: CTL DATA CHANNEL MODE. plain: listens and accepts itself (port in DATA); baton: creates
// CHANNEL and serves the connections moved to it.
int role_echo_server(char** args) {
  helper_blocks h;
  if (const int rc = h.attach(args[0], args[1])) return rc;
  const std::string name = args[2];
  const bool moved = std::string(args[3]) == "baton";
  asio::io_context io;
  baton::error_code ec;
  std::uint64_t echoes = 0, bad = 0, seen = 0;
  auto last = steady::now();
  baton::channel rx;
  tcp::acceptor acc(io);
  std::function<void()> next;
  if (moved) {
    baton::channel::remove_stale(name, ec);
    rx = baton::channel::create(io.get_executor(), name, {}, ec);
    if (ec) return h.ctl->failed.store(1), 1;
    next = [&] {
      baton::async_receive(rx, [&](baton::error_code e, baton::arrival a) {
        if (e == asio::error::operation_aborted) return;
        if (e || a.kind != baton::ticket_kind::connection) return void(++bad);
        std::make_shared<echo_session<baton::connection>>(std::move(a.conn), echoes, bad)->start();
        next();
      });
    };
  } else {
    acc.open(tcp::v4(), ec);
    if (!ec) acc.bind({asio::ip::address_v4::loopback(), 0}, ec);
    if (!ec) acc.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return h.ctl->failed.store(1), 1;
    h.data->port.store(acc.local_endpoint().port());
    next = [&] {
      acc.async_accept([&](baton::error_code e, tcp::socket sk) {
        if (e == asio::error::operation_aborted) return;
        if (e) return void(++bad);
        sk.set_option(tcp::no_delay(true), e);
        std::make_shared<echo_session<tcp::socket>>(std::move(sk), echoes, bad)->start();
        next();
      });
    };
  }
  next();
  housekeeping hk(io, [&] {
    if (echoes != seen) seen = echoes, last = steady::now();
    return bad == 0 && bench::parent_wants_us(h.ctl) && steady::now() - last < bench::wait_deadline;
  });
  h.ctl->ready.store(1, std::memory_order_release);
  while (!io.stopped()) io.run();
  return bench::helper_exit(h.ctl, bad != 0);
}

void print_ratios() {
  auto line = [](const char* what, double a, double b, const char* unit) {
    if (std::isnan(a) || std::isnan(b) || b == 0) return;
    std::fprintf(stderr, "ratio %-44s %.3f  (%.4g vs %.4g %s)\n", what, a / b, a, b, unit);
  };
  for (const char* k : {"pidfd_getfd", "scm_rights"}) {
    line((std::string("move p50 ") + k + " / raw hop p50").c_str(), measured(std::string("lat_move/") + k),
         measured("lat_raw"), "us");
    line((std::string("hop p50 ") + k + " / raw hop p50").c_str(), measured(std::string("lat_hop/") + k),
         measured("lat_raw"), "us");
  }
  for (const char* k : {"pidfd_getfd", "scm_rights"})
    for (const char* r : {"64", "1"})
      line((std::string("burst ") + k + " / raw " + r + " fd(s) per msg").c_str(),
           measured(std::string("burst/") + k), measured(std::string("burst_raw/") + r), "conn/s");
  for (const char* k : {"pidfd_getfd", "scm_rights"})
    line((std::string("burst ") + k + " / raw 64 + reactor registration").c_str(),
         measured(std::string("burst/") + k), measured("burst_raw_reactor/64"), "conn/s");
  line("raw 64 + reactor registration / raw 64", measured("burst_raw_reactor/64"), measured("burst_raw/64"),
       "conn/s");
  line("echo baton::connection / plain socket", measured("echo/baton"), measured("echo/plain"), "msg/s");
  line("echo server CPU per message, baton / plain", measured("echo_cpu/baton"), measured("echo_cpu/plain"), "ns");
}

// The helper roles of this binary: name, least argc, entry point.
constexpr bench::role helper_roles[] = {{"baton-peer", 8, role_baton_peer},
                                        {"raw-peer", 6, role_raw_peer},
                                        {"echo-server", 6, role_echo_server}};

}  // namespace

int main(int argc, char** argv) { return bench::run_main(argc, argv, helper_roles, install_sigalrm, print_ratios); }
