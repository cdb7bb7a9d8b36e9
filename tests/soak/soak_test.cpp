// Reliability under repetition and under a hostile peer (issue 7): a pool of live connections
// moved back and forth between two processes many thousands of times, with byte-exact echo
// checks and no leak of descriptors/handles or memory; and a target that never reads its
// channel, which must neither stall other moves and traffic nor make the sender grow.
#include <baton/move.hpp>

#include "async_helpers.hpp"
#include "ring.hpp"
#include "net_helpers.hpp"
#include "test_support.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/steady_timer.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <thread>

namespace {
// Handles a process may gain between two measurements without a leak of ours: Wine's own
// handles, a pidfd cached for a new peer. Every leak these tests look for grows with the number
// of moves, which is in the hundreds or thousands.
constexpr std::uint64_t handle_noise = 8;
}  // namespace

namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using baton::errc;
using baton::test::child;
using baton::test::name_guard;
using baton::test::unique_name;
using namespace std::chrono_literals;
constexpr auto tuple_aw = asio::as_tuple(asio::use_awaitable);

using usage = baton::test::process_usage;

std::string usage_text(const std::string& tag, const usage& u) {
  return tag + "handles=" + std::to_string(u.handles) + " " + tag + "rss=" + std::to_string(u.rss) + " " + tag +
         "priv=" + std::to_string(u.priv) + " " + tag + "threads=" + std::to_string(u.threads);
}

std::uint64_t field(const std::string& text, const std::string& key) {
  auto p = text.find(" " + key + "=");
  if (p == std::string::npos) return ~0ull;
  return std::stoull(text.substr(p + key.size() + 2));
}

// Private memory a process may gain between two measurements without it counting as a leak:
// glibc's malloc (and Windows' heap) keep freed chunks in per-size caches and trim the top of
// the heap only past a threshold (128 KiB by default), and Asio recycles operation storage per
// thread. After the warm-up every cache has seen its working set; a leak of even 24 bytes per
// move would be 2.3 MiB over 98,000 moves, so 2 MiB separates the two (natively the growth
// measured after the warm-up is under 150 KiB).
constexpr std::uint64_t memory_slack = 2u << 20;

// A thread that did not exist at the first measurement brings its own memory. Under Wine,
// where PagefileUsage is the Unix process's RssAnon, each new thread added ~1,020 KiB (seen:
// 4 -> 5 threads with +1,020 KiB, and runs where private memory stepped up by several MiB at
// once, then stayed flat). Wine's thread pool, which serves the waits of emulated sockets,
// starts such threads under load; their number follows the concurrency, not the moves. So the
// bound grows by 1.5 MiB per additional thread, and the thread counts are reported.
constexpr std::uint64_t per_new_thread = 1536u << 10;
// Under AddressSanitizer freed memory sits in a quarantine (256 MiB by default) and TSan keeps
// shadow state, so resident memory grows with the number of allocations whatever the program
// does: the memory bounds mean nothing there (LeakSanitizer checks leaks in that build). The
// descriptor/handle counts are checked in every build.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool memory_is_measurable = false;
#else
constexpr bool memory_is_measurable = true;
#endif

std::uint64_t memory_bound(std::uint64_t threads_before, std::uint64_t threads_after) {
  return memory_slack + (threads_after > threads_before ? threads_after - threads_before : 0) * per_new_thread;
}

// The resident set also holds the pages of the shared rings a mover maps: its own channel and
// its peer's. A ring's pages become resident as its write position passes over them for the
// first time (after the warm-up only a few hundred KiB of each 4 MiB ring had been written), and
// never beyond the mapping. Measured here: +8.3 MiB of RssShmem over the run, exactly the two
// mappings. So the whole resident set may grow by both mappings on top of the private slack.
const std::uint64_t mover_rings_bytes =
    2 * baton::detail::ring::mapping_bytes(baton::channel_options{}.ring_bytes, baton::channel_options{}.ack_slots);

// Per-connection state that travels with every move.
struct hop_state {
  std::uint32_t moves = 0;
  char kind = 'I';  ///< 'S': a streaming client checks an echo; 'I': idle until the end
};
hop_state load(const baton::connection& c) {
  hop_state s;
  if (c.state().size() == sizeof s) std::memcpy(&s, c.state().data(), sizeof s);
  return s;
}
void save(baton::connection& c, const hop_state& s) {
  c.state().resize(sizeof s);
  std::memcpy(c.state().data(), &s, sizeof s);
}

// Echoes on `c` until its client closes (or an error), then counts it in `finished`.
template <class Counter>
asio::awaitable<void> echo_until_eof(baton::connection& c, Counter& finished) {
  std::vector<char> buf(16 * 1024);
  for (;;) {
    auto [ec, n] = co_await c.async_read_some(asio::buffer(buf), tuple_aw);
    if (ec) break;
    auto [wec, wn] = co_await asio::async_write(c, asio::buffer(buf.data(), n), tuple_aw);
    if (wec) break;
  }
  ++finished;
}

