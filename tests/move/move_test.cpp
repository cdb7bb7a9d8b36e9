// Moving live connections and listeners between real processes. The same suite runs natively
// on Linux and, cross-built, on Windows under Wine.
#include <baton/move.hpp>
#include <baton/spawn.hpp>

#include "async_helpers.hpp"
#include "move_helpers.hpp"
#include "net_helpers.hpp"
#include "test_prelude.hpp"
#include "test_support.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/steady_timer.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <optional>
#include <cstring>
#include <thread>

namespace {

using namespace baton::test::prelude;
using baton::test::load_state;
using baton::test::save_state;

std::vector<std::string> platform_strategies() {
  if (baton::test::host_is_windows()) return {"wsa_duplicate", "duplicate_handle"};
  return {"pidfd_getfd", "scm_rights"};
}

// Per-connection state that travels with every move.
struct echo_state {
  std::uint64_t since_move = 0;
  std::uint32_t moves = 0;
  std::uint32_t emulated_hops = 0;
};

// An echo server process. args: own-channel peer-channel listen(0/1) ready-file result-file
// move-every-bytes max-moves strategy stop-file [move-timeout-ms [batch [fault]]]
// ("batch": it receives with async_receive_some, up to 64 at a time; fault: its BATON_FAULT)
// Every `move-every` bytes it echoes half of what it just read, puts the other half back as
// unread bytes, and moves the connection to the peer, which carries on.
BATON_TEST_ROLE(echo_server) {
  const std::string own = args.at(0), peer = args.at(1), ready = args.at(3), result = args.at(4);
  const bool listen = args.at(2) == "1";
  const std::uint64_t move_every = std::stoull(args.at(5));
  const std::uint32_t max_moves = static_cast<std::uint32_t>(std::stoul(args.at(6)));
  baton::move_options opts;
  opts.strategy = baton::test::strategy_from_name(args.at(7));
  const std::string stop = args.at(8);
  if (args.size() > 9) opts.timeout = std::chrono::milliseconds(std::stoll(args.at(9)));
  const bool batch = args.size() > 10 && args.at(10) == "batch";
  if (args.size() > 11) baton::test::set_env("BATON_FAULT", args.at(11));
  baton::test::raise_fd_limit();

  asio::io_context ioc;
  auto rx = baton::channel::create(ioc.get_executor(), own);
  baton::channel tx;
  std::uint64_t served = 0, received = 0, rollbacks = 0, refused = 0;
  std::size_t largest_batch = 0;
  std::uint32_t max_seen_moves = 0;
  std::string modes;

  auto peer_channel = [&]() -> baton::channel& { return baton::test::open_when_ready(tx, ioc.get_executor(), peer); };

  auto serve = [&](baton::connection conn) -> asio::awaitable<void> {
    std::vector<char> buf(64 * 1024);
    for (;;) {
      auto st = load_state<echo_state>(conn);
      auto [ec, n] = co_await conn.async_read_some(asio::buffer(buf), tuple_aw);
      if (ec) {
        max_seen_moves = std::max(max_seen_moves, st.moves);
        ++served;
        conn.close();
        co_return;
      }
      const bool move_now = move_every > 0 && st.since_move + n >= move_every && st.moves < max_moves;
      const std::size_t echo_n = move_now ? n / 2 : n;
      auto [wec, wn] = co_await asio::async_write(conn, asio::buffer(buf.data(), echo_n), tuple_aw);
      if (wec) co_return;
      st.since_move += echo_n;
      if (!move_now) {
        save_state(conn, st);
        continue;
      }
      conn.push_front_unread(buf.data() + echo_n, n - echo_n);
      st.since_move = 0;
      ++st.moves;
      save_state(conn, st);
      auto [mec, back] = co_await baton::async_send(peer_channel(), std::move(conn), opts, tuple_aw);
      if (!mec) co_return;  // the peer carries on
      ++rollbacks;
      std::fprintf(stderr, "move failed, keeping the connection: %s\n", mec.message().c_str());
      conn = std::move(back);
    }
  };

  auto arrived = [&](baton::arrival& a) {
    if (a.kind != baton::ticket_kind::connection) return;
    ++received;
    // Recorded on arrival too: the report may be written before this connection's EOF.
    max_seen_moves = std::max(max_seen_moves, load_state<echo_state>(a.conn).moves);
    modes += a.conn.mode() == baton::attach_mode::native ? 'n' : 'e';
    asio::co_spawn(ioc, serve(std::move(a.conn)), asio::detached);
  };
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    for (;;) {
      std::vector<baton::arrival> got(1);
      baton::error_code ec;
      if (batch) {
        std::tie(ec, got) = co_await baton::async_receive_some(rx, 64, tuple_aw);
        largest_batch = std::max(largest_batch, got.size());
      } else {
        std::tie(ec, got[0]) = co_await baton::async_receive(rx, tuple_aw);
        if (ec) got.clear();
      }
      for (auto& a : got) arrived(a);  // a batch's arrivals before an error are ours too
      if (ec) {
        if (ec == asio::error::operation_aborted) co_return;
        ++refused;
        std::fprintf(stderr, "receive error: %s\n", ec.message().c_str());
      }
    }
  }, asio::detached);

  std::string ready_text = "ok";
  tcp::acceptor acc(ioc);
  if (listen) {
    acc = tcp::acceptor(ioc, {asio::ip::address_v4::loopback(), 0});
    ready_text = std::to_string(acc.local_endpoint().port());
    asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
      for (;;) {
        auto [ec, s] = co_await acc.async_accept(tuple_aw);
        if (ec) co_return;
        s.set_option(tcp::no_delay(true));
        asio::co_spawn(ioc, serve(baton::connection(std::move(s))), asio::detached);
      }
    }, asio::detached);
  }
  baton::test::write_file(ready, ready_text);
  auto deadline = std::chrono::steady_clock::now() + 200s;
  while (!baton::test::file_exists(stop) && std::chrono::steady_clock::now() < deadline) {
    ioc.run_for(10ms);
    if (ioc.stopped()) ioc.restart();
  }
  baton::test::write_file(result, "served=" + std::to_string(served) + " received=" + std::to_string(received) +
                                      " rollbacks=" + std::to_string(rollbacks) + " refused=" + std::to_string(refused) +
                                      " largest_batch=" + std::to_string(largest_batch) +
                                      " maxmoves=" + std::to_string(max_seen_moves) + " modes=" + modes.substr(0, 8) +
                                      " emulated=" + std::to_string(std::count(modes.begin(), modes.end(), 'e')));
  return 0;
}


