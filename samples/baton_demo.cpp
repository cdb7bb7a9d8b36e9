// baton-demo: a dispatcher accepts connections and hands each to one of two worker processes;
// the workers keep handing live keep-alive connections to each other every few requests. A
// built-in load client drives it over loopback and checks every response. The client never
// notices a move: every request is answered, in order, on the connection it was sent on.
//
//   baton-demo [--connections N] [--requests N] [--move-every N]
//
// Exit status 0 when every request succeeded.
#include "cli.hpp"

#include <baton/move.hpp>
#include <baton/spawn.hpp>

#include <boost/asio.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>


namespace asio = boost::asio;
using asio::ip::tcp;
using namespace std::chrono_literals;

namespace {

std::uint32_t self_pid() { return baton::current_process_id(); }

constexpr auto tuple_aw = asio::as_tuple(asio::use_awaitable);

// Per-connection application state that travels with every move.
struct conn_state {
  std::uint32_t served_here = 0;
  std::uint32_t moves = 0;
};

// A worker: serves "GET <n>\n" with "OK <n> <pid>\n"; every `move_every` requests on a
// connection it hands the connection to the peer worker, with whatever the client already
// pipelined travelling as unread bytes.
int run_worker(const std::string& own, const std::string& peer, unsigned move_every) {
  asio::io_context ioc;
  auto rx = baton::channel::create(ioc.get_executor(), own);
  baton::channel tx;
  bool stop = false;
  auto peer_channel = [&]() -> baton::channel& {
    for (int i = 0; !tx.is_open() && i < 2000; ++i) {
      baton::error_code ec;
      tx = baton::channel::open(ioc.get_executor(), peer, {}, ec);
      if (ec) std::this_thread::sleep_for(5ms);
    }
    return tx;
  };
  auto serve = [&](baton::connection c) -> asio::awaitable<void> {
    conn_state st;
    if (c.state().size() == sizeof st) std::memcpy(&st, c.state().data(), sizeof st);
    st.served_here = 0;
    std::string buf;
    for (;;) {
      auto [ec, n] = co_await asio::async_read_until(c, asio::dynamic_buffer(buf), '\n', tuple_aw);
      if (ec) co_return;
      const std::string line = buf.substr(0, n);
      buf.erase(0, n);
      const std::string reply = "OK " + line.substr(4, line.size() - 5) + " " + std::to_string(self_pid()) + "\n";
      auto [wec, wn] = co_await asio::async_write(c, asio::buffer(reply), tuple_aw);
      if (wec) co_return;
      if (++st.served_here >= move_every && !stop) {
        ++st.moves;
        c.state().resize(sizeof st);
        std::memcpy(c.state().data(), &st, sizeof st);
        if (!buf.empty()) c.push_front_unread(buf.data(), buf.size());  // read, not yet served
        buf.clear();
        auto [mec, back] = co_await baton::async_send(peer_channel(), std::move(c), baton::move_options{}, tuple_aw);
        if (!mec) co_return;
        c = std::move(back);  // the peer refused or died: keep serving here
        st.served_here = 0;
      }
    }
  };
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    for (;;) {
      auto [ec, a] = co_await baton::async_receive(rx, tuple_aw);
      if (ec) {
        if (ec == asio::error::operation_aborted) co_return;
        continue;
      }
      if (a.kind == baton::ticket_kind::connection) {
        asio::co_spawn(ioc, serve(std::move(a.conn)), asio::detached);
      } else if (a.kind == baton::ticket_kind::control) {
        stop = true;
        ioc.stop();
      }
    }
  }, asio::detached);
  ioc.run_for(300s);
  return 0;
}

struct report {
  std::atomic<std::uint64_t> ok{0}, failed{0}, pid_changes{0};
  std::vector<double> latencies_us;
  std::mutex m;
  std::set<std::uint32_t> pids;
};

// One keep-alive client connection: `requests` round trips, each checked.
void client_conn(unsigned short port, unsigned requests, unsigned id, report& r) {
  asio::io_context ioc;
  tcp::socket s(ioc);
  baton::error_code ec;
  s.connect({asio::ip::address_v4::loopback(), port}, ec);
  if (ec) {
    r.failed += requests;
    return;
  }
  s.set_option(tcp::no_delay(true));
  std::string buf, last_pid;
  std::vector<double> lat;
  for (unsigned i = 0; i < requests; ++i) {
    const std::string tag = std::to_string(id) + "." + std::to_string(i);
    const auto t0 = std::chrono::steady_clock::now();
    asio::write(s, asio::buffer("GET " + tag + "\n"), ec);
    std::size_t n = ec ? 0 : asio::read_until(s, asio::dynamic_buffer(buf), '\n', ec);
    if (ec) {
      r.failed += requests - i;
      return;
    }
    lat.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    const std::string line = buf.substr(0, n);
    buf.erase(0, n);
    const auto sp = line.rfind(' ');
    if (line.rfind("OK " + tag + " ", 0) != 0 || sp == std::string::npos) {
      ++r.failed;
      continue;
    }
    const std::string pid = line.substr(sp + 1, line.size() - sp - 2);
    if (!last_pid.empty() && pid != last_pid) ++r.pid_changes;
    last_pid = pid;
    ++r.ok;
    std::lock_guard lk(r.m);
    r.pids.insert(static_cast<std::uint32_t>(std::stoul(pid)));
  }
  std::lock_guard lk(r.m);
  r.latencies_us.insert(r.latencies_us.end(), lat.begin(), lat.end());
}

