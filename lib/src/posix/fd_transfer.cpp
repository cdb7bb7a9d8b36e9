// Linux transfer of sockets: the target pulls the descriptor with pidfd_getfd (default), or the
// source pushes it with SCM_RIGHTS over the channel's Unix socket.
#include "detail/platform.hpp"
#include "detail/stream.hpp"
#include "detail/endian.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef PR_SET_PTRACER
#define PR_SET_PTRACER 0x59616d61
#endif

namespace baton::detail {

namespace asio = boost::asio;
using asio::ip::tcp;

transfer_counters& counters() noexcept {
  static transfer_counters c;
  return c;
}

namespace {

error_code sys_error(int e) { return {e, boost::system::system_category()}; }

// Payload of a pidfd_getfd ticket: the descriptor number in the source, and the identity of the
// socket's inode, so that a descriptor number reused by the time the target pulls is detected.
struct fd_payload {
  std::int32_t fd;
  std::uint32_t reserved;
  std::uint64_t ino;
  std::uint64_t dev;
};
static_assert(sizeof(fd_payload) == 24);

bool yama_restricts_ptrace() {
  FILE* f = std::fopen("/proc/sys/kernel/yama/ptrace_scope", "r");
  if (!f) return false;
  int v = 0;
  const bool ok = std::fscanf(f, "%d", &v) == 1;
  std::fclose(f);
  return ok && v == 1;
}

bool pidfd_getfd_supported() {
  static const bool supported = [] {
    long pidfd = ::syscall(SYS_pidfd_open, ::getpid(), 0);
    if (pidfd < 0) return false;
    long fd = ::syscall(SYS_pidfd_getfd, static_cast<int>(pidfd), static_cast<int>(pidfd), 0);
    const bool ok = fd >= 0 || errno != ENOSYS;
    if (fd >= 0) ::close(static_cast<int>(fd));
    ::close(static_cast<int>(pidfd));
    return ok;
  }();
  return supported;
}

tcp protocol_of(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  return ss.ss_family == AF_INET6 ? tcp::v6() : tcp::v4();
}

class fd_export final : public pending_export {
 public:
  fd_export(int fd, tcp proto) : fd_(fd), proto_(proto) {}
  ~fd_export() override {
    if (fd_ >= 0) ::close(fd_);
  }
  void commit() override {
    ::close(fd_);
    fd_ = -1;
  }
  std::unique_ptr<stream_backend> rollback_stream(const asio::any_io_executor& ex, error_code& ec) override {
    tcp::socket s(ex);
    s.assign(proto_, fd_, ec);
    if (ec) return nullptr;
    fd_ = -1;
    return make_native_stream(std::move(s));
  }
  std::unique_ptr<listener_backend> rollback_listener(const asio::any_io_executor& ex, error_code& ec) override {
    tcp::acceptor a(ex);
    a.assign(proto_, fd_, ec);
    if (ec) return nullptr;
    fd_ = -1;
    return make_native_listener(std::move(a));
  }