// Polls the io_context until `cond` holds or `deadline` passes.
template <class Cond>
bool run_until(asio::io_context& ioc, Cond cond, std::chrono::milliseconds deadline) {
  const auto end = std::chrono::steady_clock::now() + deadline;
  while (!cond() && std::chrono::steady_clock::now() < end) {
    ioc.run_for(5ms);
    if (ioc.stopped()) ioc.restart();
  }
  return cond();
}

// One of the two movers of the soak. args: own-channel peer-channel home(1/0) ready-file
// sync-prefix pool warm-moves total-moves stop-file
//
// The home mover (A) accepts the pool. Every connection hops A -> B -> A ... : a streaming one
// echoes one read on each hop, an idle one moves straight on. Its state counts its moves, so
// the total is exact: pool * total-moves. Each of three barriers (after the warm-up, half-way,
// at the end; even numbers of moves) finds every connection back in A, parked, and B holding
// none: that is where both processes measure themselves, A first (file sync.aN), then B
// (sync.bN), and where A waits for B's measurement before it lets the pool move on. After the
// last barrier A echoes on every connection until its client closes.
BATON_TEST_ROLE(soak_mover) {
  const std::string own = args.at(0), peer = args.at(1), ready = args.at(3), sync = args.at(4), stop = args.at(8);
  const bool home = args.at(2) == "1";
  const std::size_t pool = std::stoul(args.at(5));
  const std::uint32_t warm = static_cast<std::uint32_t>(std::stoul(args.at(6)));
  const std::uint32_t total = static_cast<std::uint32_t>(std::stoul(args.at(7)));
  // Three barriers: after the warm-up, half-way from there, and at the end (all even).
  const std::uint32_t mid = warm + (total - warm) / 4 * 2;
  const std::array<std::uint32_t, 3> barriers{warm, mid, total};
  constexpr int last = 3;
  baton::test::raise_fd_limit();

  asio::io_context ioc;
  auto rx = baton::channel::create(ioc.get_executor(), own);
  baton::channel tx;
  std::uint64_t sent = 0, received = 0, rollbacks = 0, served = 0, echo_failures = 0;
  std::size_t held = 0;  // connections this process owns, parked or hopping or in a send
  std::vector<baton::connection> parked;
  int phase = 0;  // index of the next barrier; `last`: done (echo only)
  std::array<usage, 3> u;
  std::string failure;

  auto peer_channel = [&]() -> baton::channel& {
    while (!tx.is_open()) {
      baton::error_code ec;
      tx = baton::channel::open(ioc.get_executor(), peer, {}, ec);
      if (ec) baton::test::nap(5ms);
    }
    return tx;
  };

  std::function<asio::awaitable<void>(baton::connection)> echo_to_the_end =
      [&](baton::connection conn) -> asio::awaitable<void> {
    co_await echo_until_eof(conn, served);
    --held;
    conn.close();
  };

  // One hop: echo once (streaming connections), then move to the peer; retried on a rollback.
  std::function<asio::awaitable<void>(baton::connection)> hop = [&](baton::connection conn) -> asio::awaitable<void> {
    auto st = load(conn);
    if (st.kind == 'S') {
      std::vector<char> buf(16 * 1024);
      auto [ec, n] = co_await conn.async_read_some(asio::buffer(buf), tuple_aw);
      if (!ec) std::tie(ec, n) = co_await asio::async_write(conn, asio::buffer(buf.data(), n), tuple_aw);
      if (ec) {
        ++echo_failures;
        if (failure.empty()) failure = "echo failed after " + std::to_string(st.moves) + " moves: " + ec.message();
        --held;
        co_return;
      }
    }
    ++st.moves;
    save(conn, st);
    for (;;) {
      auto [mec, back] = co_await baton::async_send(peer_channel(), std::move(conn), baton::move_options{}, tuple_aw);
      if (!mec) break;
      ++rollbacks;
      if (failure.empty()) failure = "move failed: " + mec.message();
      conn = std::move(back);
      if (!conn.is_open()) {
        --held;
        co_return;
      }
    }
    ++sent;
    --held;
  };

  auto arrive = [&](baton::connection conn) {
    ++held;
    const auto st = load(conn);
    if (home && std::find(barriers.begin(), barriers.end(), st.moves) != barriers.end()) {
      parked.push_back(std::move(conn));
      return;
    }
    asio::co_spawn(ioc, hop(std::move(conn)), asio::detached);
  };

  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    for (;;) {
      auto [ec, a] = co_await baton::async_receive(rx, tuple_aw);
      if (ec == asio::error::operation_aborted) co_return;
      if (ec) {
        if (failure.empty()) failure = "receive failed: " + ec.message();
        continue;
      }
      if (a.kind != baton::ticket_kind::connection) continue;
      ++received;
      arrive(std::move(a.conn));
    }
  }, asio::detached);

  tcp::acceptor acc(ioc);
  std::string ready_text = "ok";
  if (home) {
    acc = tcp::acceptor(ioc, {asio::ip::address_v4::loopback(), 0});
    ready_text = std::to_string(acc.local_endpoint().port());
    asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
      for (std::size_t i = 0; i < pool; ++i) {
        auto [ec, s] = co_await acc.async_accept(tuple_aw);
        if (ec) co_return;
        s.set_option(tcp::no_delay(true));
        // The client's first byte says what kind of stream it is.
        char kind = 0;
        auto [rec, rn] = co_await asio::async_read(s, asio::buffer(&kind, 1), tuple_aw);
        if (rec) co_return;
        baton::connection conn(std::move(s));
        save(conn, hop_state{0, kind});
        ++held;
        asio::co_spawn(ioc, hop(std::move(conn)), asio::detached);
      }
    }, asio::detached);
  }
  baton::test::write_file(ready, ready_text);

  // Barrier bookkeeping, checked between turns of the io_context.
  auto step = [&] {
    if (home) {
      if (phase < last && parked.size() == pool && held == pool) {
        const std::string mine = sync + ".a" + std::to_string(phase), theirs = sync + ".b" + std::to_string(phase);
        if (!baton::test::file_exists(mine)) {
          u[static_cast<std::size_t>(phase)] = baton::test::measure_process();
          baton::test::write_file(mine, "ok");
        }
        if (!baton::test::file_exists(theirs)) return;
        auto conns = std::move(parked);
        parked.clear();
        for (auto& c : conns)
          asio::co_spawn(ioc, (phase + 1 < last ? hop : echo_to_the_end)(std::move(c)), asio::detached);
        ++phase;
      }
    } else if (phase < last && held == 0 && baton::test::file_exists(sync + ".a" + std::to_string(phase))) {
      u[static_cast<std::size_t>(phase)] = baton::test::measure_process();
      baton::test::write_file(sync + ".b" + std::to_string(phase), "ok");
      ++phase;
    }
  };

  // On the stop signal A still waits (briefly) for the EOF of every connection, which its
  // clients closed just before. The checks run from a 5 ms timer inside the io_context, which runs without a time limit of
  // its own: on Asio's io_uring backend a loop of run_for(5ms) stalled the pool (docs/io_uring.md).
  const auto deadline = std::chrono::steady_clock::now() + 200s;
  std::chrono::steady_clock::time_point stop_seen{};
  asio::steady_timer ticker(ioc);
  std::function<void()> tick = [&] {
    step();
    if (stop_seen == std::chrono::steady_clock::time_point{}) {
      if (baton::test::file_exists(stop)) stop_seen = std::chrono::steady_clock::now();
    } else if (!home || phase < last || held == 0 || std::chrono::steady_clock::now() - stop_seen > 20s) {
      return ioc.stop();
    }
    if (std::chrono::steady_clock::now() >= deadline) return ioc.stop();
    ticker.expires_after(5ms);
    ticker.async_wait([&](baton::error_code) { tick(); });
  };
  asio::post(ioc, tick);
  ioc.run();
  const std::string result = " sent=" + std::to_string(sent) + " received=" + std::to_string(received) +
                             " rollbacks=" + std::to_string(rollbacks) + " served=" + std::to_string(served) +
                             " echo_failures=" + std::to_string(echo_failures) + " phase=" + std::to_string(phase) +
                             " held=" + std::to_string(held) + " " + usage_text("w", u[0]) + " " +
                             usage_text("m", u[1]) + " " + usage_text("e", u[2]) + " failure=" + (failure.empty() ? "none" : failure);
  baton::test::write_file(sync + (home ? ".resa" : ".resb"), result);
  return 0;
}