int run_demo(const std::string& exe, unsigned conns, unsigned requests, unsigned move_every) {
  asio::io_context ioc;
  const std::string base = "demo-" + std::to_string(self_pid());
  const std::string w[2] = {base + "-w0", base + "-w1"};
  for (auto& n : w) {
    baton::error_code ec;
    baton::channel::remove_stale(n, ec);
  }
  std::printf("baton-demo: dispatcher pid %u, starting 2 workers\n", self_pid());
  for (int i = 0; i < 2; ++i) {
    baton::error_code ec;
    auto p = baton::spawn_with_handles(exe, {"--worker", w[i], w[1 - i], std::to_string(move_every)}, {}, ec);
    if (ec) {
      std::fprintf(stderr, "cannot start worker: %s\n", ec.message().c_str());
      return 2;
    }
    std::printf("  worker %d: pid %u, channel %s\n", i, p.pid, w[i].c_str());
  }
  baton::channel to[2];
  for (int i = 0; i < 2; ++i) {
    for (int k = 0; k < 1000 && !to[i].is_open(); ++k) {
      baton::error_code ec;
      to[i] = baton::channel::open(ioc.get_executor(), w[i], {}, ec);
      if (ec) std::this_thread::sleep_for(5ms);
    }
    if (!to[i].is_open()) {
      std::fprintf(stderr, "worker %d did not come up\n", i);
      return 2;
    }
  }
  tcp::acceptor acc(ioc, {asio::ip::address_v4::loopback(), 0});
  const auto port = acc.local_endpoint().port();
  std::printf("dispatcher listening on 127.0.0.1:%u; %u keep-alive connections x %u requests, "
              "each connection moves between the workers every %u requests\n",
              port, conns, requests, move_every);
  std::uint64_t dispatched = 0, dispatch_failed = 0;
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    for (unsigned i = 0;; ++i) {
      auto [ec, s] = co_await acc.async_accept(tuple_aw);
      if (ec) co_return;
      s.set_option(tcp::no_delay(true));
      auto [mec, back] = co_await baton::async_send(to[i % 2], baton::connection(std::move(s)),
                                                    baton::move_options{}, tuple_aw);
      if (mec) ++dispatch_failed;
      else ++dispatched;
    }
  }, asio::detached);
  std::thread io([&] { ioc.run_for(600s); });

  report r;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> clients;
  const unsigned threads = std::min(conns, 32u);
  for (unsigned t = 0; t < threads; ++t)
    clients.emplace_back([&, t] {
      for (unsigned c = t; c < conns; c += threads) client_conn(port, requests, c, r);
    });
  for (auto& c : clients) c.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // Stop the workers with a control ticket each.
  for (auto& ch : to) {
    baton::ticket t;
    t.kind = baton::ticket_kind::control;
    t.id = baton::ticket_id::random();
    asio::post(ioc, [&ch, t] { ch.async_send(t, asio::detached); });
  }
  std::this_thread::sleep_for(200ms);
  ioc.stop();
  io.join();

  auto& l = r.latencies_us;
  std::sort(l.begin(), l.end());
  auto pct = [&](double p) { return l.empty() ? 0.0 : l[std::min(l.size() - 1, static_cast<std::size_t>(p * l.size()))]; };
  std::printf("\nrequests      %llu ok, %llu failed  (%.0f req/s over %.2f s)\n",
              static_cast<unsigned long long>(r.ok.load()), static_cast<unsigned long long>(r.failed.load()),
              r.ok / secs, secs);
  std::printf("connections   %llu handed to workers by the dispatcher (%llu failed)\n",
              static_cast<unsigned long long>(dispatched), static_cast<unsigned long long>(dispatch_failed));
  std::printf("moves seen    %llu times a keep-alive connection was answered by another process than the previous request\n",
              static_cast<unsigned long long>(r.pid_changes.load()));
  std::printf("served by     %zu worker processes\n", r.pids.size());
  std::printf("latency       p50 %.0f us, p99 %.0f us per request\n", pct(0.50), pct(0.99));
  const bool ok = r.failed == 0 && r.ok == std::uint64_t{conns} * requests;
  std::printf("%s\n", ok ? "RESULT: every request answered; no client noticed a move"
                         : "RESULT: FAILED requests, see above");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  // A worker process, started by the demo itself: --worker OWN_CHANNEL PEER_CHANNEL MOVE_EVERY.
  std::uint64_t every = 0;
  if (argc == 5 && std::string(argv[1]) == "--worker" && baton_cli::parse_uint(argv[4], 1, 1000000, every))
    return run_worker(argv[2], argv[3], static_cast<unsigned>(every));
  baton_cli::parser cli("baton-demo", "[--connections N] [--requests N] [--move-every N]",
                        "A dispatcher hands connections to two worker processes, which keep handing live keep-alive\n"
                        "connections to each other; a built-in client checks every response over loopback.");
  cli.integer("--connections", 1, 100000, "keep-alive client connections").defaults("200");
  cli.integer("--requests", 1, 1000000, "requests on each connection").defaults("50");
  cli.integer("--move-every", 1, 1000000, "a connection moves to the other worker after this many requests").defaults("10");
  cli.epilog("exit status: 0 when every request was answered, 1 when some failed, 2 for a wrong command line or\n"
             "a demo that could not start.");
  if (auto rc = cli.parse(argc, argv)) return *rc;
  const auto conns = static_cast<unsigned>(cli.num("--connections"));
  const auto requests = static_cast<unsigned>(cli.num("--requests"));
  const auto move_every = static_cast<unsigned>(cli.num("--move-every"));
  try {
    return run_demo(baton::current_executable_path(), conns, requests, move_every);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "baton-demo: %s\n", e.what());
    return 2;
  }
}