// Two echo servers that hand connections back and forth; files and names for one test.
struct server_pair {
  std::string name_a = unique_name("A"), name_b = unique_name("B");
  name_guard ga{name_a}, gb{name_b};
  std::string ready_a = baton::test::temp_path("ra"), ready_b = baton::test::temp_path("rb");
  std::string res_a = baton::test::temp_path("resa"), res_b = baton::test::temp_path("resb");
  std::string stop = baton::test::temp_path("stop");
  child a, b;
  unsigned short port = 0;

  // b_receives: "batch" and a BATON_FAULT for B (see echo_server), or nothing.
  server_pair(std::uint64_t move_every, std::uint32_t max_moves, const std::string& strategy,
              std::chrono::milliseconds move_timeout = baton::move_options{}.timeout,
              std::vector<std::string> b_receives = {}) {
    const auto t = std::to_string(move_timeout.count());
    a = child::spawn("echo_server", {name_a, name_b, "1", ready_a, res_a, std::to_string(move_every),
                                     std::to_string(max_moves), strategy, stop, t});
    std::vector<std::string> b_args{name_b, name_a, "0", ready_b, res_b, std::to_string(move_every),
                                    std::to_string(max_moves), strategy, stop, t};
    b_args.insert(b_args.end(), b_receives.begin(), b_receives.end());
    b = child::spawn("echo_server", b_args);
    EXPECT_TRUE(baton::test::wait_for_file(ready_a));
    EXPECT_TRUE(baton::test::wait_for_file(ready_b));
    port = static_cast<unsigned short>(std::stoul(baton::test::read_file(ready_a)));
  }
  // Stops both servers and returns their reports.
  std::pair<std::string, std::string> finish() {
    baton::test::touch(stop);
    EXPECT_EQ(a.wait(60s), 0);
    EXPECT_EQ(b.wait(60s), 0);
    auto r = std::make_pair(baton::test::read_file(res_a), baton::test::read_file(res_b));
    for (auto* f : {&ready_a, &ready_b, &res_a, &res_b, &stop}) baton::test::remove_file(*f);
    return r;
  }
};

// Streams `total` bytes of a seeded pattern through an echo connection and checks every byte
// that comes back, in order. Returns the number of bytes verified.
std::uint64_t stream_and_verify(unsigned short port, std::uint64_t total, std::uint64_t seed) {
  asio::io_context ioc;
  auto s = baton::test::connect_loopback(ioc, port);
  constexpr std::size_t block = 64 * 1024;
  std::atomic<bool> write_failed{false};
  std::thread writer([&] {
    std::vector<std::byte> buf(block);
    for (std::uint64_t off = 0, i = 0; off < total; off += block, ++i) {
      baton::test::fill_pattern(seed + i, buf.data(), block);
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(block, total - off));
      baton::error_code ec;
      baton::test::write_all(s, asio::buffer(buf.data(), n), ec);
      if (ec) {
        write_failed = true;
        return;
      }
    }
  });
  std::vector<std::byte> expect(block), got(block);
  std::uint64_t verified = 0;
  for (std::uint64_t i = 0; verified < total; ++i) {
    baton::test::fill_pattern(seed + i, expect.data(), block);
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(block, total - verified));
    baton::error_code ec;
    const std::size_t have = baton::test::read_all(s, asio::buffer(got.data(), n), ec);
    if (ec) {
      ADD_FAILURE() << "client read failed after " << verified + have << " bytes: " << ec.message();
      break;
    }
    if (std::memcmp(expect.data(), got.data(), n) != 0) {
      std::size_t k = 0;
      while (expect[k] == got[k]) ++k;
      ADD_FAILURE() << "stream differs at byte " << verified + k;
      break;
    }
    verified += n;
  }
  baton::error_code ec;
  s.shutdown(tcp::socket::shutdown_both, ec);
  s.close(ec);
  writer.join();
  EXPECT_FALSE(write_failed);
  return verified;
}

class move_strategy : public ::testing::TestWithParam<std::string> {};

TEST_P(move_strategy, continuity_64_MiB_with_more_than_100_moves_mid_stream) {
  const std::uint64_t total = 64ull << 20;
  server_pair servers(256 * 1024, 400, GetParam());
  const auto verified = stream_and_verify(servers.port, total, 42);
  EXPECT_EQ(verified, total);
  auto [ra, rb] = servers.finish();
  std::printf("[ info ] A: %s\n[ info ] B: %s\n", ra.c_str(), rb.c_str());
  // The connection ended in A or B; its state counted every move it made.
  const auto moves = std::max(baton::test::report_field(ra, "maxmoves"), baton::test::report_field(rb, "maxmoves"));
  EXPECT_GE(moves, 100u);
  EXPECT_LT(moves, 10000u);
  EXPECT_EQ(baton::test::report_field(ra, "rollbacks") + baton::test::report_field(rb, "rollbacks"), 0u);
}

INSTANTIATE_TEST_SUITE_P(each, move_strategy, ::testing::ValuesIn(platform_strategies()));