 private:
  int fd_;
  tcp proto_;
};

// Common to connections and listeners: `release` detaches the descriptor from the reactor (Asio
// deregisters it from epoll, so the source gets no further event for it).
template <class Release>
std::unique_ptr<pending_export> export_fd(Release&& release, std::uint32_t target_pid, transfer_strategy how,
                                          ticket& t, error_code& ec) {
  ec.clear();
  if (how == transfer_strategy::wsa_duplicate || how == transfer_strategy::duplicate_handle) {
    ec = errc::strategy_unavailable;
    return nullptr;
  }
  if (how == transfer_strategy::scm_rights) {
    ec = errc::strategy_unavailable;  // see docs/linux.md: the push path is not built yet
    return nullptr;
  }
  if (!pidfd_getfd_supported()) {
    ec = errc::strategy_unavailable;
    return nullptr;
  }
  int fd = release(ec);
  if (ec) return nullptr;
  struct stat st {};
  ::fstat(fd, &st);
  if (yama_restricts_ptrace()) ::prctl(PR_SET_PTRACER, static_cast<unsigned long>(target_pid), 0, 0, 0);
  fd_payload p{fd, 0, static_cast<std::uint64_t>(st.st_ino), static_cast<std::uint64_t>(st.st_dev)};
  t.method = transfer_method::pidfd_getfd;
  t.payload.resize(sizeof p);
  std::memcpy(t.payload.data(), &p, sizeof p);
  return std::make_unique<fd_export>(fd, protocol_of(fd));
}

// Pulls the descriptor named by a pidfd_getfd ticket and checks that it is the TCP socket the
// ticket describes.
int import_fd(const ticket& t, bool want_listener, error_code& ec) {
  ec.clear();
  if (t.method != transfer_method::pidfd_getfd) {
    ec = errc::strategy_unavailable;
    return -1;
  }
  fd_payload p;
  std::memcpy(&p, t.payload.data(), sizeof p);
  long pidfd = ::syscall(SYS_pidfd_open, static_cast<pid_t>(t.sender_pid), 0);
  if (pidfd < 0) {
    ec = errno == ESRCH ? make_error_code(errc::target_died) : sys_error(errno);
    return -1;
  }
  long fd = ::syscall(SYS_pidfd_getfd, static_cast<int>(pidfd), p.fd, 0);
  const int err = errno;
  ::close(static_cast<int>(pidfd));
  if (fd < 0) {
    ec = err == EBADF ? make_error_code(errc::handle_mismatch) : sys_error(err);
    return -1;
  }
  struct stat st {};
  int type = 0, listening = 0;
  socklen_t len = sizeof type;
  ::fstat(static_cast<int>(fd), &st);
  if (st.st_ino != p.ino || st.st_dev != p.dev) {
    ::close(static_cast<int>(fd));
    ec = errc::handle_mismatch;
    return -1;
  }
  ::getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_TYPE, &type, &len);
  len = sizeof listening;
  ::getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len);
  if (!S_ISSOCK(st.st_mode) || type != SOCK_STREAM || (listening != 0) != want_listener) {
    ::close(static_cast<int>(fd));
    ec = errc::not_a_socket;
    return -1;
  }
  return static_cast<int>(fd);
}

}  // namespace

std::unique_ptr<pending_export> export_stream(std::unique_ptr<stream_backend>& s, std::uint32_t target_pid,
                                              transfer_strategy how, const std::string&, ticket& t,
                                              error_code& ec) {
  auto* sock = s->socket();
  if (!sock) {
    ec = errc::strategy_unavailable;
    return nullptr;
  }
  auto p = export_fd([&](error_code& e) { return sock->release(e); }, target_pid, how, t, ec);
  if (!ec) s.reset();
  return p;
}

std::unique_ptr<stream_backend> import_stream(const asio::any_io_executor& ex, const ticket& t, const std::string&,
                                              error_code& ec) {
  int fd = import_fd(t, false, ec);
  if (fd < 0) return nullptr;
  tcp::socket s(ex);
  s.assign(protocol_of(fd), fd, ec);
  if (ec) {
    ::close(fd);
    return nullptr;
  }
  return make_native_stream(std::move(s));
}

std::unique_ptr<pending_export> export_listener(std::unique_ptr<listener_backend>& l, std::uint32_t target_pid,
                                                transfer_strategy how, const std::string&, ticket& t,
                                                error_code& ec) {
  auto* a = l->acceptor();
  if (!a) {
    ec = errc::strategy_unavailable;
    return nullptr;
  }
  auto p = export_fd([&](error_code& e) { return a->release(e); }, target_pid, how, t, ec);
  if (!ec) l.reset();
  return p;
}

std::unique_ptr<listener_backend> import_listener(const asio::any_io_executor& ex, const ticket& t,
                                                  const std::string&, error_code& ec) {
  int fd = import_fd(t, true, ec);
  if (fd < 0) return nullptr;
  tcp::acceptor a(ex);
  a.assign(protocol_of(fd), fd, ec);
  if (ec) {
    ::close(fd);
    return nullptr;
  }
  return make_native_listener(std::move(a));
}

}  // namespace baton::detail
