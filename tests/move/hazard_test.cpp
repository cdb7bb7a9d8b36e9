// The reactor hazards of moving a socket, verified rather than assumed:
// - Linux: the source's epoll set no longer holds the moved descriptor (a registration left
//   behind would keep firing in the source, because it belongs to the open file description the
//   target now shares).
// - Windows: after a move, I/O the target issues on the socket queues no completion packet to
//   the source's completion port; a socket never bound to a port attaches natively.
#include <baton/move.hpp>

#include "async_helpers.hpp"
#include "net_helpers.hpp"
#include "test_prelude.hpp"
#include "test_support.hpp"

#include <gtest/gtest.h>

#include <cstring>

#ifdef _WIN32
#include <mswsock.h>
#include <windows.h>
#else
#include <dirent.h>
#include <fstream>
#include <set>
#include <sstream>
#include <unistd.h>
#endif

namespace {

using namespace baton::test::prelude;

// An echo server target (the echo_server role of move_test.cpp) that never moves on.
struct echo_target {
  std::string name = unique_name("haz");
  name_guard g{name};
  std::string ready = baton::test::temp_path("hr"), result = baton::test::temp_path("hres"),
              stop = baton::test::temp_path("hstop");
  child c;
  echo_target() {
    c = child::spawn("echo_server", {name, "-", "0", ready, result, "0", "0", "automatic", stop});
    EXPECT_TRUE(baton::test::wait_for_file(ready));
  }
  std::string finish() {
    baton::test::touch(stop);
    EXPECT_EQ(c.wait(30s), 0);
    auto r = baton::test::read_file(result);
    for (auto* f : {&ready, &result, &stop}) baton::test::remove_file(*f);
    return r;
  }
};

void echo_round_trip(tcp::socket& client, const std::string& msg) {
  asio::write(client, asio::buffer(msg));
  std::string got(msg.size(), '\0');
  asio::read(client, asio::buffer(got));
  EXPECT_EQ(got, msg);
}

#ifndef _WIN32

// Descriptors registered in any epoll instance of this process (from /proc/self/fdinfo).
std::set<int> epoll_registered_fds() {
  std::set<int> out;
  DIR* d = ::opendir("/proc/self/fd");
  while (dirent* e = d ? ::readdir(d) : nullptr) {
    char link[256] = {};
    const std::string p = std::string("/proc/self/fd/") + e->d_name;
    if (::readlink(p.c_str(), link, sizeof link - 1) <= 0 || std::strstr(link, "eventpoll") == nullptr) continue;
    std::ifstream info(std::string("/proc/self/fdinfo/") + e->d_name);
    std::string line;
    while (std::getline(info, line))
      if (line.rfind("tfd:", 0) == 0) out.insert(std::stoi(line.substr(4)));
  }
  if (d) ::closedir(d);
  return out;
}

void source_epoll_check() {
  echo_target target;
  asio::io_context ioc;
  tcp::acceptor acc(ioc, {asio::ip::address_v4::loopback(), 0});
  auto client = baton::test::connect_loopback(ioc, acc.local_endpoint().port());
  baton::connection conn(acc.accept());
  // Register the descriptor with the reactor for real: one read through Asio.
  asio::write(client, asio::buffer("ping", 4));
  char buf[4];
  ASSERT_TRUE(baton::test::run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    co_await asio::async_read(conn, asio::buffer(buf), asio::use_awaitable);
    co_await asio::async_write(conn, asio::buffer(buf), asio::use_awaitable);
  }(), 10s));
  asio::read(client, asio::buffer(buf));
  const int fd = conn.socket()->native_handle();
  ASSERT_TRUE(epoll_registered_fds().count(fd)) << "precondition: the reactor watches fd " << fd;
  auto tx = baton::channel::open(ioc.get_executor(), target.name);
  baton::error_code result = asio::error::would_block;
  baton::async_send(tx, std::move(conn), baton::move_options{}, [&](baton::error_code ec, baton::connection) { result = ec; });
  for (int i = 0; i < 1000 && result == asio::error::would_block; ++i) ioc.run_for(10ms);
  ASSERT_FALSE(result) << result.message();
  EXPECT_FALSE(epoll_registered_fds().count(fd)) << "the source's epoll still watches the moved fd";
  // The target serves; the source's reactor runs no handler for it.
  echo_round_trip(client, "served by the target");
  ioc.restart();
  EXPECT_EQ(ioc.poll(), 0u);
  client.close();
  auto r = target.finish();
  EXPECT_NE(r.find("received=1"), std::string::npos) << r;
}

#else

