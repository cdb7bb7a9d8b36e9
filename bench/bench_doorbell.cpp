// Doorbell wake latency between two processes: ping-pong where the parent (A) rings the helper's
// (B) doorbell and B rings A's back; one sample = round trip / 2. Both sides sleep in the kernel
// between rings (no spinning), so this is the wake-up latency of each mechanism:
//   BM_Doorbell_Baton      baton::detail::doorbell: a FIFO in /dev/shm awaited by an asio
//                          io_context (epoll), drained by the handler; the ringer write()s a byte.
//   BM_Doorbell_UnixDgram  two named (filesystem) AF_UNIX datagram sockets, connected to each
//                          other; blocking recv(), send() of one byte.
//   BM_Doorbell_Futex      FUTEX_WAKE / FUTEX_WAIT (shared, not private) on two words in shared
//                          memory; the waker stores a sequence number and wakes.
// Iteration time (manual) = round trip / 2; p50_us and p99_us are computed from the samples of
// the run. 20 round trips are made before timing starts.
#include "bench_support.hpp"

#include "detail/platform.hpp"

#include <benchmark/benchmark.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <functional>

#include <linux/futex.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>

namespace asio = boost::asio;
using bench::steady;
using bench::control;
using namespace std::chrono_literals;

namespace {

constexpr int warmup_round_trips = 20;
constexpr auto helper_poll = 100ms;  // how often an idle helper checks on its parent

struct samples {
  std::vector<double> us;
  void add(benchmark::State& state, steady::duration round_trip) {
    const double half = std::chrono::duration<double>(round_trip).count() / 2;
    us.push_back(half * 1e6);
    state.SetIterationTime(half);
  }
  void report(benchmark::State& state) {
    if (us.empty()) return;
    state.counters["p50_us"] = bench::quantile(us, 0.50);
    state.counters["p99_us"] = bench::quantile(us, 0.99);
    state.counters["samples"] = static_cast<double>(us.size());
  }
};

// Times `round_trip()` (steady::duration::max() when no answer came) once per iteration, after
// warm-up round trips, and reports the quantiles. False if the warm-up failed (the run is skipped).
template <class RoundTrip>
bool measure_round_trips(benchmark::State& state, RoundTrip&& round_trip) {
  for (int i = 0; i < warmup_round_trips; ++i)
    if (round_trip() == steady::duration::max()) return state.SkipWithError("no answer (warm-up)"), false;
  samples smp;
  for (auto _ : state) {
    const auto rt = round_trip();
    if (rt == steady::duration::max()) {
      state.SkipWithError("no answer within the deadline");
      break;
    }
    smp.add(state, rt);
  }
  smp.report(state);
  return true;
}

// Baton's FIFO doorbell --------------------------------------------------------------------------

void BM_Doorbell_Baton(benchmark::State& state) {
  namespace d = baton::detail;
  const auto a_name = "/" + bench::unique_name("bell-a");
  const auto b_name = "/" + bench::unique_name("bell-b");
  d::doorbell::remove(a_name);
  d::doorbell::remove(b_name);
  struct cleanup {
    std::string a, b;
    ~cleanup() {
      d::doorbell::remove(a);
      d::doorbell::remove(b);
    }
  } names{a_name, b_name};

  asio::io_context io;
  baton::error_code ec;
  auto a = d::doorbell::create(io.get_executor(), a_name, ec);
  if (ec) return state.SkipWithError(("doorbell::create: " + ec.message()).c_str());
  std::optional<bench::pin_guard> pin;
  const int helper_cpu = bench::place(pin, state.range(0) == 0);
  if (helper_cpu < 0) return state.SkipWithError("a cross-CPU run needs 2 CPUs");
  bench::session s;
  if (!s.start(state, "baton-bell", {a_name, b_name}, helper_cpu)) return;
  auto b = d::doorbell::open(b_name, ec);
  if (ec) return state.SkipWithError(("doorbell::open: " + ec.message()).c_str());

  bool rung = false;
  auto round_trip = [&]() -> steady::duration {
    rung = false;
    a.async_wait([&](baton::error_code) { rung = true; });
    const auto t0 = steady::now();
    const auto end = t0 + bench::wait_deadline;
    b.ring();
    // run_one_for() may also return 0 after a reactor pass that produced no handler.
    while (!rung && steady::now() < end) {
      if (io.stopped()) io.restart();
      io.run_one_for(100ms);
    }
    const auto t1 = steady::now();
    if (!rung) {
      a.cancel();
      io.restart();
      io.run_for(100ms);
      return steady::duration::max();
    }
    return t1 - t0;
  };
  if (!measure_round_trips(state, round_trip)) return;
}

// args: CTL A B. Creates B, opens A, rings A whenever B rings.
int role_baton_bell(char** args) {
  namespace d = baton::detail;
  bench::shm ctl_mem;
  if (!ctl_mem.open(args[0], sizeof(control))) return 2;
  auto* ctl = ctl_mem.as<control>();
  const std::string a_name = args[1], b_name = args[2];
  asio::io_context io;
  baton::error_code ec;
  auto b = d::doorbell::create(io.get_executor(), b_name, ec);
  if (ec) return ctl->failed.store(1), 1;
  auto a = d::doorbell::open(a_name, ec);
  if (ec) {
    d::doorbell::remove(b_name);
    return ctl->failed.store(1), 1;
  }
  auto last = steady::now();
  std::function<void()> arm = [&] {
    b.async_wait([&](baton::error_code e) {
      if (e) return;
      a.ring();
      last = steady::now();
      arm();
    });
  };
  arm();
  asio::steady_timer watchdog(io);
  std::function<void()> watch = [&] {
    watchdog.expires_after(helper_poll);
    watchdog.async_wait([&](baton::error_code) {
      if (!bench::parent_wants_us(ctl) || steady::now() - last > bench::wait_deadline) {
        b.cancel();
        return;
      }
      watch();
    });
  };
  watch();
  ctl->ready.store(1, std::memory_order_release);
  io.run();
  d::doorbell::remove(b_name);
  return 0;
}

// Named Unix datagram sockets --------------------------------------------------------------------

struct unix_socket {
  int fd = -1;
  std::string path;
  ~unix_socket() {
    if (fd >= 0) ::close(fd);
    if (!path.empty()) ::unlink(path.c_str());
  }
  static sockaddr_un addr(const std::string& p) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, p.c_str(), sizeof a.sun_path - 1);
    return a;
  }
  bool bind(const std::string& p, std::chrono::milliseconds recv_timeout) {
    ::unlink(p.c_str());
    fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    auto a = addr(p);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return false;
    path = p;
    timeval tv{static_cast<time_t>(recv_timeout.count() / 1000),
               static_cast<suseconds_t>((recv_timeout.count() % 1000) * 1000)};
    return ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0;
  }
  bool connect(const std::string& peer) {
    auto a = addr(peer);
    return ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
};

