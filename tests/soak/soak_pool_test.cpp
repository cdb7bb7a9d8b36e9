// Reliability under repetition (issue 7): a pool of live connections moved back and forth
// between two processes many thousands of times, with byte-exact echo checks and no leak of
// descriptors/handles or memory.
#include <baton/move.hpp>

#include "async_helpers.hpp"
#include "move_helpers.hpp"
#include "net_helpers.hpp"
#include "ring.hpp"
#include "soak_support.hpp"
#include "test_prelude.hpp"
#include "test_support.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <functional>
#include <thread>

namespace {

using namespace baton::test::prelude;
using baton::test::load_state;
using baton::test::save_state;
using namespace baton::test::soak;
using namespace std::chrono_literals;

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

  auto peer_channel = [&]() -> baton::channel& { return baton::test::open_when_ready(tx, ioc.get_executor(), peer); };

  std::function<asio::awaitable<void>(baton::connection)> echo_to_the_end =
      [&](baton::connection conn) -> asio::awaitable<void> {
    co_await echo_until_eof(conn, served);
    --held;
    conn.close();
  };

  // One hop: echo once (streaming connections), then move to the peer; retried on a rollback.
  std::function<asio::awaitable<void>(baton::connection)> hop = [&](baton::connection conn) -> asio::awaitable<void> {
    auto st = load_state<hop_state>(conn);
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
    save_state(conn, st);
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
    const auto st = load_state<hop_state>(conn);
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
        save_state(conn, hop_state{0, kind});
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

// The two movers and the clients of their pool, started and connected.
struct soak_run {
  std::size_t pool = 25, streaming = 8;
  std::uint32_t per_connection = 0, warm_per_connection = 80;
  std::string name_a = unique_name("soakA"), name_b = unique_name("soakB");
  name_guard ga{name_a}, gb{name_b};
  std::string ready_a = baton::test::temp_path("sra"), ready_b = baton::test::temp_path("srb"),
              sync = baton::test::temp_path("ssync"), stop = baton::test::temp_path("sstop");
  child a, b;
  asio::io_context cio;
  std::vector<std::unique_ptr<stream_client>> streams;
  std::vector<tcp::socket> idle;

  std::uint64_t expected_moves() const { return std::uint64_t{pool} * per_connection; }
  std::vector<std::string> args(const std::string& own, const std::string& peer, const char* home,
                                const std::string& ready) const {
    return {own, peer, home, ready, sync, std::to_string(pool), std::to_string(warm_per_connection),
            std::to_string(per_connection), stop};
  }
  void start() {
    a = child::spawn("soak_mover", args(name_a, name_b, "1", ready_a));
    b = child::spawn("soak_mover", args(name_b, name_a, "0", ready_b));
    ASSERT_TRUE(baton::test::wait_for_file(ready_a));
    ASSERT_TRUE(baton::test::wait_for_file(ready_b));
    const auto port = static_cast<unsigned short>(std::stoul(baton::test::read_file(ready_a)));
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
  }
  // The idle connections survived every move: each still echoes. Returns how many did.
  int idle_echoes() {
    int ok = 0;
    for (std::size_t i = 0; i < idle.size(); ++i) {
      std::vector<std::byte> out(4096), back(4096);
      baton::test::fill_pattern(77 + i, out.data(), out.size());
      baton::error_code ec;
      asio::write(idle[i], asio::buffer(out), ec);
      if (!ec) asio::read(idle[i], asio::buffer(back), ec);
      if (!ec && back == out) ++ok;
    }
    return ok;
  }
  // Every streamed byte came back in order. Returns the bytes verified.
  std::uint64_t check_streams() {
    std::uint64_t verified = 0;
    for (auto& c : streams) {
      EXPECT_EQ(c->failure, "") << "stream " << c->seed;
      EXPECT_FALSE(c->write_failed);
      EXPECT_EQ(c->blocks_verified, c->blocks_written) << "stream " << c->seed;
      EXPECT_GT(c->blocks_verified, 0u);
      verified += c->blocks_verified * stream_client::block;
      c->s.close();
    }
    return verified;
  }
  ~soak_run() {
    for (auto* f : {&ready_a, &ready_b, &stop}) baton::test::remove_file(*f);
    for (const char* sfx : {".a0", ".a1", ".a2", ".b0", ".b1", ".b2", ".resa", ".resb"})
      baton::test::remove_file(sync + sfx);
  }
};

// Each mover sent and received half the moves, none rolled back, every echo held.
void check_mover_counts(const std::string& ra, const std::string& rb, std::uint64_t expected_moves, std::size_t pool) {
  EXPECT_EQ(field(ra, "sent"), expected_moves / 2) << ra;
  EXPECT_EQ(field(rb, "sent"), expected_moves / 2) << rb;
  EXPECT_EQ(field(ra, "received"), expected_moves / 2) << ra;
  EXPECT_EQ(field(rb, "received"), expected_moves / 2) << rb;
  EXPECT_EQ(field(ra, "rollbacks") + field(rb, "rollbacks"), 0u);
  EXPECT_EQ(field(ra, "echo_failures") + field(rb, "echo_failures"), 0u);
  EXPECT_EQ(field(ra, "served"), pool) << ra;
}

// The leak check of one mover (`r`, its report): after the warm-up, half-way, and at the end.
void check_mover_leaks(const std::string& who, const std::string& r) {
  const auto wh = field(r, "whandles"), mh = field(r, "mhandles"), eh = field(r, "ehandles");
  const auto wr = field(r, "wrss"), mr = field(r, "mrss"), er = field(r, "erss");
  const auto wp = field(r, "wpriv"), mp = field(r, "mpriv"), ep = field(r, "epriv");
  const auto wt = field(r, "wthreads"), mt = field(r, "mthreads"), et = field(r, "ethreads");
  auto kib = [](std::uint64_t v) { return std::to_string(v / 1024); };
  const std::string handles = std::to_string(wh) + " -> " + std::to_string(mh) + " -> " + std::to_string(eh);
  const std::string rss = kib(wr) + " -> " + kib(mr) + " -> " + kib(er);
  const std::string priv = kib(wp) + " -> " + kib(mp) + " -> " + kib(ep);
  const std::string threads = std::to_string(wt) + " -> " + std::to_string(mt) + " -> " + std::to_string(et);
  std::printf("[ info ] %s (after warm-up -> half-way -> end): handles %s; rss KiB %s; private KiB %s; threads %s\n",
              who.c_str(), handles.c_str(), rss.c_str(), priv.c_str(), threads.c_str());
  ::testing::Test::RecordProperty(who + "_handles", handles);
  ::testing::Test::RecordProperty(who + "_rss_kib", rss);
  ::testing::Test::RecordProperty(who + "_private_kib", priv);
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

TEST(soak, pool_moved_back_and_forth_between_two_processes_without_loss_or_leak) {
  baton::test::raise_fd_limit();
  soak_run run;
  // A loopback round trip costs ~175 us under Wine against ~11 us natively: a tenth of the moves.
  run.per_connection = baton::test::host_is_windows() ? 400 : 4000;
  const char* bound_note =
      baton::test::host_is_windows() ? "10,000 moves (Wine: a tenth of the native 100,000)" : "100,000 moves";
  std::printf("[ info ] soak: %zu connections (%zu streaming), %s\n", run.pool, run.streaming, bound_note);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_NO_FATAL_FAILURE(run.start());

  // The last barrier passed: every connection made all its moves and is back in A.
  const bool finished = baton::test::wait_for_file(run.sync + ".b2", 170s);
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_TRUE(finished) << "the pool did not finish its moves in time";
  if (!finished) {
    // Unblock the clients' writers and readers, so that the test ends now.
    run.a.kill();
    run.b.kill();
  }
  for (auto& c : run.streams) c->finish();
  const int idle_ok = finished ? run.idle_echoes() : 0;
  for (auto& s : run.idle) s.close();
  const std::uint64_t verified = run.check_streams();
  baton::test::touch(run.stop);
  EXPECT_EQ(run.a.wait(60s), 0);
  EXPECT_EQ(run.b.wait(60s), 0);
  const auto ra = baton::test::read_file(run.sync + ".resa"), rb = baton::test::read_file(run.sync + ".resb");
  std::printf("[ info ] A:%s\n[ info ] B:%s\n", ra.c_str(), rb.c_str());
  if (finished) EXPECT_EQ(idle_ok, static_cast<int>(run.idle.size()));

  const auto moves = field(ra, "sent") + field(rb, "sent");
  check_mover_counts(ra, rb, run.expected_moves(), run.pool);
  const auto secs = std::chrono::duration<double>(took).count();
  baton::test::report_bytes_checked(verified);
  std::printf("[ info ] %llu moves in %.1f s; %llu echoed bytes verified on %zu streams\n",
              static_cast<unsigned long long>(moves), secs, static_cast<unsigned long long>(verified), run.streaming);
  RecordProperty("moves", std::to_string(moves));
  RecordProperty("seconds", std::to_string(secs));
  check_mover_leaks("A", ra);
  check_mover_leaks("B", rb);
}

}  // namespace