// Builds and sends a connection ticket for a raw socket by hand, as the library would.
baton::error_code send_raw_socket(asio::io_context& ioc, baton::channel& tx, SOCKET s) {
  WSAPROTOCOL_INFOW info{};
  if (::WSADuplicateSocketW(s, tx.owner_pid(), &info) != 0)
    return {::WSAGetLastError(), asio::error::get_system_category()};
  baton::ticket t;
  t.kind = baton::ticket_kind::connection;
  t.method = baton::transfer_method::wsa_duplicate;
  t.id = baton::ticket_id::random();
  t.payload.resize(sizeof info);
  std::memcpy(t.payload.data(), &info, sizeof info);
  baton::error_code result = asio::error::would_block;
  tx.async_transact(t, 10s, [&](baton::error_code ec) { result = ec; });
  for (int i = 0; i < 1500 && result == asio::error::would_block; ++i) ioc.run_for(10ms);
  return result;
}

struct raw_pair {
  SOCKET listener = INVALID_SOCKET, server = INVALID_SOCKET;
  tcp::socket client;
  explicit raw_pair(asio::io_context& ioc) : client(ioc) {
    listener = ::WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, nullptr, 0, WSA_FLAG_OVERLAPPED);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(listener, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    ::listen(listener, 4);
    int len = sizeof sa;
    ::getsockname(listener, reinterpret_cast<sockaddr*>(&sa), &len);
    client = baton::test::connect_loopback(ioc, ntohs(sa.sin_port));
    server = ::accept(listener, nullptr, nullptr);
  }
  ~raw_pair() {
    if (server != INVALID_SOCKET) ::closesocket(server);
    ::closesocket(listener);
  }
};

void unbound_native_check() {
  echo_target target;
  asio::io_context ioc;
  raw_pair p(ioc);
  ASSERT_NE(p.server, INVALID_SOCKET);
  auto tx = baton::channel::open(ioc.get_executor(), target.name);
  ASSERT_FALSE(send_raw_socket(ioc, tx, p.server));
  ::closesocket(p.server);
  p.server = INVALID_SOCKET;
  echo_round_trip(p.client, "native in the target");
  p.client.close();
  auto r = target.finish();
  EXPECT_NE(r.find("modes=n"), std::string::npos) << r;
}

void no_stray_packet_check() {
  echo_target target;
  asio::io_context ioc;
  raw_pair p(ioc);
  HANDLE port = ::CreateIoCompletionPort(INVALID_HANDLE_VALUE, nullptr, 0, 1);
  ASSERT_EQ(::CreateIoCompletionPort(reinterpret_cast<HANDLE>(p.server), port, 77, 0), port);
  // Positive control: overlapped I/O on the socket does reach this port while we own it.
  {
    asio::write(p.client, asio::buffer("x", 1));
    char c = 0;
    WSABUF b{1, &c};
    DWORD n = 0, flags = 0;
    OVERLAPPED ov{};
    const int r = ::WSARecv(p.server, &b, 1, &n, &flags, &ov, nullptr);
    ASSERT_TRUE(r == 0 || ::WSAGetLastError() == WSA_IO_PENDING);
    DWORD bytes = 0;
    ULONG_PTR key = 0;
    LPOVERLAPPED got = nullptr;
    ASSERT_TRUE(::GetQueuedCompletionStatus(port, &bytes, &key, &got, 5000));
    EXPECT_EQ(key, 77u);
    EXPECT_EQ(c, 'x');
  }
  auto tx = baton::channel::open(ioc.get_executor(), target.name);
  ASSERT_FALSE(send_raw_socket(ioc, tx, p.server));
  // The target now reads and writes the socket (many operations).
  for (int i = 0; i < 50; ++i) echo_round_trip(p.client, "round trip " + std::to_string(i));
  DWORD bytes = 0;
  ULONG_PTR key = 0;
  LPOVERLAPPED got = nullptr;
  const BOOL stray = ::GetQueuedCompletionStatus(port, &bytes, &key, &got, 200);
  EXPECT_FALSE(stray || got != nullptr) << "a completion of the target's I/O reached the source's port";
  ::closesocket(p.server);
  p.server = INVALID_SOCKET;
  ::CloseHandle(port);
  p.client.close();
  auto r = target.finish();
  EXPECT_NE(r.find("modes=e"), std::string::npos) << r;
}

#endif

// Every platform lists every test; the other platform's show as skipped, never as passed.
TEST(move_hazard, source_epoll_no_longer_watches_a_moved_descriptor) {
#if defined(BOOST_ASIO_HAS_IO_URING_AS_DEFAULT)
  GTEST_SKIP() << "built with io_uring as the reactor: sockets are not in an epoll set";
#elif !defined(_WIN32)
  source_epoll_check();
#else
  GTEST_SKIP() << "epoll is Linux's";
#endif
}

TEST(move_hazard, socket_never_bound_to_a_port_attaches_natively) {
#ifdef _WIN32
  unbound_native_check();
#else
  GTEST_SKIP() << "completion ports are Windows'";
#endif
}

TEST(move_hazard, target_io_queues_no_completion_to_the_source_port) {
#ifdef _WIN32
  no_stray_packet_check();
#else
  GTEST_SKIP() << "completion ports are Windows'";
#endif
}

}  // namespace