std::string socket_path(const char* what) { return "/tmp/" + bench::unique_name(what) + ".sock"; }

void BM_Doorbell_UnixDgram(benchmark::State& state) {
  const auto a_path = socket_path("dgram-a");
  const auto b_path = socket_path("dgram-b");
  unix_socket a;
  if (!a.bind(a_path, std::chrono::duration_cast<std::chrono::milliseconds>(bench::wait_deadline)))
    return state.SkipWithError("bind failed");
  std::optional<bench::pin_guard> pin;
  const int helper_cpu = bench::place(pin, state.range(0) == 0);
  if (helper_cpu < 0) return state.SkipWithError("a cross-CPU run needs 2 CPUs");
  bench::session s;
  if (!s.start(state, "dgram-bell", {a_path, b_path}, helper_cpu)) return;
  if (!a.connect(b_path)) return state.SkipWithError("connect failed");

  auto round_trip = [&]() -> steady::duration {
    char c = 1;
    const auto t0 = steady::now();
    if (::send(a.fd, &c, 1, 0) != 1) return steady::duration::max();
    if (::recv(a.fd, &c, 1, 0) != 1) return steady::duration::max();
    return steady::now() - t0;
  };
  if (!measure_round_trips(state, round_trip)) return;
  ::unlink(b_path.c_str());
}

