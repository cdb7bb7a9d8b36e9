// The UDP echo responder (samples/baton_udp_echo.cpp) restarted three times with `batonctl
// restart` while a client sends sequence-numbered datagrams: every datagram answered exactly once,
// and the generations in the replies never go backwards. Real programs, real sockets, loopback.
#include <baton/restart.hpp>

#include "net_helpers.hpp"
#include "test_prelude.hpp"
#include "test_support.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/steady_timer.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace {

using namespace baton::test::prelude;
using namespace baton::test;
using asio::ip::udp;

std::string program(const std::string& name) { return helper_exe("../samples/" + name); }

// Datagrams answered so far, and what their replies showed.
struct tally {
  std::atomic<std::uint64_t> answered{0};
  std::uint64_t duplicates = 0, backwards = 0, malformed = 0, last_generation = 0;
  std::vector<std::uint64_t> per_generation = std::vector<std::uint64_t>(8);
};

// Sends datagrams "<seq>" 0..count-1 to `port`, at most `window` unanswered at a time, so that
// the responder's kernel queue holds at most `window` datagrams however long a hand-over leaves it
// unread (it cannot overflow; a loss shows as a reply that never comes). Sends beyond
// `limit()` wait. Ends when every datagram is answered, or when none was answered for `patience`
// while some were outstanding (lost).
void client(unsigned short port, std::uint64_t count, std::size_t window, const std::function<std::uint64_t()>& limit,
            tally& t, std::chrono::milliseconds patience = 10s) {
  asio::io_context ioc;
  udp::socket s(ioc, udp::endpoint(asio::ip::address_v4::loopback(), 0));
  s.set_option(udp::socket::receive_buffer_size(1 << 20));
  const udp::endpoint to(asio::ip::address_v4::loopback(), port);
  std::vector<bool> seen(count);
  std::uint64_t next = 0;
  auto last_reply = std::chrono::steady_clock::now();
  std::array<char, 512> buf;
  udp::endpoint from;
  bool reading = false;
  std::function<void()> read = [&] {
    reading = true;
    s.async_receive_from(asio::buffer(buf), from, [&](baton::error_code ec, std::size_t n) {
      reading = false;
      if (ec) return;
      last_reply = std::chrono::steady_clock::now();
      // "g<generation> <seq>"
      const std::string r(buf.data(), n);
      const auto space = r.find(' ');
      if (r.size() < 3 || r[0] != 'g' || space == std::string::npos) {
        ++t.malformed;
      } else {
        const std::uint64_t g = std::stoull(r.substr(1, space - 1));
        const std::uint64_t seq = std::stoull(r.substr(space + 1));
        if (g < t.last_generation) ++t.backwards;
        t.last_generation = std::max(t.last_generation, g);
        ++t.per_generation[std::min<std::uint64_t>(g, 7)];
        if (seq >= count || seen[seq]) {
          ++t.duplicates;
        } else {
          seen[seq] = true;
          t.answered.fetch_add(1);
        }
      }
      read();
    });
  };
  read();
  while (t.answered.load() < count) {
    const auto outstanding = next - t.answered.load();
    if (outstanding > 0 && std::chrono::steady_clock::now() - last_reply > patience) break;  // lost
    const auto lim = std::min<std::uint64_t>(limit(), count);
    for (std::uint64_t i = 0; next < lim && next - t.answered.load() < window && i < window; ++i) {
      const auto msg = std::to_string(next++);
      if (next - t.answered.load() == 1) last_reply = std::chrono::steady_clock::now();  // first outstanding
      baton::error_code ec;
      s.send_to(asio::buffer(msg), to, 0, ec);
    }
    ioc.run_for(2ms);
    if (ioc.stopped()) ioc.restart();
  }
  s.cancel();
  while (reading) ioc.run_for(10ms);
}

// The responder, its output in a file (whence the port); whatever generation runs at the end is
// killed. `fault`: BATON_FAULT for it and the generations it starts.
struct responder {
  std::string name = unique_name("udpecho");
  name_guard guard{name};
  std::string log = temp_path("udp-echo-log");
  child first;
  unsigned short port = 0;

  explicit responder(const std::string& fault = "") {
    set_env("BATON_FAULT", fault);
    first = child::run_to_file({program("baton-udp-echo"), "--name", name, "--listen", "127.0.0.1:0", "--rcvbuf",
                                std::to_string(1 << 20)},
                               log);
    set_env("BATON_FAULT", "");
    const std::string marker = "listening on udp port ";
    const auto until = std::chrono::steady_clock::now() + 60s;
    while (port == 0 && std::chrono::steady_clock::now() < until) {
      const auto s = read_file(log);
      const auto at = s.find(marker);
      if (at != std::string::npos) port = static_cast<unsigned short>(std::atoi(s.c_str() + at + marker.size()));
      else nap(20ms);
    }
    EXPECT_NE(port, 0) << "baton-udp-echo did not start; its output: " << read_file(log);
  }
  ~responder() {
    kill_service_generation(name);  // gone before the name guard removes what its channels left
    first.kill();
    remove_file(log);
  }
};