TEST(move, unread_bytes_are_delivered_first_in_the_target) {
  // The server reads what the client pipelined, consumes half, and moves the rest as unread
  // bytes; the echo the client gets back must be the exact stream.
  server_pair servers(1, 1, "automatic");
  asio::io_context ioc;
  auto s = baton::test::connect_loopback(ioc, servers.port);
  std::string msg;
  for (int i = 0; i < 50; ++i) msg += "request-" + std::to_string(i) + ";";
  asio::write(s, asio::buffer(msg));
  std::string back(msg.size(), '\0');
  asio::read(s, asio::buffer(back));
  EXPECT_EQ(back, msg);
  s.close();
  auto [ra, rb] = servers.finish();
  EXPECT_EQ(baton::test::report_field(rb, "received"), 1u) << rb;
  EXPECT_EQ(baton::test::report_field(rb, "maxmoves"), 1u) << rb;
}

TEST(move, burst_of_1000_connections_moved_at_once_all_served) {
  baton::test::raise_fd_limit();
  // Each connection moves A->B after its first 4 bytes. All 1,000 moves are under way at once;
  // on a loaded machine (Wine, two busy cores beside it) some took longer than the default
  // timeout and rolled back (correctly: A served them), which is not what this test is about.
  server_pair servers(4, 1, "automatic", 60s);
  asio::io_context ioc;
  std::vector<tcp::socket> socks;
  for (int i = 0; i < 1000; ++i) socks.push_back(baton::test::connect_loopback(ioc, servers.port));
  for (int i = 0; i < 1000; ++i) {
    char m[8];
    std::snprintf(m, sizeof m, "%04d%03d", i, i % 1000);
    asio::write(socks[static_cast<std::size_t>(i)], asio::buffer(m, 7));
  }
  int ok = 0;
  std::string first_failure;
  for (int i = 0; i < 1000; ++i) {
    char exp[8], got[8] = {};
    std::snprintf(exp, sizeof exp, "%04d%03d", i, i % 1000);
    baton::error_code ec;
    const auto n = asio::read(socks[static_cast<std::size_t>(i)], asio::buffer(got, 7), ec);
    if (!ec && std::memcmp(exp, got, 7) == 0) {
      ++ok;
    } else if (first_failure.empty()) {
      first_failure = "connection " + std::to_string(i) + ": " + std::to_string(n) + " bytes \"" +
                      std::string(got, n) + "\" (expected \"" + exp + "\"), " + ec.message();
    }
  }
  EXPECT_EQ(ok, 1000) << "first failure: " << first_failure;
  for (auto& s : socks) s.close();
  auto [ra, rb] = servers.finish();
  EXPECT_EQ(baton::test::report_field(rb, "received"), 1000u) << rb;
}

// A batch the target takes in part: B receives with async_receive_some (up to 64 arrivals per
// completion) and refuses every third ticket (BATON_FAULT claim:fail:every3, as a refusal for any
// reason would). A refused move goes again once by the other path (automatic strategy's
// fallback); a connection refused twice rolls back to A, which serves it; the others B serves.
// Each connection must end in exactly one process with its bytes whole: 7 bytes sent, the 7
// echoed back in order (3 by A before the move, 4 unread bytes by whichever process holds it
// after), then nothing more before the end of stream (a connection held by both would echo its
// unread bytes twice).
TEST(move_batch, a_target_refusing_part_of_a_batch_leaves_each_connection_in_exactly_one_process) {
  baton::test::raise_fd_limit();
  constexpr int n = 300;
  server_pair servers(4, 1, "automatic", 60s, {"batch", "claim:fail:every3"});
  asio::io_context ioc;
  std::vector<tcp::socket> socks;
  for (int i = 0; i < n; ++i) socks.push_back(baton::test::connect_loopback(ioc, servers.port));
  auto text = [](int i) {
    char m[8];
    std::snprintf(m, sizeof m, "%07d", i * 7919 % 10000000);
    return std::string(m, 7);
  };
  for (int i = 0; i < n; ++i) asio::write(socks[static_cast<std::size_t>(i)], asio::buffer(text(i)));
  int whole = 0;
  std::string first_failure;
  for (int i = 0; i < n; ++i) {
    auto& s = socks[static_cast<std::size_t>(i)];
    std::string got(7, '\0');
    baton::error_code ec;
    const auto have = asio::read(s, asio::buffer(got), ec);
    std::size_t extra = 0;
    if (!ec) {
      s.shutdown(tcp::socket::shutdown_send, ec);
      char more[16];
      baton::error_code rec;
      while (!rec) extra += s.read_some(asio::buffer(more), rec);
      if (rec != asio::error::eof) ec = rec;
    }
    if (!ec && got == text(i) && extra == 0) {
      ++whole;
    } else if (first_failure.empty()) {
      first_failure = "connection " + std::to_string(i) + ": \"" + got.substr(0, have) + "\" (expected \"" + text(i) +
                      "\"), " + std::to_string(extra) + " bytes more, " + ec.message();
    }
  }
  EXPECT_EQ(whole, n) << "first failure: " << first_failure;
  for (auto& s : socks) s.close();
  auto [ra, rb] = servers.finish();
  std::printf("[ info ] A: %s\n[ info ] B: %s\n", ra.c_str(), rb.c_str());
  using baton::test::report_field;
  // B refused some tickets and took the others; each connection was either taken by B or rolled
  // back to A (never both), and served to its end by exactly one of them.
  EXPECT_GT(report_field(rb, "refused"), 0u) << rb;
  EXPECT_GT(report_field(rb, "received"), 0u) << rb;
  EXPECT_LE(report_field(ra, "rollbacks"), report_field(rb, "refused")) << ra << " / " << rb;
  EXPECT_EQ(report_field(rb, "received") + report_field(ra, "rollbacks"), static_cast<std::uint64_t>(n));
  EXPECT_EQ(report_field(ra, "served") + report_field(rb, "served"), static_cast<std::uint64_t>(n)) << ra << " / " << rb;
}

