// A process of another user attacks a channel: it may not open, read, write or ring it, may not
// pull a descriptor with pidfd_getfd, and its SCM_RIGHTS pushes are refused even when the
// channel's socket is (mis)configured to let it connect. Legitimate moves are unaffected.
// Linux only; needs root to run the helper as an unprivileged uid with setpriv.
#include <baton/move.hpp>

#include "async_helpers.hpp"
#include "net_helpers.hpp"
#include "test_prelude.hpp"
#include "test_support.hpp"

#include <gtest/gtest.h>

#include <cstring>

#ifndef _WIN32
#include "posix/scm_rights_push.hpp"

#include <cerrno>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>
#endif

namespace {

using namespace baton::test::prelude;

#ifndef _WIN32
// Runs as an unprivileged uid. args: channel name, parent pid, parent's fd, result file.
// Writes one letter per attempt: 'r' refused (as it must be), 'A' allowed.
BATON_TEST_ROLE(foreign_user) {
  const std::string name = args.at(0);
  const int ppid = std::stoi(args.at(1)), pfd = std::stoi(args.at(2));
  std::string out;
  asio::io_context ioc;
  baton::error_code ec;
  baton::channel::open(ioc.get_executor(), name, {}, ec);  // map + read + write the ring
  out += ec ? 'r' : 'A';
  int fd = ::open(("/dev/shm/baton." + name + ".ring").c_str(), O_RDWR);
  out += fd < 0 ? 'r' : 'A';
  if (fd >= 0) ::close(fd);
  fd = ::open(("/dev/shm/baton." + name + ".bell").c_str(), O_WRONLY | O_NONBLOCK);  // ring the bell
  out += fd < 0 ? 'r' : 'A';
  if (fd >= 0) ::close(fd);
  long pidfd = ::syscall(SYS_pidfd_open, ppid, 0);
  long stolen = pidfd >= 0 ? ::syscall(SYS_pidfd_getfd, static_cast<int>(pidfd), pfd, 0) : -1;
  out += stolen < 0 ? 'r' : 'A';
  // Push descriptors at the channel's socket (the parent made it world-writable for this).
  int s = ::socket(AF_UNIX, SOCK_DGRAM, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  const std::string path = baton::detail::push_socket_path(name);
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  int sent = 0;
  for (int i = 0; i < 8; ++i) {
    int payload_fd = ::socket(AF_INET, SOCK_STREAM, 0);
    std::uint8_t id[16] = {};
    id[0] = static_cast<std::uint8_t>(i);
    if (baton::detail::send_with_fd(s, payload_fd, id, sizeof id, &sa, sizeof sa) >= 0) ++sent;
    ::close(payload_fd);
  }
  baton::test::write_file(args.at(3), out + " pushed=" + std::to_string(sent));
  return 0;
}
#endif

TEST(move_security, another_user_cannot_use_a_channel_and_legitimate_moves_go_on) {
#ifdef _WIN32
  GTEST_SKIP() << "the Windows side is the DACL test";
#else
  if (::geteuid() != 0 || ::system("command -v setpriv >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "needs root and setpriv to run a helper as another uid";
  // The counter is process-wide: count only the refusals this test causes.
  const auto refused_before = baton::get_move_stats().refused_pushes;
  asio::io_context ioc;
  name_guard g(unique_name("uid"));
  auto rx = baton::channel::create(ioc.get_executor(), g.name);
  // Misconfigure the push socket on purpose: only the credential check stands in the way.
  ::chmod(("/dev/shm/baton." + g.name + ".sock").c_str(), 0666);
  tcp::acceptor acc(ioc, {asio::ip::address_v4::loopback(), 0});
  auto client = baton::test::connect_loopback(ioc, acc.local_endpoint().port());
  baton::connection server(acc.accept());
  const int target_fd = static_cast<int>(server.native_handle());
  const auto result = baton::test::temp_path("uidres");
  auto helper = child::spawn_wrapped({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"},
                                     "foreign_user",
                                     {g.name, std::to_string(::getpid()), std::to_string(target_fd), result});
  ASSERT_EQ(helper.wait(30s), 0);
  const auto r = baton::test::read_file(result);
  std::printf("[ info ] foreign user: %s (open, shm, bell, pidfd_getfd: r = refused)\n", r.c_str());
  EXPECT_EQ(r.substr(0, 4), "rrrr") << r;
  // Legitimate traffic: a move to ourselves by push, after the foreign datagrams.
  auto tx = baton::channel::open(ioc.get_executor(), g.name);
  baton::move_options o;
  o.strategy = baton::transfer_strategy::scm_rights;
  baton::error_code sent = asio::error::would_block, got = asio::error::would_block;
  baton::arrival arrived;
  baton::async_receive(rx, [&](baton::error_code ec, baton::arrival a) {
    got = ec;
    arrived = std::move(a);
  });
  baton::async_send(tx, std::move(server), o, [&](baton::error_code ec, baton::connection) { sent = ec; });
  for (int i = 0; i < 1000 && (sent == asio::error::would_block || got == asio::error::would_block); ++i)
    ioc.run_for(10ms);
  ASSERT_FALSE(sent) << sent.message();
  ASSERT_FALSE(got) << got.message();
  ASSERT_TRUE(arrived.conn.is_open());
  EXPECT_GE(baton::get_move_stats().refused_pushes - refused_before, 1u) << "the foreign datagrams were not seen";
  const std::string msg = "still mine";
  asio::write(client, asio::buffer(msg));
  std::string buf(msg.size(), '\0');
  ASSERT_TRUE(baton::test::run_with_deadline(ioc, [&]() -> asio::awaitable<void> {
    co_await asio::async_read(arrived.conn, asio::buffer(buf), asio::use_awaitable);
  }(), 10s));
  EXPECT_EQ(buf, msg);
  baton::test::remove_file(result);
#endif
}

}  // namespace
