// Moving a bound UDP socket between real processes: the datagrams queued in the kernel, and the
// one a cancelled receive had already taken (carried in the ticket), are read by the target in
// order; a refused or timed-out move gives the socket back and the source reads them all. The
// same suite runs natively on Linux and, cross-built, on Windows under Wine.
#include <baton/udp_socket.hpp>

#include <baton/move.hpp>

#include "test_prelude.hpp"
#include "test_support.hpp"
#include "net_helpers.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/udp.hpp>

#include <gtest/gtest.h>

#include <string>

namespace {

using namespace baton::test::prelude;
using asio::ip::udp;

constexpr int datagrams = 200;

std::string payload(int seq) { return "seq " + std::to_string(seq); }
int seq_of(const char* p, std::size_t n) {
  const std::string s(p, n);
  return s.rfind("seq ", 0) == 0 ? std::atoi(s.c_str() + 4) : -1;
}

// Runs `ioc` until `done()` or the deadline.
template <class Done>
bool run_until(asio::io_context& ioc, Done done, std::chrono::milliseconds deadline = 20s) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (!done() && std::chrono::steady_clock::now() < until) {
    ioc.run_for(5ms);
    if (ioc.stopped()) ioc.restart();
  }
  return done();
}

// Reads datagrams from `u` until `count` have come or none came for 5 s; counts those whose
// sequence numbers follow `first` in order. Returns "got=N inorder=M".
std::string read_in_order(asio::io_context& ioc, baton::udp_socket& u, int first, int count) {
  int got = 0, in_order = 0;
  bool pending = false;
  auto last = std::chrono::steady_clock::now();
  std::array<char, 256> buf;
  udp::endpoint from;
  while (got < count && std::chrono::steady_clock::now() - last < 5s) {
    if (!pending) {
      pending = true;
      u.async_receive_from(asio::buffer(buf), from, [&](baton::error_code ec, std::size_t n) {
        pending = false;
        if (ec) return;
        if (seq_of(buf.data(), n) == first + got) ++in_order;
        ++got;
        last = std::chrono::steady_clock::now();
      });
    }
    ioc.run_for(5ms);
    if (ioc.stopped()) ioc.restart();
  }
  u.cancel();
  run_until(ioc, [&] { return !pending; }, 5s);
  return "got=" + std::to_string(got) + " inorder=" + std::to_string(in_order);
}

// The target: receives one UDP socket on channel args[0] and reads args[3] datagrams from it,
// which must start at sequence number args[4]. Writes "queued=Q mode=M got=N inorder=K" to
// args[2]. With args[5] == "nack" it refuses every ticket instead; "silent" takes none.
BATON_TEST_ROLE(udp_target) {
  asio::io_context ioc;
  auto rx = baton::channel::create(ioc.get_executor(), args.at(0));
  const std::string ready = args.at(1), result = args.at(2), how = args.at(5);
  const int count = std::stoi(args.at(3)), first = std::stoi(args.at(4));
  if (how != "serve") {
    std::function<void()> next = [&] {
      rx.async_receive([&](baton::error_code ec, baton::ticket t) {
        if (!ec && how == "nack") rx.acknowledge(t, false);
        next();
      });
    };
    if (how == "nack") next();
    baton::test::touch(ready);
    auto work = asio::make_work_guard(ioc);
    ioc.run_for(60s);
    return 0;
  }
  baton::error_code rec = asio::error::would_block;
  baton::arrival a;
  baton::async_receive(rx, [&](baton::error_code ec, baton::arrival got) {
    rec = ec;
    a = std::move(got);
  });
  baton::test::touch(ready);
  if (!run_until(ioc, [&] { return rec != asio::error::would_block; }, 30s) || rec ||
      a.kind != baton::ticket_kind::udp_socket) {
    baton::test::write_file(result, "receive failed: " + rec.message());
    return 1;
  }
  const auto queued = a.udp.queued_datagrams();
  const char* mode = a.udp.mode() == baton::attach_mode::native ? "native" : "emulated";
  const auto read = read_in_order(ioc, a.udp, first, count);
  baton::test::write_file(result, "queued=" + std::to_string(queued) + " mode=" + mode + " name=" + a.udp.name() +
                                      " " + read);
  return 0;
}

// A bound UDP socket with `datagrams` datagrams queued in the kernel, the first of them already
// read by the application, and a second receive started (it takes "seq 1" from the kernel at
// once, so that datagram travels in the ticket).
struct udp_source {
  asio::io_context ioc;
  baton::udp_socket u;
  udp::socket client{ioc, udp::endpoint(asio::ip::address_v4::loopback(), 0)};
  std::array<char, 256> buf{};
  udp::endpoint from;
  baton::error_code second = asio::error::would_block;  // the second receive's outcome
  int second_seq = -1;