// async_send_batch from this process to an echo server B (receiving up to 64 arrivals at a time),
// with B's BATON_FAULT (empty, or claim:fail:every3: a third of the tickets refused). Each client
// sent 9 bytes that this process read and gives back as the connection's unread bytes; whoever
// holds the connection afterwards (B, or this process for one the batch gave back) echoes them,
// then echoes "bye", then sees the end of stream. Each connection must end in exactly one
// process, its bytes echoed once (a connection held by both would echo its unread bytes twice).
// With transfer_strategy::scm_rights (Linux) the descriptors are pushed, and the pushes of the
// batch must share datagrams.
void batch_case(const std::string& fault, bool expect_refusals,
                baton::transfer_strategy how = baton::transfer_strategy::automatic,
                std::chrono::milliseconds timeout = 60s) {
  baton::test::raise_fd_limit();
  constexpr int n = 200;
  const std::string name_b = unique_name("batchB");
  name_guard gb(name_b);
  const auto ready = baton::test::temp_path("bb-ready"), result = baton::test::temp_path("bb-res"),
             stop = baton::test::temp_path("bb-stop");
  std::vector<std::string> b_args{name_b, unique_name("batchA"), "0", ready, result, "0", "0", "automatic", stop,
                                  "60000", "batch"};
  if (!fault.empty()) b_args.push_back(fault);
  auto b = child::spawn("echo_server", b_args);
  ASSERT_TRUE(baton::test::wait_for_file(ready));
  asio::io_context ioc;
  tcp::acceptor acc(ioc, {asio::ip::address_v4::loopback(), 0});
  auto text = [](int i) {
    char m[10];
    std::snprintf(m, sizeof m, "hello%04d", i);
    return std::string(m, 9);
  };
  std::vector<tcp::socket> clients;
  std::vector<baton::connection> conns;
  for (int i = 0; i < n; ++i) {
    clients.push_back(baton::test::connect_loopback(ioc, acc.local_endpoint().port()));
    asio::write(clients.back(), asio::buffer(text(i)));
    auto s = acc.accept();
    std::string got(9, '\0');
    asio::read(s, asio::buffer(got));
    std::vector<std::byte> unread(9);
    std::memcpy(unread.data(), got.data(), 9);
    conns.emplace_back(std::move(s), std::move(unread), std::vector<std::byte>{std::byte(i & 0xff)});
  }
  auto tx = baton::channel::open(ioc.get_executor(), name_b);
  baton::move_options o;
  o.timeout = timeout;
  o.strategy = how;
  const auto pushes_before = baton::get_move_stats();
  std::optional<std::pair<baton::error_code, baton::batch_result>> done;
  baton::async_send_batch(tx, std::move(conns), o, [&](baton::error_code ec, baton::batch_result r) {
    done.emplace(ec, std::move(r));
  });
  for (int i = 0; i < 12000 && !done; ++i) {
    ioc.run_for(10ms);
    if (ioc.stopped()) ioc.restart();
  }
  ASSERT_TRUE(done) << "the batch did not complete";
  auto& [ec, r] = *done;
  ASSERT_EQ(r.errors.size(), static_cast<std::size_t>(n));
  ASSERT_EQ(r.connections.size(), static_cast<std::size_t>(n));
  std::size_t back = 0;
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(static_cast<bool>(r.errors[i]), r.connections[i].is_open()) << "connection " << i;
    back += r.connections[i].is_open();
  }
  EXPECT_EQ(r.moved + back, static_cast<std::size_t>(n));
  EXPECT_EQ(static_cast<bool>(ec), back > 0) << ec.message();
  const auto st = tx.stats();
  std::printf("[ info ] moved %zu, given back %zu (first error: %s); %llu tickets in %llu batch records\n", r.moved,
              back, ec.message().c_str(), static_cast<unsigned long long>(st.tickets_sent),
              static_cast<unsigned long long>(st.batches_sent));
  EXPECT_GE(st.batches_sent, 1u) << "no two tickets of the batch shared a record";
  if (how == baton::transfer_strategy::scm_rights) {
    const auto now = baton::get_move_stats();
    const auto pushed = now.pushed - pushes_before.pushed, datagrams = now.push_datagrams - pushes_before.push_datagrams;
    std::printf("[ info ] %llu descriptors pushed in %llu datagrams\n", static_cast<unsigned long long>(pushed),
                static_cast<unsigned long long>(datagrams));
    EXPECT_EQ(pushed, static_cast<std::uint64_t>(n));
    // One batch publishes in one turn: 200 descriptors fit one datagram (253 at most). A full
    // queue at the target may split them; one datagram per descriptor would be 200.
    EXPECT_GE(datagrams, 1u);
    EXPECT_LE(datagrams, 8u) << "the pushes did not share datagrams";
  }
  if (expect_refusals) {
    EXPECT_GT(back, 0u);
    EXPECT_GT(r.moved, 0u);
  } else {
    EXPECT_EQ(r.moved, static_cast<std::size_t>(n)) << ec.message();
  }
  // This process serves what came back, as B serves what it took.
  int served_here = 0;
  for (auto& c : r.connections) {
    if (!c.is_open()) continue;
    ++served_here;
    asio::co_spawn(ioc, [](baton::connection c) -> asio::awaitable<void> {
      char buf[64];
      for (;;) {
        auto [e, k] = co_await c.async_read_some(asio::buffer(buf), tuple_aw);
        if (e) co_return;
        auto [we, wk] = co_await asio::async_write(c, asio::buffer(buf, k), tuple_aw);
        if (we) co_return;
      }
    }(std::move(c)), asio::detached);
  }
  int whole = 0;
  std::string first_failure;
  for (int i = 0; i < n; ++i) {
    asio::co_spawn(ioc, [&, i]() -> asio::awaitable<void> {
      auto& s = clients[static_cast<std::size_t>(i)];
      std::string got(12, '\0');
      auto [e1, k1] = co_await asio::async_read(s, asio::buffer(got.data(), 9), tuple_aw);
      auto [e2, k2] = co_await asio::async_write(s, asio::buffer(std::string("bye")), tuple_aw);
      auto [e3, k3] = co_await asio::async_read(s, asio::buffer(got.data() + 9, 3), tuple_aw);
      baton::error_code e4;
      s.shutdown(tcp::socket::shutdown_send, e4);
      char more[16];
      std::size_t extra = 0;
      for (;;) {
        auto [e5, k5] = co_await s.async_read_some(asio::buffer(more), tuple_aw);
        extra += k5;
        if (e5) {
          e4 = e5 == asio::error::eof ? baton::error_code() : e5;
          break;
        }
      }
      const auto e = e1 ? e1 : e2 ? e2 : e3 ? e3 : e4;
      if (!e && got == text(i) + "bye" && extra == 0) ++whole;
      else if (first_failure.empty())
        first_failure = "connection " + std::to_string(i) + ": \"" + got + "\", " + std::to_string(extra) +
                        " bytes more, " + e.message();
    }, asio::detached);
  }
  for (int i = 0; i < 6000 && whole < n && first_failure.empty(); ++i) {
    ioc.run_for(10ms);
    if (ioc.stopped()) ioc.restart();
  }
  EXPECT_EQ(whole, n) << "first failure: " << first_failure;
  baton::test::touch(stop);
  EXPECT_EQ(b.wait(60s), 0);
  const auto rb = baton::test::read_file(result);
  std::printf("[ info ] B: %s\n", rb.c_str());
  EXPECT_EQ(baton::test::report_field(rb, "received"), r.moved) << rb;
  EXPECT_EQ(baton::test::report_field(rb, "served"), r.moved) << rb;
  EXPECT_EQ(static_cast<std::size_t>(served_here), back);
  for (const auto& f : {ready, result, stop}) baton::test::remove_file(f);
}