// args: CTL A B
int role_dgram_bell(char** args) {
  bench::shm ctl_mem;
  if (!ctl_mem.open(args[0], sizeof(control))) return 2;
  auto* ctl = ctl_mem.as<control>();
  unix_socket b;
  if (!b.bind(args[2], helper_poll) || !b.connect(args[1])) return ctl->failed.store(1), 1;
  ctl->ready.store(1, std::memory_order_release);
  auto last = steady::now();
  while (bench::parent_wants_us(ctl) && steady::now() - last < bench::wait_deadline) {
    char c;
    if (::recv(b.fd, &c, 1, 0) == 1) {
      ::send(b.fd, &c, 1, 0);
      last = steady::now();
    }
  }
  return 0;
}

// Raw futex --------------------------------------------------------------------------------------

long futex(std::atomic<std::uint32_t>* word, int op, std::uint32_t val, const timespec* timeout = nullptr) {
  return ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), op, val, timeout, nullptr, 0);
}

void BM_Doorbell_Futex(benchmark::State& state) {
  std::optional<bench::pin_guard> pin;
  const int helper_cpu = bench::place(pin, state.range(0) == 0);
  if (helper_cpu < 0) return state.SkipWithError("a cross-CPU run needs 2 CPUs");
  bench::session s;
  if (!s.start(state, "futex-bell", {}, helper_cpu)) return;
  auto* ctl = s.ctl;
  std::uint32_t seq = 0;
  auto round_trip = [&]() -> steady::duration {
    ++seq;
    const auto t0 = steady::now();
    const auto end = t0 + bench::wait_deadline;
    ctl->ping.store(seq, std::memory_order_release);
    futex(&ctl->ping, FUTEX_WAKE, 1);
    const timespec ts{0, 100'000'000};
    for (;;) {
      const auto v = ctl->pong.load(std::memory_order_acquire);
      if (v == seq) break;
      futex(&ctl->pong, FUTEX_WAIT, v, &ts);
      if (steady::now() > end) return steady::duration::max();
    }
    return steady::now() - t0;
  };
  if (!measure_round_trips(state, round_trip)) return;
}

// args: CTL
int role_futex_bell(char** args) {
  bench::shm ctl_mem;
  if (!ctl_mem.open(args[0], sizeof(control))) return 2;
  auto* ctl = ctl_mem.as<control>();
  ctl->ready.store(1, std::memory_order_release);
  std::uint32_t seen = 0;
  auto last = steady::now();
  const timespec ts{0, std::chrono::duration_cast<std::chrono::nanoseconds>(helper_poll).count()};
  for (;;) {
    const auto v = ctl->ping.load(std::memory_order_acquire);
    if (v == seen) {
      futex(&ctl->ping, FUTEX_WAIT, seen, &ts);
      if (ctl->ping.load(std::memory_order_relaxed) == seen &&
          (!bench::parent_wants_us(ctl) || steady::now() - last > bench::wait_deadline))
        return 0;
      continue;
    }
    seen = v;
    ctl->pong.store(v, std::memory_order_release);
    futex(&ctl->pong, FUTEX_WAKE, 1);
    last = steady::now();
  }
}

// cross_cpu:0 = parent and helper pinned to the same CPU (a wake-up is a context switch);
// cross_cpu:1 = pinned to two different CPUs (a wake-up of a sleeping CPU: an IPI).
BENCHMARK(BM_Doorbell_Baton)->ArgName("cross_cpu")->Arg(0)->Arg(1)->UseManualTime();
BENCHMARK(BM_Doorbell_UnixDgram)->ArgName("cross_cpu")->Arg(0)->Arg(1)->UseManualTime();
BENCHMARK(BM_Doorbell_Futex)->ArgName("cross_cpu")->Arg(0)->Arg(1)->UseManualTime();

// The helper roles of this binary: name, least argc, entry point.
constexpr bench::role helper_roles[] = {{"baton-bell", 5, role_baton_bell},
                                        {"dgram-bell", 5, role_dgram_bell},
                                        {"futex-bell", 3, role_futex_bell}};

}  // namespace

int main(int argc, char** argv) { return bench::run_main(argc, argv, helper_roles); }