// A blocking client of one soak connection. A streaming client writes pattern blocks until told
// to stop, then half-closes; its reader checks every echoed byte in order, up to the EOF.
struct stream_client {
  static constexpr std::size_t block = 16 * 1024;
  tcp::socket s;
  std::uint64_t seed;
  std::atomic<bool> stop{false}, write_failed{false};
  std::uint64_t blocks_written = 0, blocks_verified = 0;
  std::string failure;
  std::thread writer, reader;

  stream_client(tcp::socket sock, std::uint64_t sd) : s(std::move(sock)), seed(sd) {
    writer = std::thread([this] {
      std::vector<std::byte> buf(block);
      for (std::uint64_t i = 0; !stop; ++i) {
        baton::test::fill_pattern(seed + i, buf.data(), block);
        baton::error_code ec;
        baton::test::write_all(s, asio::buffer(buf), ec);
        if (ec) {
          write_failed = true;
          return;
        }
        ++blocks_written;
      }
      baton::error_code ec;
      s.shutdown(tcp::socket::shutdown_send, ec);
    });
    reader = std::thread([this] {
      std::vector<std::byte> got(block);
      for (std::uint64_t i = 0;; ++i) {
        baton::error_code ec;
        const std::size_t have = baton::test::read_all(s, asio::buffer(got), ec);
        if (ec == asio::error::eof && have == 0) return;
        if (ec) {
          failure = "read failed after " + std::to_string(i * block + have) + " bytes: " + ec.message();
          return;
        }
        if (!baton::test::check_pattern(seed + i, got.data(), block)) {
          failure = "stream differs in block " + std::to_string(i);
          return;
        }
        ++blocks_verified;
      }
    });
  }
  void finish() {
    stop = true;
    writer.join();
    reader.join();
  }
  // A test that ends early (a failed assertion) unblocks both threads by shutting the socket.
  ~stream_client() {
    if (!writer.joinable() && !reader.joinable()) return;
    stop = true;
    baton::error_code ec;
    s.shutdown(tcp::socket::shutdown_both, ec);
    if (writer.joinable()) writer.join();
    if (reader.joinable()) reader.join();
  }
};