TEST(move_batch, async_send_batch_moves_each_connection_whole_sharing_records) { batch_case("", false); }

TEST(move_batch, async_send_batch_gives_back_what_the_target_refuses_intact) {
  batch_case("claim:fail:every3", true);
}

// Every third ack lost (the target closes its copy and never answers): those moves time out
// and come back whole, the others move. (ack:fail used to fail every ack, ignoring every<n>.)
TEST(move_batch, async_send_batch_gives_back_whole_what_times_out_waiting_for_an_ack) {
  batch_case("ack:fail:every3", true, baton::transfer_strategy::automatic, 3s);
}

TEST(move_batch, scm_rights_pushes_of_a_batch_share_datagrams) {
  if (baton::test::host_is_windows())
    GTEST_SKIP() << "SCM_RIGHTS is Linux's; Windows carries a batch's WSAPROTOCOL_INFOWs in its batch records";
  batch_case("", false, baton::transfer_strategy::scm_rights);
}

TEST(move_batch, scm_rights_pushes_of_a_batch_the_target_refuses_in_part_roll_back_whole) {
  if (baton::test::host_is_windows())
    GTEST_SKIP() << "SCM_RIGHTS is Linux's; Windows carries a batch's WSAPROTOCOL_INFOWs in its batch records";
  batch_case("claim:fail:every3", true, baton::transfer_strategy::scm_rights);
}

// A target that takes tickets off its channel but answers them as told: "nack" refuses each,
// "silent" never answers (the parent may kill it).
BATON_TEST_ROLE(stubborn_target) {
  asio::io_context ioc;
  auto rx = baton::channel::create(ioc.get_executor(), args.at(0));
  const bool nack = args.at(2) == "nack";
  std::function<void()> next;
  next = [&] {
    rx.async_receive([&](baton::error_code ec, baton::ticket t) {
      if (!ec && nack) rx.acknowledge(t, false);
      baton::test::touch(args.at(1) + ".got");
      next();
    });
  };
  next();
  baton::test::touch(args.at(1));
  auto work = asio::make_work_guard(ioc);
  ioc.run_for(60s);
  return 0;
}

// In-process server side of one connection whose move fails; the client must notice nothing.
struct rollback_fixture {
  asio::io_context ioc;
  tcp::acceptor acc{ioc, {asio::ip::address_v4::loopback(), 0}};
  tcp::socket client{ioc};
  baton::connection server;

  rollback_fixture() {
    client.connect(acc.local_endpoint());
    baton::test::set_recv_timeout(client, 30s);
    server = baton::connection(acc.accept(), {}, {std::byte{7}});
  }
  // One echo round trip through `server`, driven by the io_context.
  void round_trip(const std::string& msg) {
    asio::write(client, asio::buffer(msg));
    std::string got(msg.size(), '\0');
    bool done = baton::test::run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
      std::string buf(msg.size(), '\0');
      co_await asio::async_read(server, asio::buffer(buf), asio::use_awaitable);
      co_await asio::async_write(server, asio::buffer(buf), asio::use_awaitable);
    }(), 10s);
    EXPECT_TRUE(done);
    asio::read(client, asio::buffer(got));
    EXPECT_EQ(got, msg);
  }
  // `during` is polled between turns of the io_context until it returns true; it must not block
  // (the move advances only while the io_context runs).
  baton::error_code move_to(baton::channel& tx, std::chrono::milliseconds timeout,
                            const std::function<bool()>& during = {}) {
    baton::error_code result = asio::error::would_block;
    baton::move_options o;
    o.timeout = timeout;
    baton::async_send(tx, std::move(server), o, [&](baton::error_code ec, baton::connection back) {
      result = ec;
      server = std::move(back);
    });
    auto end = std::chrono::steady_clock::now() + 30s;
    bool done_during = !during;
    while (result == asio::error::would_block && std::chrono::steady_clock::now() < end) {
      ioc.run_for(10ms);
      if (ioc.stopped()) ioc.restart();
      if (!done_during) done_during = during();
    }
    return result;
  }
};

