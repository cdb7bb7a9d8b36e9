// Linux transfer of sockets: the target pulls the descriptor with pidfd_getfd (default), or the
// source pushes it with SCM_RIGHTS over the channel's Unix socket.
#include "detail/platform.hpp"
#include "detail/stream.hpp"
#include "detail/endian.hpp"

#include <cerrno>
#include <chrono>
#include <map>
#include <poll.h>
#include <mutex>
#include <sys/un.h>
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

// --- SCM_RIGHTS push ------------------------------------------------------------------------
// The receiver of a channel binds a Unix datagram socket at /dev/shm/baton.NAME.sock (mode 0600)
// with SO_PASSCRED on. A source sends one datagram per move: the ticket id, the descriptor as
// SCM_RIGHTS, and (added by the kernel) its credentials. It sends before writing the ticket, so
// the datagram is queued by the time the receiver reads the ticket. Datagrams from another uid
// are refused and their descriptors closed.

std::string sock_path(const std::string& channel_name) { return "/dev/shm/baton." + channel_name + ".sock"; }

struct endpoint {
  int fd = -1;
  std::map<ticket_id, int> early;  // descriptors whose ticket has not been read yet
};
std::mutex endpoints_mutex;
std::map<std::string, endpoint>& endpoints() {
  static std::map<std::string, endpoint> e;
  return e;
}

bool fill_sockaddr(const std::string& path, sockaddr_un& sa) {
  sa = {};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) return false;
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  return true;
}

void push_fd(int fd, const std::string& channel_name, const ticket_id& id, error_code& ec) {
  ec.clear();
  const auto path = sock_path(channel_name);
  struct stat st {};
  // Only a socket of our own user may receive our connections.
  if (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode) || st.st_uid != ::geteuid()) {
    ec = errc::not_owner;
    return;
  }
  sockaddr_un sa;
  if (!fill_sockaddr(path, sa)) {
    ec = errc::invalid_name;
    return;
  }
  int s = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) {
    ec = sys_error(errno);
    return;
  }
  iovec iov{const_cast<std::uint8_t*>(id.bytes.data()), id.bytes.size()};
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_name = &sa;
  msg.msg_namelen = sizeof sa;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof ctrl;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  // Never block the source's thread on a stalled target: the target's queue holds only
  // net.unix.max_dgram_qlen datagrams. Connected, the socket can wait for room with poll();
  // the wait is bounded (50 ms), then the move fails with channel_full and rolls back.
  if (::connect(s, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    ec = sys_error(errno);
    ::close(s);
    return;
  }
  msg.msg_name = nullptr;
  msg.msg_namelen = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(50);
  for (;;) {
    if (::sendmsg(s, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0) break;
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      ec = sys_error(errno);
      break;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      ec = errc::channel_full;
      break;
    }
    pollfd p{s, POLLOUT, 0};
    ::poll(&p, 1, static_cast<int>(left.count()) + 1);
  }
  ::close(s);
}

// Takes the descriptor pushed for ticket `id` off the channel's socket.
int pull_pushed_fd(const std::string& channel_name, const ticket_id& id, error_code& ec) {
  ec.clear();
  std::lock_guard lock(endpoints_mutex);
  auto it = endpoints().find(channel_name);
  if (it == endpoints().end()) {
    ec = errc::strategy_unavailable;
    return -1;
  }
  auto& ep = it->second;
  if (auto e = ep.early.find(id); e != ep.early.end()) {
    int fd = e->second;
    ep.early.erase(e);
    return fd;
  }
  for (;;) {
    std::uint8_t data[16];
    iovec iov{data, sizeof data};
    alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * 4) + CMSG_SPACE(sizeof(ucred))];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl;
    msg.msg_controllen = sizeof ctrl;
    ssize_t n = ::recvmsg(ep.fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      ec = errno == EAGAIN ? make_error_code(errc::handle_mismatch) : sys_error(errno);
      return -1;
    }
    int got = -1;
    bool trusted = false;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET) continue;
      if (c->cmsg_type == SCM_CREDENTIALS) {
        ucred cr;
        std::memcpy(&cr, CMSG_DATA(c), sizeof cr);
        trusted = cr.uid == ::geteuid();
      } else if (c->cmsg_type == SCM_RIGHTS) {
        const std::size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < k; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
          if (got < 0) got = fd;
          else ::close(fd);  // one descriptor per message, by protocol
        }
      }
    }
    if (got < 0) continue;
    if (!trusted || n != 16 || (msg.msg_flags & MSG_CTRUNC)) {
      ::close(got);  // another user's push, or a malformed one
      counters().refused_pushes++;
      continue;
    }
    ticket_id mid;
    std::memcpy(mid.bytes.data(), data, 16);
    if (mid == id) return got;
    // Bounded: descriptors of tickets that never come (voided by their senders) are dropped.
    if (ep.early.size() >= 1024) {
      ::close(ep.early.begin()->second);
      ep.early.erase(ep.early.begin());
    }
    ep.early.emplace(mid, got);
  }
}