TEST(soak, pool_moved_back_and_forth_between_two_processes_without_loss_or_leak) {
  baton::test::raise_fd_limit();
#ifdef _WIN32
  // A loopback round trip costs ~175 us under Wine against ~11 us natively: a tenth of the moves.
  constexpr std::uint32_t per_connection = 400, warm_per_connection = 80;
  const char* bound_note = "10,000 moves (Wine: a tenth of the native 100,000)";
#else
  constexpr std::uint32_t per_connection = 4000, warm_per_connection = 80;
  const char* bound_note = "100,000 moves";
#endif
  constexpr std::size_t pool = 25, streaming = 8;
  constexpr std::uint64_t expected_moves = std::uint64_t{pool} * per_connection;
  std::printf("[ info ] soak: %zu connections (%zu streaming), %s\n", pool, streaming, bound_note);

  std::string name_a = unique_name("soakA"), name_b = unique_name("soakB");
  name_guard ga(name_a), gb(name_b);
  const auto ready_a = baton::test::temp_path("sra"), ready_b = baton::test::temp_path("srb"),
             sync = baton::test::temp_path("ssync"), stop = baton::test::temp_path("sstop");
  const std::vector<std::string> common{std::to_string(pool), std::to_string(warm_per_connection),
                                        std::to_string(per_connection), stop};
  auto args = [&](const std::string& own, const std::string& peer, const char* home, const std::string& ready) {
    std::vector<std::string> v{own, peer, home, ready, sync};
    v.insert(v.end(), common.begin(), common.end());
    return v;
  };
  const auto t0 = std::chrono::steady_clock::now();
  auto a = child::spawn("soak_mover", args(name_a, name_b, "1", ready_a));
  auto b = child::spawn("soak_mover", args(name_b, name_a, "0", ready_b));
  ASSERT_TRUE(baton::test::wait_for_file(ready_a));
  ASSERT_TRUE(baton::test::wait_for_file(ready_b));
  const auto port = static_cast<unsigned short>(std::stoul(baton::test::read_file(ready_a)));

  asio::io_context cio;
  std::vector<std::unique_ptr<stream_client>> streams;
  std::vector<tcp::socket> idle;
  for (std::size_t i = 0; i < pool; ++i) {
    auto s = baton::test::connect_loopback(cio, port);
    // Every third connection streams; the others stay silent until the end.
    const bool stream = i % 3 == 0 && streams.size() < streaming;
    asio::write(s, asio::buffer(stream ? "S" : "I", 1));
    if (stream)
      streams.push_back(std::make_unique<stream_client>(std::move(s), 1000 * (i + 1)));
    else
      idle.push_back(std::move(s));
  }

  // The last barrier passed: every connection made all its moves and is back in A.
  const bool finished = baton::test::wait_for_file(sync + ".b2", 170s);
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_TRUE(finished) << "the pool did not finish its moves in time";
  if (!finished) {
    // Unblock the clients' writers and readers, so that the test ends now.
    a.kill();
    b.kill();
  }
  for (auto& c : streams) c->finish();
  // The idle connections survived every move: each still echoes.
  int idle_ok = 0;
  for (std::size_t i = 0; i < idle.size() && finished; ++i) {
    std::vector<std::byte> out(4096), back(4096);
    baton::test::fill_pattern(77 + i, out.data(), out.size());
    baton::error_code ec;
    asio::write(idle[i], asio::buffer(out), ec);
    if (!ec) asio::read(idle[i], asio::buffer(back), ec);
    if (!ec && back == out) ++idle_ok;
  }
  for (auto& s : idle) s.close();
  std::uint64_t verified = 0;
  for (auto& c : streams) {
    EXPECT_EQ(c->failure, "") << "stream " << c->seed;
    EXPECT_FALSE(c->write_failed);
    EXPECT_EQ(c->blocks_verified, c->blocks_written) << "stream " << c->seed;
    EXPECT_GT(c->blocks_verified, 0u);
    verified += c->blocks_verified * stream_client::block;
    c->s.close();
  }
  baton::test::touch(stop);
  EXPECT_EQ(a.wait(60s), 0);
  EXPECT_EQ(b.wait(60s), 0);
  const auto ra = baton::test::read_file(sync + ".resa"), rb = baton::test::read_file(sync + ".resb");
  std::printf("[ info ] A:%s\n[ info ] B:%s\n", ra.c_str(), rb.c_str());
  if (finished) EXPECT_EQ(idle_ok, static_cast<int>(idle.size()));

  const auto moves = field(ra, "sent") + field(rb, "sent");
  EXPECT_EQ(field(ra, "sent"), expected_moves / 2) << ra;
  EXPECT_EQ(field(rb, "sent"), expected_moves / 2) << rb;
  EXPECT_EQ(field(ra, "received"), expected_moves / 2) << ra;
  EXPECT_EQ(field(rb, "received"), expected_moves / 2) << rb;
  EXPECT_EQ(field(ra, "rollbacks") + field(rb, "rollbacks"), 0u);
  EXPECT_EQ(field(ra, "echo_failures") + field(rb, "echo_failures"), 0u);
  EXPECT_EQ(field(ra, "served"), pool) << ra;
  const auto secs = std::chrono::duration<double>(took).count();
  baton::test::report_bytes_checked(verified);
  std::printf("[ info ] %llu moves in %.1f s; %llu echoed bytes verified on %zu streams\n",
              static_cast<unsigned long long>(moves), secs, static_cast<unsigned long long>(verified), streaming);
  RecordProperty("moves", std::to_string(moves));
  RecordProperty("seconds", std::to_string(secs));

  // The leak check, in each mover: after the warm-up, half-way, and at the end.
  for (const auto* r : {&ra, &rb}) {
    const std::string who = r == &ra ? "A" : "B";
    const auto wh = field(*r, "whandles"), mh = field(*r, "mhandles"), eh = field(*r, "ehandles");
    const auto wr = field(*r, "wrss"), mr = field(*r, "mrss"), er = field(*r, "erss");
    const auto wp = field(*r, "wpriv"), mp = field(*r, "mpriv"), ep = field(*r, "epriv");
    const auto wt = field(*r, "wthreads"), mt = field(*r, "mthreads"), et = field(*r, "ethreads");
    auto kib = [](std::uint64_t v) { return std::to_string(v / 1024); };
    const std::string handles = std::to_string(wh) + " -> " + std::to_string(mh) + " -> " + std::to_string(eh);
    const std::string rss = kib(wr) + " -> " + kib(mr) + " -> " + kib(er);
    const std::string priv = kib(wp) + " -> " + kib(mp) + " -> " + kib(ep);
    const std::string threads = std::to_string(wt) + " -> " + std::to_string(mt) + " -> " + std::to_string(et);
    std::printf("[ info ] %s (after warm-up -> half-way -> end): handles %s; rss KiB %s; private KiB %s; threads %s\n",
                who.c_str(), handles.c_str(), rss.c_str(), priv.c_str(), threads.c_str());
    RecordProperty(who + "_handles", handles);
    RecordProperty(who + "_rss_kib", rss);
    RecordProperty(who + "_private_kib", priv);
    EXPECT_GT(wh, 0u);
    // A leak grows with the moves (thousands here); a few handles the runtime opens or closes on
    // its own are noise, and a decrease is never a leak.
    EXPECT_LT(mh, wh + handle_noise) << who << " leaked descriptors/handles: " << handles;
    EXPECT_LT(eh, wh + handle_noise) << who << " leaked descriptors/handles: " << handles;
    if (memory_is_measurable) {
      EXPECT_LT(ep, wp + memory_bound(wt, et)) << who << " private memory grew after the warm-up";
      EXPECT_LT(er, wr + memory_bound(wt, et) + mover_rings_bytes) << who << " resident memory grew beyond its rings";
    }
  }
  for (auto* f : {&ready_a, &ready_b, &stop})
    baton::test::remove_file(*f);
  for (const char* sfx : {".a0", ".a1", ".a2", ".b0", ".b1", ".b2", ".resa", ".resb"}) baton::test::remove_file(sync + sfx);
}

}  // namespace