TEST(udp_restart, three_restarts_while_datagrams_flow_lose_none_and_answer_each_once_in_generation_order) {
  // Under Wine a loopback round trip costs ~15x native and each generation starts in seconds: a
  // tenth of the datagrams keeps the test near the time it takes natively (~10 s).
  const std::uint64_t count = host_is_windows() ? 10'000 : 100'000;
  responder r;
  ASSERT_NE(r.port, 0);
  tally t;
  // Restart k (1..3) begins once count*k/5 datagrams are answered; the client sends past
  // count*(k+1)/5 only once restart k is over, so every restart has datagrams flowing through it.
  std::atomic<int> restarts_done{0};
  std::vector<std::string> outputs(3);
  std::vector<int> codes(3, -1);
  std::thread operator_thread([&] {
    for (int k = 1; k <= 3; ++k) {
      const auto until = std::chrono::steady_clock::now() + 120s;
      while (t.answered.load() < count * static_cast<std::uint64_t>(k) / 5 && std::chrono::steady_clock::now() < until)
        nap(1ms);
      codes[k - 1] = run_capture({program("batonctl"), "restart", r.name, "--timeout-ms", "60000"}, outputs[k - 1]);
      restarts_done = k;
    }
  });
  const auto t0 = std::chrono::steady_clock::now();
  client(r.port, count, 32, [&] { return count * static_cast<std::uint64_t>(restarts_done.load() + 2) / 5; }, t);
  const auto took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  operator_thread.join();
  for (int k = 0; k < 3; ++k) {
    EXPECT_EQ(codes[k], 0) << "restart " << k + 1 << ": " << outputs[k];
    EXPECT_NE(outputs[k].find("1 UDP sockets moved"), std::string::npos) << outputs[k];
    std::printf("[ UDP      ] %s", outputs[k].c_str());  // batonctl's line: generations, hand-over time
  }
  EXPECT_EQ(t.answered.load(), count) << "lost " << count - t.answered.load();
  EXPECT_EQ(t.duplicates, 0u);
  EXPECT_EQ(t.backwards, 0u);
  EXPECT_EQ(t.malformed, 0u);
  EXPECT_EQ(t.last_generation, 4u);
  for (std::uint64_t g = 1; g <= 4; ++g) EXPECT_GT(t.per_generation[g], 0u) << "generation " << g;
  std::printf("[ UDP      ] %llu datagrams in %.1f s through 3 restarts; per generation: %llu %llu %llu %llu\n",
              static_cast<unsigned long long>(count), took, static_cast<unsigned long long>(t.per_generation[1]),
              static_cast<unsigned long long>(t.per_generation[2]),
              static_cast<unsigned long long>(t.per_generation[3]),
              static_cast<unsigned long long>(t.per_generation[4]));
}

TEST(udp_restart, next_generation_dies_holding_the_socket_the_old_one_keeps_it_and_loses_nothing) {
  // Generation 2 (started by generation 1, whose environment it inherits) dies once it has
  // re-created the UDP socket, before acknowledging it; generation 1 never receives a socket. (A
  // death just after the acknowledgement is not tested here: with no connection left to move,
  // generation 1 retires at once, and under Wine it does so before it sees the death.)
  responder r("attach:die");
  ASSERT_NE(r.port, 0);
  const std::uint64_t count = host_is_windows() ? 2'000 : 20'000;
  tally t;
  std::atomic<bool> restarted{false};
  std::string out;
  int code = -1;
  std::thread operator_thread([&] {
    const auto until = std::chrono::steady_clock::now() + 120s;
    while (t.answered.load() < count / 4 && std::chrono::steady_clock::now() < until) nap(1ms);
    code = run_capture({program("batonctl"), "restart", r.name, "--timeout-ms", "60000"}, out);
    restarted = true;
  });
  client(r.port, count, 32, [&] { return restarted ? count : count / 2; }, t);
  operator_thread.join();
  EXPECT_NE(code, 0) << out;
  // Which of the two sees the death first varies (under Wine, either): the move's verdict, or the
  // watch on the next generation. The socket's move is rolled back either way.
  EXPECT_TRUE(out.find("the target exited before acknowledging") != std::string::npos ||
              out.find("the next generation exited before it had taken over") != std::string::npos)
      << out;
  // The move was not acknowledged: generation 1 kept the socket, with the datagram its cancelled
  // receive had taken (the copy generation 2 made died with it).
  EXPECT_EQ(t.answered.load(), count) << "lost " << count - t.answered.load();
  EXPECT_EQ(t.duplicates, 0u);
  EXPECT_EQ(t.backwards, 0u);
  EXPECT_EQ(t.last_generation, 1u) << "generation 1 took its socket back and answered everything";
}

}  // namespace