bool yama_restricts_ptrace() {
  static const bool restricted = [] {
    FILE* f = std::fopen("/proc/sys/kernel/yama/ptrace_scope", "r");
    if (!f) return false;
    int v = 0;
    const bool ok = std::fscanf(f, "%d", &v) == 1;
    std::fclose(f);
    return ok && v == 1;
  }();  // read once: the setting is system-wide and changes only by an administrator
  return restricted;
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
  explicit fd_export(int fd) : fd_(fd) {}
  ~fd_export() override {
    if (fd_ >= 0) ::close(fd_);
  }
  void commit() override {
    ::close(fd_);
    fd_ = -1;
  }
  std::unique_ptr<stream_backend> rollback_stream(const asio::any_io_executor& ex, error_code& ec) override {
    tcp::socket s(ex);
    s.assign(protocol_of(fd_), fd_, ec);  // only on rollback: the common path needs no getsockname
    if (ec) return nullptr;
    fd_ = -1;
    return make_native_stream(std::move(s));
  }
  std::unique_ptr<listener_backend> rollback_listener(const asio::any_io_executor& ex, error_code& ec) override {
    tcp::acceptor a(ex);
    a.assign(protocol_of(fd_), fd_, ec);
    if (ec) return nullptr;
    fd_ = -1;
    return make_native_listener(std::move(a));
  }

 private:
  int fd_;
};

// Common to connections and listeners: `release` detaches the descriptor from the reactor (Asio
// deregisters it from epoll, so the source gets no further event for it).
template <class Release, class Restore>
std::unique_ptr<pending_export> export_fd(Release&& release, Restore&& restore, std::uint32_t target_pid,
                                          transfer_strategy how, const std::string& channel_name, ticket& t,
                                          error_code& ec) {
  ec.clear();
  if (how == transfer_strategy::wsa_duplicate || how == transfer_strategy::duplicate_handle) {
    ec = errc::strategy_unavailable;
    return nullptr;
  }
  if (how == transfer_strategy::inherit) {
    // The child inherited the descriptor under the same number when it was spawned.
    int fd = release(ec);
    if (ec) return nullptr;
    const std::uint64_t v = static_cast<std::uint64_t>(fd);
    t.method = transfer_method::inherit;
    t.payload.resize(8);
    std::memcpy(t.payload.data(), &v, 8);
    return std::make_unique<fd_export>(fd);
  }
  bool push = how == transfer_strategy::scm_rights;
  if (!push && !pidfd_getfd_supported()) {
    // ENOSYS: an old kernel. The push path works everywhere.
    push = true;
    counters().fallbacks++;
  }
  int fd = release(ec);
  if (ec) return nullptr;
  if (push) {
    push_fd(fd, channel_name, t.id, ec);
    if (ec) {
      restore(fd);
      return nullptr;
    }
    t.method = transfer_method::scm_rights;
    t.payload.clear();
    return std::make_unique<fd_export>(fd);
  }
  struct stat st {};
  ::fstat(fd, &st);
  if (yama_restricts_ptrace()) ::prctl(PR_SET_PTRACER, static_cast<unsigned long>(target_pid), 0, 0, 0);
  fd_payload p{fd, 0, static_cast<std::uint64_t>(st.st_ino), static_cast<std::uint64_t>(st.st_dev)};
  t.method = transfer_method::pidfd_getfd;
  t.payload.resize(sizeof p);
  std::memcpy(t.payload.data(), &p, sizeof p);
  return std::make_unique<fd_export>(fd);
}