namespace {

// A target that owns a channel with a small ring and never takes a ticket off it (it never
// receives, so it never acks and never reads). args: channel ready-file stop-file
BATON_TEST_ROLE(stalled_target) {
  asio::io_context ioc;
  baton::channel_options o;
  // The smallest ring, so that it fills after a few dozen tickets. The ring is grown to hold
  // two tickets of the largest size the channel accepts, so that limit comes down too (a
  // connection ticket is a few hundred bytes at most: Windows' WSAPROTOCOL_INFOW is 628).
  o.ring_bytes = 4096;
  o.limits.max_ticket_bytes = 1024;
  o.ack_slots = 16;
  auto rx = baton::channel::create(ioc.get_executor(), args.at(0), o);
  baton::test::touch(args.at(1));
  const auto deadline = std::chrono::steady_clock::now() + 200s;
  while (!baton::test::file_exists(args.at(2)) && std::chrono::steady_clock::now() < deadline) baton::test::nap(10ms);
  return 0;
}

// A healthy target: takes every connection and echoes on it until its client closes.
// args: channel ready-file stop-file result-file
BATON_TEST_ROLE(healthy_target) {
  asio::io_context ioc;
  auto rx = baton::channel::create(ioc.get_executor(), args.at(0));
  std::uint64_t received = 0, served = 0;
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    for (;;) {
      auto [ec, a] = co_await baton::async_receive(rx, tuple_aw);
      if (ec == asio::error::operation_aborted) co_return;
      if (ec || a.kind != baton::ticket_kind::connection) continue;
      ++received;
      asio::co_spawn(ioc, [&, c = std::move(a.conn)]() mutable -> asio::awaitable<void> {
        co_await echo_until_eof(c, served);
      }, asio::detached);
    }
  }, asio::detached);
  baton::test::touch(args.at(1));
  run_until(ioc, [&] { return baton::test::file_exists(args.at(2)); }, 200s);
  baton::test::write_file(args.at(3), " received=" + std::to_string(received) + " served=" + std::to_string(served));
  return 0;
}