void rollback_case(const std::string& mode, std::chrono::milliseconds timeout, baton::error_code expect, bool kill) {
  // The rollback counter is process-wide: an earlier test may already have moved it.
  const auto rollbacks_before = baton::get_move_stats().rollbacks;
  rollback_fixture f;
  name_guard g(unique_name("rb"));
  const auto ready = baton::test::temp_path("rbready");
  auto target = child::spawn("stubborn_target", {g.name, ready, mode});
  ASSERT_TRUE(baton::test::wait_for_file(ready));
  auto tx = baton::channel::open(f.ioc.get_executor(), g.name);
  f.round_trip("before the move;");
  // Bytes the client sent before the move must survive the rollback too.
  asio::write(f.client, asio::buffer(std::string("in flight;")));
  auto ec = f.move_to(tx, timeout, [&] {
    if (!kill) return true;
    if (!baton::test::file_exists(ready + ".got")) return false;  // the ticket is not in the target yet
    target.kill();
    return true;
  });
  EXPECT_EQ(ec, expect) << ec.message();
  ASSERT_TRUE(f.server.is_open());
  EXPECT_EQ(f.server.state(), std::vector<std::byte>{std::byte{7}});
  // The source serves on: first the bytes that were in flight, then a new round trip.
  std::string buf(10, '\0');
  bool done = baton::test::run_with_deadline(f.ioc, [&]() -> asio::awaitable<void> {
    co_await asio::async_read(f.server, asio::buffer(buf), asio::use_awaitable);
    co_await asio::async_write(f.server, asio::buffer(buf), asio::use_awaitable);
  }(), 10s);
  EXPECT_TRUE(done);
  std::string got(10, '\0');
  asio::read(f.client, asio::buffer(got));
  EXPECT_EQ(got, "in flight;");
  f.round_trip("after the rollback;");
  target.kill();
  baton::test::remove_file(ready);
  baton::test::remove_file(ready + ".got");
  EXPECT_GE(baton::get_move_stats().rollbacks - rollbacks_before, 1u);
}

TEST(move_rollback, target_killed_after_the_ticket_is_written) {
  rollback_case("silent", 20s, errc::target_died, true);
}
TEST(move_rollback, target_nacks) { rollback_case("nack", 20s, errc::move_rejected, false); }
TEST(move_rollback, timeout) { rollback_case("silent", 300ms, errc::move_timeout, false); }

// A process that receives a listener and serves every connection on it ("y" for "x").
BATON_TEST_ROLE(listener_target) {
  asio::io_context ioc;
  auto rx = baton::channel::create(ioc.get_executor(), args.at(0));
  const std::string stop = args.at(2), result = args.at(3);
  int served = 0, accepted = 0;
  std::string mode = "none", accept_error = "none";
  baton::listener lst;
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    auto a = co_await baton::async_receive(rx, asio::use_awaitable);
    lst = std::move(a.lst);
    mode = lst.mode() == baton::attach_mode::native ? "native" : "emulated";
    for (;;) {
      auto [ec, s] = co_await lst.async_accept(tuple_aw);
      if (ec) {
        accept_error = std::to_string(ec.value()) + ":" + ec.message();
        co_return;
      }
      ++accepted;
      asio::co_spawn(ioc, [&, s = std::move(s)]() mutable -> asio::awaitable<void> {
        char c;
        co_await asio::async_read(s, asio::buffer(&c, 1), asio::use_awaitable);
        co_await asio::async_write(s, asio::buffer("y", 1), asio::use_awaitable);
        ++served;
      }, asio::detached);
    }
  }, asio::detached);
  baton::test::touch(args.at(1));
  auto end = std::chrono::steady_clock::now() + 120s;
  while (!baton::test::file_exists(stop) && std::chrono::steady_clock::now() < end) {
    ioc.run_for(10ms);
    if (ioc.stopped()) ioc.restart();
  }
  baton::test::write_file(result, "served=" + std::to_string(served) + " accepted=" + std::to_string(accepted) +
                                      " mode=" + mode + " accept_error=" + accept_error);
  return 0;
}