// pidfds of recent senders, so that a busy receiver pays pidfd_open once per sender, not once per
// move. A pidfd names one process for good: if that process is gone (its pid possibly reused),
// pidfd_getfd fails with ESRCH, the entry is dropped and a fresh pidfd is opened once.
std::mutex pidfd_mutex;
std::map<std::uint32_t, int>& pidfd_cache() {
  static std::map<std::uint32_t, int> c;
  return c;
}

long pull_with_pidfd(std::uint32_t pid, int remote_fd, int& err) {
  std::lock_guard lock(pidfd_mutex);
  auto& cache = pidfd_cache();
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto it = cache.find(pid);
    if (it == cache.end()) {
      long pidfd = ::syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0);
      if (pidfd < 0) {
        err = errno;
        return -1;
      }
      if (cache.size() >= 64) {  // bounded: forget the oldest-numbered sender
        ::close(cache.begin()->second);
        cache.erase(cache.begin());
      }
      it = cache.emplace(pid, static_cast<int>(pidfd)).first;
    }
    long fd = ::syscall(SYS_pidfd_getfd, it->second, remote_fd, 0);
    if (fd >= 0) return fd;
    err = errno;
    if (err != ESRCH || attempt == 1) return -1;
    ::close(it->second);
    cache.erase(it);
  }
  return -1;
}

// Pulls the descriptor named by a pidfd_getfd ticket and checks that it is the TCP socket the
// ticket describes.
int import_fd(const ticket& t, const std::string& channel_name, bool want_listener, error_code& ec) {
  ec.clear();
  long fd = -1;
  fd_payload p{};
  if (t.method == transfer_method::scm_rights) {
    fd = pull_pushed_fd(channel_name, t.id, ec);
    if (fd < 0) return -1;
  } else if (t.method == transfer_method::pidfd_getfd) {
    std::memcpy(&p, t.payload.data(), sizeof p);
    int err = 0;
    fd = pull_with_pidfd(t.sender_pid, p.fd, err);
    if (fd < 0 && err == ESRCH) {
      ec = errc::target_died;
      return -1;
    }
    if (fd < 0) {
      ec = err == EBADF ? make_error_code(errc::handle_mismatch) : sys_error(err);
      return -1;
    }
  } else if (t.method == transfer_method::inherit) {
    std::uint64_t v = 0;
    std::memcpy(&v, t.payload.data(), 8);
    if (v > 0x7FFFFFFF || ::fcntl(static_cast<int>(v), F_GETFD) < 0) {
      ec = errc::handle_mismatch;
      return -1;
    }
    fd = static_cast<long>(v);
    ::fcntl(static_cast<int>(fd), F_SETFD, FD_CLOEXEC);  // do not pass it on to our own children
  } else {
    ec = errc::strategy_unavailable;
    return -1;
  }
  struct stat st {};
  int type = 0, listening = 0;
  socklen_t len = sizeof type;
  ::fstat(static_cast<int>(fd), &st);
  if (t.method == transfer_method::pidfd_getfd && (st.st_ino != p.ino || st.st_dev != p.dev)) {
    ::close(static_cast<int>(fd));
    ec = errc::handle_mismatch;
    return -1;
  }
  ::getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_TYPE, &type, &len);
  len = sizeof listening;
  ::getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len);
  if (!S_ISSOCK(st.st_mode) || type != SOCK_STREAM || (listening != 0) != want_listener) {
    // An inherited number that is not the promised socket may be one of our own descriptors.
    if (t.method != transfer_method::inherit) ::close(static_cast<int>(fd));
    ec = errc::not_a_socket;
    return -1;
  }
  return static_cast<int>(fd);
}

}  // namespace