  udp_source() {
    udp::socket s(ioc, udp::endpoint(asio::ip::address_v4::loopback(), 0));
    s.set_option(udp::socket::receive_buffer_size(1 << 20));
    u = baton::udp_socket(std::move(s));
    u.set_name("dns");
    baton::error_code ec;
    const auto to = u.local_endpoint(ec);
    for (int i = 0; i < datagrams; ++i) client.send_to(asio::buffer(payload(i)), to);
    int first = -1;
    u.async_receive_from(asio::buffer(buf), from, [&](baton::error_code ec, std::size_t n) {
      if (!ec) first = seq_of(buf.data(), n);
    });
    EXPECT_TRUE(run_until(ioc, [&] { return first >= 0; }));
    EXPECT_EQ(first, 0);
    u.async_receive_from(asio::buffer(buf), from, [&](baton::error_code ec, std::size_t n) {
      second = ec;
      if (!ec) second_seq = seq_of(buf.data(), n);
    });
  }

  baton::error_code move_to(baton::channel& tx, std::chrono::milliseconds timeout) {
    baton::error_code result = asio::error::would_block;
    baton::move_options o;
    o.timeout = timeout;
    baton::async_send(tx, std::move(u), o, [&](baton::error_code ec, baton::udp_socket back) {
      result = ec;
      u = std::move(back);
    });
    EXPECT_TRUE(run_until(ioc, [&] { return result != asio::error::would_block; }, 30s));
    return result;
  }
};

TEST(udp_move, queued_datagrams_are_read_by_the_target_in_order) {
  name_guard g(unique_name("udp"));
  const auto ready = baton::test::temp_path("udpready"), result = baton::test::temp_path("udpres");
  auto target = child::spawn("udp_target", {g.name, ready, result, std::to_string(datagrams - 1), "1", "serve"});
  ASSERT_TRUE(baton::test::wait_for_file(ready));
  udp_source src;
  auto tx = baton::channel::open(src.ioc.get_executor(), g.name);
  const auto ec = src.move_to(tx, 10s);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_FALSE(src.u.is_open());
  // The receive that was pending here ends: the target serves the socket now.
  EXPECT_TRUE(run_until(src.ioc, [&] { return src.second != asio::error::would_block; }));
  EXPECT_EQ(src.second, errc::socket_moved) << src.second.message();
  EXPECT_EQ(target.wait(60s), 0);
  const auto r = baton::test::read_file(result);
  // "seq 1" was taken from the kernel by the cancelled receive and travelled in the ticket; the
  // other 198 were still in the kernel's queue.
  EXPECT_NE(r.find("queued=1 "), std::string::npos) << r;
  EXPECT_NE(r.find("name=dns "), std::string::npos) << r;
  // Windows: emulated where the source could not unbind the socket from its port (Wine, before
  // 8.1), native otherwise; Linux: always native.
  if (!baton::test::host_is_windows()) EXPECT_NE(r.find("mode=native "), std::string::npos) << r;
  std::printf("[ UDP      ] target: %s\n", r.c_str());
  EXPECT_NE(r.find("got=" + std::to_string(datagrams - 1) + " inorder=" + std::to_string(datagrams - 1)),
            std::string::npos)
      << r;
  baton::test::remove_file(ready);
  baton::test::remove_file(result);
}

// A move that fails leaves the socket here with every datagram: the receive that waited out the
// move gets "seq 1" (which had travelled in the refused ticket), then the kernel's queue follows.
void rollback_case(const std::string& how, std::chrono::milliseconds timeout, baton::error_code expect) {
  name_guard g(unique_name("udprb"));
  const auto ready = baton::test::temp_path("udprbready"), result = baton::test::temp_path("udprbres");
  auto target = child::spawn("udp_target", {g.name, ready, result, "0", "0", how});
  ASSERT_TRUE(baton::test::wait_for_file(ready));
  udp_source src;
  auto tx = baton::channel::open(src.ioc.get_executor(), g.name);
  const auto ec = src.move_to(tx, timeout);
  EXPECT_EQ(ec, expect) << ec.message();
  ASSERT_TRUE(src.u.is_open());
  EXPECT_EQ(src.u.name(), "dns");
  EXPECT_TRUE(run_until(src.ioc, [&] { return src.second != asio::error::would_block; }));
  EXPECT_FALSE(src.second) << src.second.message();
  EXPECT_EQ(src.second_seq, 1);
  EXPECT_EQ(read_in_order(src.ioc, src.u, 2, datagrams - 2),
            "got=" + std::to_string(datagrams - 2) + " inorder=" + std::to_string(datagrams - 2));
  // And it still answers.
  baton::error_code lec;
  src.client.send_to(asio::buffer(payload(datagrams)), src.u.local_endpoint(lec));
  EXPECT_EQ(read_in_order(src.ioc, src.u, datagrams, 1), "got=1 inorder=1");
  target.kill();
  baton::test::remove_file(ready);
}

TEST(udp_move, refused_move_rolls_back_and_the_source_reads_every_datagram) {
  rollback_case("nack", 10s, errc::move_rejected);
}

TEST(udp_move, timed_out_move_rolls_back_and_the_source_reads_every_datagram) {
  rollback_case("silent", 300ms, errc::move_timeout);
}

}  // namespace