TEST(move_listener, listener_moves_under_a_stream_of_connections_and_none_is_refused) {
  asio::io_context ioc;
  name_guard g(unique_name("lst"));
  const auto ready = baton::test::temp_path("lready"), stop = baton::test::temp_path("lstop"),
             result = baton::test::temp_path("lres");
  auto target = child::spawn("listener_target", {g.name, ready, stop, result});
  ASSERT_TRUE(baton::test::wait_for_file(ready));
  baton::listener lst(tcp::acceptor(ioc, {asio::ip::address_v4::loopback(), 0}));
  baton::error_code lec;
  const auto port = lst.local_endpoint(lec).port();
  // A client connects over and over from another thread; every attempt must be answered.
  constexpr int attempts = 400;
  std::atomic<int> answered{0}, failed{0};
  std::string first_failure;
  std::thread client([&] {
    asio::io_context cio;
    for (int i = 0; i < attempts; ++i) {
      try {
        auto s = baton::test::connect_loopback(cio, port);
        asio::write(s, asio::buffer("x", 1));
        char c = 0;
        asio::read(s, asio::buffer(&c, 1));
        (c == 'y' ? answered : failed)++;
      } catch (const std::exception& e) {
        if (failed++ == 0) first_failure = "attempt " + std::to_string(i) + ": " + e.what();
      }
    }
  });
  int served_here = 0;
  auto tx = baton::channel::open(ioc.get_executor(), g.name);
  bool moved = false;
  std::function<void()> accept_next = [&] {
    lst.async_accept([&](baton::error_code ec, tcp::socket s) {
      if (ec) return;
      auto sp = std::make_shared<tcp::socket>(std::move(s));
      auto c = std::make_shared<char>();
      asio::async_read(*sp, asio::buffer(c.get(), 1), [sp, c, &served_here](baton::error_code ec, std::size_t) {
        if (!ec) asio::async_write(*sp, asio::buffer("y", 1), [sp, &served_here](baton::error_code, std::size_t) { ++served_here; });
      });
      if (!moved) accept_next();
    });
  };
  accept_next();
  // Serve for a while, then move the listener in mid-stream.
  auto t0 = std::chrono::steady_clock::now();
  while (answered + failed < attempts / 4 && std::chrono::steady_clock::now() - t0 < 60s) ioc.run_for(5ms);
  baton::error_code move_ec = asio::error::would_block;
  baton::async_send(tx, std::move(lst), baton::move_options{}, [&](baton::error_code ec, baton::listener back) {
    move_ec = ec;
    moved = !ec;
    if (ec) lst = std::move(back);
  });
  t0 = std::chrono::steady_clock::now();
  while ((move_ec == asio::error::would_block || answered + failed < attempts) &&
         std::chrono::steady_clock::now() - t0 < 120s) {
    ioc.run_for(5ms);
    if (ioc.stopped()) ioc.restart();
  }
  client.join();
  ioc.run_for(100ms);
  EXPECT_FALSE(move_ec) << move_ec.message();
  EXPECT_EQ(failed.load(), 0) << "first failure: " << first_failure;
  EXPECT_EQ(answered.load(), attempts);
  baton::test::touch(stop);
  EXPECT_EQ(target.wait(30s), 0);
  const auto res = baton::test::read_file(result);
  std::printf("[ info ] served in source: %d, target: %s\n", served_here, res.c_str());
  EXPECT_GT(served_here, 0);
  EXPECT_GT(baton::test::report_field(res, "served"), 0u);
  EXPECT_EQ(static_cast<std::uint64_t>(served_here) + baton::test::report_field(res, "served"), static_cast<std::uint64_t>(attempts));
  for (auto* f : {&ready, &stop, &result}) baton::test::remove_file(*f);
}

TEST(move, sending_on_a_receiving_channel_or_an_empty_connection_fails_cleanly) {
  asio::io_context ioc;
  name_guard g(unique_name("misuse"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  baton::error_code result;
  baton::async_send(rx, baton::connection(), baton::move_options{}, [&](baton::error_code ec, baton::connection) { result = ec; });
  EXPECT_EQ(result, asio::error::bad_descriptor);
  rollback_fixture f;
  baton::async_send(rx, std::move(f.server), baton::move_options{}, [&](baton::error_code ec, baton::connection back) {
    result = ec;
    f.server = std::move(back);
  });
  f.ioc.run_for(100ms);
  EXPECT_EQ(result, asio::error::operation_not_supported);
  EXPECT_TRUE(f.server.is_open());
}

}  // namespace

namespace {

// A child started with spawn_with_handles: receives the inherited connection and echoes on it.
BATON_TEST_ROLE(inherit_target) {
  asio::io_context ioc;
  auto rx = baton::channel::create(ioc.get_executor(), args.at(0));
  baton::test::touch(args.at(1));
  std::string report = "received=0";
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    auto a = co_await baton::async_receive(rx, asio::use_awaitable);
    report = std::string("received=1 mode=") + (a.conn.mode() == baton::attach_mode::native ? "native" : "emulated");
    char buf[256];
    for (;;) {
      auto [ec, n] = co_await a.conn.async_read_some(asio::buffer(buf), tuple_aw);
      if (ec) break;
      co_await asio::async_write(a.conn, asio::buffer(buf, n), asio::use_awaitable);
    }
    ioc.stop();
  }, asio::detached);
  ioc.run_for(60s);
  baton::test::write_file(args.at(2), report);
  return 0;
}

TEST(move_inherit, child_spawned_with_the_socket_takes_it_over) {
  asio::io_context ioc;
  name_guard g(unique_name("inh"));
  const auto ready = baton::test::temp_path("iready"), result = baton::test::temp_path("ires");
  tcp::acceptor acc(ioc, {asio::ip::address_v4::loopback(), 0});
  auto client = baton::test::connect_loopback(ioc, acc.local_endpoint().port());
  baton::connection server(acc.accept());
  baton::error_code ec;
  auto p = baton::spawn_with_handles(baton::test::self_exe(), {"--role=inherit_target", g.name, ready, result},
                                     {server.native_handle()}, ec);
  ASSERT_FALSE(ec) << ec.message();
  ASSERT_TRUE(baton::test::wait_for_file(ready));
  auto tx = baton::channel::open(ioc.get_executor(), g.name);
  EXPECT_EQ(tx.owner_pid(), p.pid);
  baton::move_options o;
  o.strategy = baton::transfer_strategy::inherit;
  baton::error_code result_ec = asio::error::would_block;
  baton::async_send(tx, std::move(server), o, [&](baton::error_code e, baton::connection) { result_ec = e; });
  for (int i = 0; i < 1000 && result_ec == asio::error::would_block; ++i) ioc.run_for(10ms);
  ASSERT_FALSE(result_ec) << result_ec.message();
  for (int i = 0; i < 20; ++i) {
    const std::string msg = "inherited " + std::to_string(i);
    asio::write(client, asio::buffer(msg));
    std::string got(msg.size(), '\0');
    asio::read(client, asio::buffer(got));
    EXPECT_EQ(got, msg);
  }
  client.close();
  ASSERT_TRUE(baton::test::wait_for_file(result, 60s));
  const auto r = baton::test::read_file(result);
  EXPECT_NE(r.find("received=1"), std::string::npos) << r;
  baton::test::remove_file(ready);
  baton::test::remove_file(result);
}

}  // namespace