void open_transfer_endpoint(const std::string& channel_name, error_code& ec) {
  ec.clear();
  const auto path = sock_path(channel_name);
  sockaddr_un sa;
  if (!fill_sockaddr(path, sa)) {
    ec = errc::invalid_name;
    return;
  }
  int s = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0) {
    ec = sys_error(errno);
    return;
  }
  int one = 1;
  ::setsockopt(s, SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
  // bind() fails with EADDRINUSE if the path exists: a squatter's socket is never taken over.
  // fchmod on a socket does not reach the file bind creates, so the mode is set right after
  // bind (datagrams from other users are refused by their credentials meanwhile).
  if (::bind(s, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    ec = errno == EADDRINUSE ? make_error_code(errc::name_in_use) : sys_error(errno);
    ::close(s);
    return;
  }
  ::chmod(path.c_str(), 0600);
  std::lock_guard lock(endpoints_mutex);
  endpoints()[channel_name].fd = s;
}

void close_transfer_endpoint(const std::string& channel_name) noexcept {
  {
    std::lock_guard lock(endpoints_mutex);
    auto it = endpoints().find(channel_name);
    if (it != endpoints().end()) {
      for (auto& [id, fd] : it->second.early) ::close(fd);
      ::close(it->second.fd);
      endpoints().erase(it);
      ::unlink(sock_path(channel_name).c_str());
      return;
    }
  }
  // Not ours (a stale channel of a dead receiver): remove the name only if it is a socket of ours.
  struct stat st {};
  const auto path = sock_path(channel_name);
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_uid == ::geteuid()) ::unlink(path.c_str());
}

std::unique_ptr<pending_export> export_stream(std::unique_ptr<stream_backend>& s, std::uint32_t target_pid,
                                              transfer_strategy how, const std::string& channel_name, ticket& t,
                                              error_code& ec) {
  auto* sock = s->socket();
  if (!sock) {
    ec = errc::strategy_unavailable;
    return nullptr;
  }
  auto p = export_fd([&](error_code& e) { return sock->release(e); },
                     [&](int fd) {
                       error_code ignored;
                       sock->assign(protocol_of(fd), fd, ignored);
                     },
                     target_pid, how, channel_name, t, ec);
  if (!ec) s.reset();
  return p;
}

std::unique_ptr<stream_backend> import_stream(const asio::any_io_executor& ex, const ticket& t,
                                              const std::string& channel_name, error_code& ec) {
  int fd = import_fd(t, channel_name, false, ec);
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
                                                transfer_strategy how, const std::string& channel_name, ticket& t,
                                                error_code& ec) {
  auto* a = l->acceptor();
  if (!a) {
    ec = errc::strategy_unavailable;
    return nullptr;
  }
  auto p = export_fd([&](error_code& e) { return a->release(e); },
                     [&](int fd) {
                       error_code ignored;
                       a->assign(protocol_of(fd), fd, ignored);
                     },
                     target_pid, how, channel_name, t, ec);
  if (!ec) l.reset();
  return p;
}

std::unique_ptr<listener_backend> import_listener(const asio::any_io_executor& ex, const ticket& t,
                                                  const std::string& channel_name, error_code& ec) {
  int fd = import_fd(t, channel_name, true, ec);
  if (fd < 0) return nullptr;
  return adopt_listener(ex, static_cast<std::uintptr_t>(fd), ec);
}

std::uintptr_t duplicate_socket_handle(std::uintptr_t h, error_code& ec) {
  ec.clear();
  const int fd = ::fcntl(static_cast<int>(h), F_DUPFD_CLOEXEC, 3);
  if (fd < 0) ec = {errno, boost::system::system_category()};
  return static_cast<std::uintptr_t>(fd);
}

void close_socket_handle(std::uintptr_t h) noexcept { ::close(static_cast<int>(h)); }

std::unique_ptr<listener_backend> adopt_listener(const asio::any_io_executor& ex, std::uintptr_t h, error_code& ec) {
  const int fd = static_cast<int>(h);
  tcp::acceptor a(ex);
  a.assign(protocol_of(fd), fd, ec);
  if (ec) {
    ::close(fd);
    return nullptr;
  }
  return make_native_listener(std::move(a));
}

}  // namespace baton::detail