// A client that keeps doing pattern-checked echo round trips on its own connection (served in
// the test process) until told to stop.
struct busy_client {
  tcp::socket s;
  std::atomic<bool> stop{false}, done{false};
  std::atomic<std::uint64_t> round_trips{0};
  std::string failure;
  std::thread t;
  busy_client(tcp::socket sock, std::uint64_t seed) : s(std::move(sock)) {
    t = std::thread([this, seed] {
      std::vector<std::byte> out(1024), back(1024);
      for (std::uint64_t i = 0; !stop; ++i) {
        baton::test::fill_pattern(seed + i, out.data(), out.size());
        baton::error_code ec;
        asio::write(s, asio::buffer(out), ec);
        if (!ec) asio::read(s, asio::buffer(back), ec);
        if (ec || back != out) {
          failure = ec ? "round trip " + std::to_string(i) + ": " + ec.message() : "echo differs in round trip " + std::to_string(i);
          break;
        }
        ++round_trips;
      }
      done = true;
    });
  }
  // A test that ends early (a failed assertion) unblocks the thread by shutting the socket.
  ~busy_client() {
    if (!t.joinable()) return;
    stop = true;
    baton::error_code ec;
    s.shutdown(tcp::socket::shutdown_both, ec);
    t.join();
  }
};

// One pattern-checked echo round trip through `server` (driven by ioc) from `client`.
// With `written`, the client already sent the pattern (e.g. while a move was under way).
::testing::AssertionResult echo_once(asio::io_context& ioc, baton::connection& server, tcp::socket& client,
                                     std::uint64_t seed, bool written = false, std::size_t n = 2048) {
  std::vector<std::byte> out(n), back(n);
  baton::test::fill_pattern(seed, out.data(), n);
  if (!written) asio::write(client, asio::buffer(out));
  const bool done = baton::test::run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    std::vector<std::byte> buf(n);
    co_await asio::async_read(server, asio::buffer(buf), asio::use_awaitable);
    co_await asio::async_write(server, asio::buffer(buf), asio::use_awaitable);
  }(), 20s);
  if (!done) return ::testing::AssertionFailure() << "the server side did not echo in time";
  baton::error_code ec;
  asio::read(client, asio::buffer(back), ec);
  if (ec) return ::testing::AssertionFailure() << "client read: " << ec.message();
  if (back != out) return ::testing::AssertionFailure() << "echo differs";
  return ::testing::AssertionSuccess();
}