#ifndef _WIN32
#include <sys/prctl.h>
#endif

namespace {

TEST(move_fallback, pidfd_getfd_refused_by_the_kernel_falls_back_to_scm_rights) {
#ifdef _WIN32
  GTEST_SKIP() << "pidfd_getfd is Linux's";
#else
  // The target runs without CAP_SYS_PTRACE and the source is not dumpable: the kernel refuses
  // pidfd_getfd with EPERM, the target rejects the move, and the source retries with SCM_RIGHTS.
  if (::geteuid() != 0 || ::system("command -v setpriv >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "needs root and setpriv to run the target without CAP_SYS_PTRACE";
  const std::string name = unique_name("eperm");
  name_guard g(name);
  const auto ready = baton::test::temp_path("er"), result = baton::test::temp_path("eres"),
             stop = baton::test::temp_path("estop");
  auto target = child::spawn_wrapped({"setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", "--"},
                                     "echo_server", {name, "-", "0", ready, result, "0", "0", "automatic", stop});
  ASSERT_TRUE(baton::test::wait_for_file(ready));
  ::prctl(PR_SET_DUMPABLE, 0);
  asio::io_context ioc;
  tcp::acceptor acc(ioc, {asio::ip::address_v4::loopback(), 0});
  auto client = baton::test::connect_loopback(ioc, acc.local_endpoint().port());
  baton::connection server(acc.accept());
  auto tx = baton::channel::open(ioc.get_executor(), name);
  const auto before = baton::get_move_stats().strategy_fallbacks;
  baton::error_code ec = asio::error::would_block;
  baton::async_send(tx, std::move(server), baton::move_options{}, [&](baton::error_code e, baton::connection) { ec = e; });
  for (int i = 0; i < 1000 && ec == asio::error::would_block; ++i) ioc.run_for(10ms);
  ::prctl(PR_SET_DUMPABLE, 1);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(baton::get_move_stats().strategy_fallbacks, before + 1);
  const std::string msg = "moved by push after the pull was refused";
  asio::write(client, asio::buffer(msg));
  std::string got(msg.size(), '\0');
  asio::read(client, asio::buffer(got));
  EXPECT_EQ(got, msg);
  client.close();
  baton::test::touch(stop);
  EXPECT_EQ(target.wait(30s), 0);
  for (auto* f : {&ready, &result, &stop}) baton::test::remove_file(*f);
#endif
}

}  // namespace

namespace {

TEST(move_stall, pushes_to_a_stopped_target_never_block_the_source_and_every_connection_comes_back) {
  if (!baton::test::host_has_scm_rights()) GTEST_SKIP() << "SCM_RIGHTS is Linux's";
  const std::string name = unique_name("stall");
  name_guard g(name);
  const auto ready = baton::test::temp_path("sr"), result = baton::test::temp_path("sres"),
             stop = baton::test::temp_path("sstop");
  auto target = child::spawn("echo_server", {name, "-", "0", ready, result, "0", "0", "automatic", stop});
  ASSERT_TRUE(baton::test::wait_for_file(ready));
  asio::io_context ioc;
  tcp::acceptor acc(ioc, {asio::ip::address_v4::loopback(), 0});
  constexpr int n = 40;  // well above the kernel's queue of datagrams per socket
  std::vector<tcp::socket> clients;
  std::vector<baton::connection> conns;
  for (int i = 0; i < n; ++i) {
    clients.push_back(baton::test::connect_loopback(ioc, acc.local_endpoint().port()));
    conns.emplace_back(acc.accept(), std::vector<std::byte>{}, std::vector<std::byte>{std::byte(i)});
  }
  auto tx = baton::channel::open(ioc.get_executor(), name);
  baton::test::stop_process(target.pid());
  baton::move_options o;
  o.strategy = baton::transfer_strategy::scm_rights;
  o.timeout = 300ms;
  int done = 0, ok = 0;
  std::vector<baton::connection> back(n);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i)
    baton::async_send(tx, std::move(conns[static_cast<std::size_t>(i)]), o, [&, i](baton::error_code ec, baton::connection c) {
      ++done;
      if (!ec) ++ok;
      back[static_cast<std::size_t>(i)] = std::move(c);
    });
  for (int i = 0; i < 3000 && done < n; ++i) ioc.run_for(10ms);
  const auto took = std::chrono::steady_clock::now() - t0;
  baton::test::resume_process(target.pid());
  EXPECT_EQ(done, n);
  EXPECT_EQ(ok, 0) << "a stopped target cannot accept";
  EXPECT_LT(took, 20s);
  // Every connection is back in the source, open, with its state, and still carries bytes.
  for (int i = 0; i < n; ++i) {
    auto& c = back[static_cast<std::size_t>(i)];
    ASSERT_TRUE(c.is_open()) << i;
    EXPECT_EQ(c.state(), std::vector<std::byte>{std::byte(i)});
  }
  asio::write(clients[7], asio::buffer("ping", 4));
  char buf[4];
  ASSERT_TRUE(baton::test::run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    co_await asio::async_read(back[7], asio::buffer(buf), asio::use_awaitable);
  }(), 10s));
  EXPECT_EQ(std::string(buf, 4), "ping");
  baton::test::touch(stop);
  EXPECT_EQ(target.wait(30s), 0);
  for (auto* f : {&ready, &result, &stop}) baton::test::remove_file(*f);
}

}  // namespace