TEST(soak_stall, a_target_that_never_reads_cannot_stall_other_moves_or_traffic_nor_grow_the_sender) {
  name_guard gs(unique_name("stalled")), gh(unique_name("healthy"));
  const auto ready_s = baton::test::temp_path("str"), ready_h = baton::test::temp_path("shr"),
             stop = baton::test::temp_path("ststop"), result_h = baton::test::temp_path("shres");
  auto stalled = child::spawn("stalled_target", {gs.name, ready_s, stop});
  auto healthy = child::spawn("healthy_target", {gh.name, ready_h, stop, result_h});
  ASSERT_TRUE(baton::test::wait_for_file(ready_s));
  ASSERT_TRUE(baton::test::wait_for_file(ready_h));

  asio::io_context ioc;
  tcp::acceptor acc(ioc, {asio::ip::address_v4::loopback(), 0});
  const auto port = acc.local_endpoint().port();
  asio::io_context cio;
  auto accept_one = [&](tcp::socket& client) {
    client = baton::test::connect_loopback(cio, port);
    return baton::connection(acc.accept(), {}, {std::byte{0x5a}, std::byte{0xa5}});
  };
  // Connections that stay here and carry traffic throughout.
  constexpr int busy_n = 4, healthy_n = 16;
  std::vector<baton::connection> local(busy_n);
  int local_finished = 0;
  std::vector<std::unique_ptr<busy_client>> busy;
  for (int i = 0; i < busy_n; ++i) {
    tcp::socket cs(cio);
    local[static_cast<std::size_t>(i)] = accept_one(cs);
    busy.push_back(std::make_unique<busy_client>(std::move(cs), 5000u * static_cast<unsigned>(i + 1)));
    asio::co_spawn(ioc, echo_until_eof(local[static_cast<std::size_t>(i)], local_finished), asio::detached);
  }
  // The connection that is offered to the stalled target again and again.
  tcp::socket victim_client(cio);
  baton::connection victim = accept_one(victim_client);
  const auto victim_state = victim.state();
  // Connections for the healthy target.
  std::vector<tcp::socket> healthy_clients;
  std::vector<baton::connection> to_healthy;
  for (int i = 0; i < healthy_n; ++i) {
    healthy_clients.emplace_back(cio);
    to_healthy.push_back(accept_one(healthy_clients.back()));
  }
  ASSERT_TRUE(echo_once(ioc, victim, victim_client, 1));

  baton::channel_options fail_fast;
  fail_fast.on_full = baton::full_policy::fail;
  auto tx_stalled = baton::channel::open(ioc.get_executor(), gs.name, fail_fast);
  auto tx_healthy = baton::channel::open(ioc.get_executor(), gh.name);

  // 1. One move to the stalled target, pending for seconds, while 16 moves to the healthy one
  // run and the busy connections keep echoing. Bytes the client sends during the move stay.
  const std::string in_flight = "sent while the move hangs;";
  asio::write(victim_client, asio::buffer(in_flight));
  baton::move_options slow;
  slow.timeout = 3s;
  baton::error_code stalled_ec = asio::error::would_block;
  int healthy_ok = 0, healthy_done = 0, healthy_done_at_verdict = -1;
  std::uint64_t busy_at_start = 0, busy_at_verdict = 0;
  for (auto& c : busy) busy_at_start += c->round_trips;
  baton::async_send(tx_stalled, std::move(victim), slow, [&](baton::error_code ec, baton::connection back) {
    stalled_ec = ec;
    victim = std::move(back);
    healthy_done_at_verdict = healthy_done;
    for (auto& c : busy) busy_at_verdict += c->round_trips;
  });
  std::vector<baton::connection> healthy_back(healthy_n);
  for (int i = 0; i < healthy_n; ++i)
    baton::async_send(tx_healthy, std::move(to_healthy[static_cast<std::size_t>(i)]), baton::move_options{},
                      [&, i](baton::error_code ec, baton::connection back) {
                        ++healthy_done;
                        if (!ec) ++healthy_ok;
                        healthy_back[static_cast<std::size_t>(i)] = std::move(back);
                      });
  ASSERT_TRUE(run_until(ioc, [&] { return stalled_ec != asio::error::would_block && healthy_done == healthy_n; }, 60s));
  EXPECT_EQ(stalled_ec, errc::move_timeout) << stalled_ec.message();
  EXPECT_EQ(healthy_ok, healthy_n);
  EXPECT_EQ(healthy_done_at_verdict, healthy_n) << "moves to the healthy target waited for the stalled one";
  EXPECT_GT(busy_at_verdict, busy_at_start) << "traffic on other connections stopped during the stalled move";
  ASSERT_TRUE(victim.is_open());
  EXPECT_EQ(victim.state(), victim_state);
  {
    std::string got(in_flight.size(), '\0');
    ASSERT_TRUE(baton::test::run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
      co_await asio::async_read(victim, asio::buffer(got), asio::use_awaitable);
      co_await asio::async_write(victim, asio::buffer(got), asio::use_awaitable);
    }(), 20s));
    std::string back(in_flight.size(), '\0');
    asio::read(victim_client, asio::buffer(back));
    EXPECT_EQ(back, in_flight);
  }
  EXPECT_TRUE(echo_once(ioc, victim, victim_client, 2));
  int healthy_echo_ok = 0;
  for (int i = 0; i < healthy_n; ++i) {
    std::vector<std::byte> out(1500), back(1500);
    baton::test::fill_pattern(900 + static_cast<std::uint64_t>(i), out.data(), out.size());
    baton::error_code ec;
    asio::write(healthy_clients[static_cast<std::size_t>(i)], asio::buffer(out), ec);
    if (!ec) asio::read(healthy_clients[static_cast<std::size_t>(i)], asio::buffer(back), ec);
    if (!ec && back == out) ++healthy_echo_ok;
  }
  EXPECT_EQ(healthy_echo_ok, healthy_n);

  // 2. Many more attempts on the stalled target: the first ones time out (each ticket stays in
  // the ring, which the target never drains), then the ring is full and, with full_policy::fail,
  // every attempt fails at once with channel_full. Each time the connection comes back intact.
  constexpr int attempts = 300, measure_at = 100;
  baton::move_options quick;
  quick.timeout = 100ms;
  std::map<std::string, int> outcomes;
  int timeouts = 0, full = 0, first_full = -1, echo_ok = 0, echo_checks = 0;
  usage at_measure, at_end;
  for (int i = 1; i <= attempts; ++i) {
    // Now and then (in both regimes) the client sends a block before the attempt, which must
    // still be there, in order, once the connection is back.
    const bool check = i % 25 == 0 || i == 2;
    const std::uint64_t seed = 100 + static_cast<std::uint64_t>(i);
    if (check) {
      std::vector<std::byte> out(2048);
      baton::test::fill_pattern(seed, out.data(), out.size());
      asio::write(victim_client, asio::buffer(out));
    }
    baton::error_code ec = asio::error::would_block;
    baton::async_send(tx_stalled, std::move(victim), quick, [&](baton::error_code e, baton::connection back) {
      ec = e;
      victim = std::move(back);
    });
    ASSERT_TRUE(run_until(ioc, [&] { return ec != asio::error::would_block; }, 20s)) << "attempt " << i;
    if (ec == errc::move_timeout) {
      ++timeouts;
    } else if (ec == errc::channel_full) {
      ++full;
      if (first_full < 0) first_full = i;
    }
    ++outcomes[ec.message()];
    ASSERT_TRUE(victim.is_open()) << "attempt " << i;
    ASSERT_EQ(victim.state(), victim_state) << "attempt " << i;
    if (check) {
      ++echo_checks;
      if (echo_once(ioc, victim, victim_client, seed, true)) ++echo_ok;
    }
    if (i == measure_at) at_measure = baton::test::measure_process();
  }
  at_end = baton::test::measure_process();
  // The busy clients' echoes are served by this io_context: keep it running while they stop.
  for (auto& c : busy) c->stop = true;
  EXPECT_TRUE(run_until(ioc, [&] { return std::all_of(busy.begin(), busy.end(), [](auto& c) { return c->done.load(); }); }, 60s));
  std::uint64_t busy_total = 0;
  for (auto& c : busy) {
    c->t.join();
    EXPECT_EQ(c->failure, "");
    busy_total += c->round_trips;
    c->s.close();
  }
  std::string outcome_text;
  for (auto& [m, n] : outcomes) outcome_text += "'" + m + "' x" + std::to_string(n) + "; ";
  std::printf("[ info ] stalled target: first move timed out with 16 healthy moves done meanwhile; then %d attempts: "
              "%d timeouts, %d channel_full (first at attempt %d); %d busy round trips\n",
              attempts, timeouts, full, first_full, static_cast<int>(busy_total));
  auto usage_line = [](const usage& u) {
    return std::to_string(u.handles) + " handles, rss " + std::to_string(u.rss / 1024) + " KiB, private " +
           std::to_string(u.priv / 1024) + " KiB, " + std::to_string(u.threads) + " threads";
  };
  std::printf("[ info ] sender after %d attempts: %s; after %d: %s\n", measure_at, usage_line(at_measure).c_str(),
              attempts, usage_line(at_end).c_str());
  RecordProperty("timeouts", timeouts);
  RecordProperty("channel_full", full);
  RecordProperty("sender_handles", std::to_string(at_measure.handles) + " -> " + std::to_string(at_end.handles));
  RecordProperty("sender_rss_kib", std::to_string(at_measure.rss / 1024) + " -> " + std::to_string(at_end.rss / 1024));
  EXPECT_EQ(timeouts + full, attempts) << outcome_text;
  EXPECT_GT(timeouts, 0) << outcome_text;
  // The ring filled with void tickets before the measurement, so the measured stretch is the
  // fail-at-once regime that an unbounded retry loop would hit.
  EXPECT_GT(first_full, 0) << outcome_text;
  EXPECT_LT(first_full, measure_at) << outcome_text;
  EXPECT_EQ(echo_ok, echo_checks);
  EXPECT_GT(busy_total, 0u);
  // A leak grows with the attempts (200 between the two measurements); a few handles that the
  // runtime opens or closes on its own (Wine's own handles, a cached pidfd) are noise the test
  // cannot attribute, and a decrease is never a leak.
  EXPECT_LT(at_end.handles, at_measure.handles + handle_noise)
      << "the sender leaked descriptors/handles: " << at_measure.handles << " -> " << at_end.handles;
  const auto bound = memory_bound(at_measure.threads, at_end.threads);
  if (memory_is_measurable) {
    EXPECT_LT(at_end.rss, at_measure.rss + bound) << "the sender's memory grew with the attempts";
    EXPECT_LT(at_end.priv, at_measure.priv + bound) << "the sender's memory grew with the attempts";
  }
  EXPECT_TRUE(echo_once(ioc, victim, victim_client, 7));
  // The local echo loops see their clients' EOF and end before their connections are destroyed.
  EXPECT_TRUE(run_until(ioc, [&] { return local_finished == busy_n; }, 20s));

  for (auto& c : healthy_clients) c.close();
  victim_client.close();
  baton::test::touch(stop);
  EXPECT_EQ(healthy.wait(60s), 0);
  EXPECT_EQ(stalled.wait(60s), 0);
  const auto rh = baton::test::read_file(result_h);
  EXPECT_EQ(field(rh, "received"), static_cast<std::uint64_t>(healthy_n)) << rh;
  for (auto* f : {&ready_s, &ready_h, &stop, &result_h}) baton::test::remove_file(*f);
}

}  // namespace
