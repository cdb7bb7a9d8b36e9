// Linux transfer of sockets: the target pulls the descriptor with pidfd_getfd (default), or the
// source pushes it with SCM_RIGHTS over the channel's Unix socket (posix/scm_rights_push.cpp).
// Which of the two a move uses, and the fallback from one to the other, is decided here alone.
#include "detail/stream.hpp"
#include "posix/scm_rights_push.hpp"

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <map>
#include <mutex>
#include <optional>
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

namespace {


// Payload of a pidfd_getfd ticket: the descriptor number in the source, and the identity of the
// socket's inode, so that a descriptor number reused by the time the target pulls is detected.
struct fd_payload {
  std::int32_t fd;
  std::uint32_t reserved;
  std::uint64_t ino;
  std::uint64_t dev;
};
static_assert(sizeof(fd_payload) == 24);

// Yama's ptrace_scope 1 lets only a process's declared tracer pull from it, and a process can
// declare one tracer at a time. The grant is made for the moves to one target at a time and
// revoked when the last of them ends, so that no ptrace right is left behind; a move to another
// target meanwhile is pushed instead (counted as a fallback).
std::mutex ptracer_mutex;
std::uint32_t ptracer_target = 0;
std::uint32_t ptracer_users = 0;

bool grant_ptracer(std::uint32_t target) {
  std::lock_guard lock(ptracer_mutex);
  if (ptracer_users > 0 && ptracer_target != target) return false;
  if (ptracer_users == 0) {
    if (::prctl(PR_SET_PTRACER, static_cast<unsigned long>(target), 0, 0, 0) != 0) return false;
    ptracer_target = target;
  }
  ++ptracer_users;
  return true;
}

void release_ptracer() {
  std::lock_guard lock(ptracer_mutex);
  if (ptracer_users == 0 || --ptracer_users > 0) return;
  ::prctl(PR_SET_PTRACER, 0UL, 0, 0, 0);
  ptracer_target = 0;
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

// The socket's protocol from its address family; empty if it is no IPv4 or IPv6 socket.
std::optional<tcp> ip_protocol_of(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return std::nullopt;
  if (ss.ss_family == AF_INET6) return tcp::v6();
  if (ss.ss_family == AF_INET) return tcp::v4();
  return std::nullopt;
}
tcp protocol_of(int fd) { return ip_protocol_of(fd).value_or(tcp::v4()); }

// The source's descriptor from the export until the verdict. With a push, async_publish sends it
// to the target's endpoint; with a pull, the target takes its own copy by number.
class fd_export final : public pending_export {
 public:
  fd_export(int fd, socket_kind kind, transfer_strategy how) : fd_(fd), kind_(kind), how_(how) {}
  ~fd_export() override {
    if (fd_ >= 0) ::close(fd_);
    if (ptracer_) release_ptracer();
  }
  void commit() override {
    ::close(fd_);
    fd_ = -1;
  }
  std::unique_ptr<socket_backend> rollback(const asio::any_io_executor& ex, error_code& ec) override {
    // Only on rollback: the common path needs no getsockname.
    auto b = make_native_socket(kind_, ex, protocol_of(fd_), static_cast<std::uintptr_t>(fd_), ec);
    if (b) fd_ = -1;  // otherwise the destructor closes it
    return b;
  }
  std::optional<transfer_strategy> fallback(const error_code& verdict) override {
    // The target could not pull the descriptor (EPERM: ptrace policy, another uid...). The push
    // path needs no permission on the source: worth one more attempt when the caller left the
    // choice to us.
    if (verdict != errc::move_rejected || how_ != transfer_strategy::automatic || pusher_)
      return std::nullopt;
    counters().fallbacks++;
    return transfer_strategy::scm_rights;
  }
  void async_publish(const asio::any_io_executor& ex, std::chrono::steady_clock::time_point deadline,
                     asio::any_completion_handler<void(error_code)> h) override {
    if (!pusher_) return pending_export::async_publish(ex, deadline, std::move(h));
    pusher_->async_push(ex, fd_, id_, slot_, deadline, std::move(h));
  }

  bool publishes() const noexcept override { return pusher_ != nullptr; }

  void push_to(std::shared_ptr<push_sender> pusher, const ticket_id& id, std::uint32_t slot) {
    pusher_ = std::move(pusher);
    id_ = id;
    slot_ = slot;
  }
  void holds_ptracer() { ptracer_ = true; }

 private:
  int fd_;
  socket_kind kind_;
  transfer_strategy how_;
  std::shared_ptr<push_sender> pusher_;  // set for a push
  ticket_id id_{};
  std::uint32_t slot_ = 0;
  bool ptracer_ = false;
};

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

// Pulls the descriptor named by a pidfd_getfd ticket and checks that it is the socket the ticket
// describes: a connected or listening TCP socket, or a UDP socket.
int import_fd(const ticket& t, fd_endpoint& ep, socket_kind kind, tcp& protocol, error_code& ec) {
  ec.clear();
  long fd = -1;
  fd_payload p{};
  if (t.method == transfer_method::scm_rights) {
    fd = ep.take_pushed(t.id, ec);
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
  bool fits = kind == socket_kind::datagram
                  ? type == SOCK_DGRAM
                  : type == SOCK_STREAM && (listening != 0) == (kind == socket_kind::listener);
  // An IP socket: a Unix-domain stream socket is no TCP connection (nor a Unix datagram socket a
  // UDP one). Its family also tells the reactor which protocol the socket is.
  if (fits && S_ISSOCK(st.st_mode)) {
    const auto ip = ip_protocol_of(static_cast<int>(fd));
    fits = ip.has_value();
    if (ip) protocol = *ip;
  }
  if (!S_ISSOCK(st.st_mode) || !fits) {
    // An inherited number that is not the promised socket may be one of our own descriptors.
    if (t.method != transfer_method::inherit) ::close(static_cast<int>(fd));
    ec = errc::not_a_socket;
    return -1;
  }
  // Only now that it is known to be the promised socket: do not pass it on to our own children.
  if (t.method == transfer_method::inherit) ::fcntl(static_cast<int>(fd), F_SETFD, FD_CLOEXEC);
  return static_cast<int>(fd);
}

}  // namespace

std::size_t largest_transfer_payload() noexcept { return sizeof(fd_payload); }

bool can_accept_detached() noexcept { return true; }

std::uintptr_t accept_detached(tcp::acceptor& a, error_code& ec) {
  ec.clear();
  // The reactor makes a listener non-blocking at its first asynchronous operation, which may not
  // have happened yet: accept4 must never wait.
  if (!a.native_non_blocking()) {
    a.native_non_blocking(true, ec);
    if (ec) return ~std::uintptr_t{0};
  }
  for (;;) {
    // Close-on-exec, so that a child spawned meanwhile cannot keep the connection alive.
    const int fd = ::accept4(a.native_handle(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) return static_cast<std::uintptr_t>(fd);
    // A connection that failed in the backlog (accept(2) passes its pending network error on):
    // the next one may be fine (Asio retries the first two; accept(2) advises the rest for TCP).
    switch (errno) {
      case EINTR: case ECONNABORTED: case EPROTO: case ENETDOWN: case ENOPROTOOPT: case EHOSTDOWN:
      case ENONET: case EHOSTUNREACH: case EOPNOTSUPP: case ENETUNREACH:
        continue;
      default:
        break;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) ec = asio::error::would_block;
    else ec = {errno, boost::system::system_category()};
    return ~std::uintptr_t{0};
  }
}

// Detaching the descriptor deregisters it from epoll, so the source gets no further event for it.
// Nothing here is visible to the target yet: a push is sent by async_publish, and a pull needs
// the ticket.
std::unique_ptr<pending_export> export_socket(std::unique_ptr<socket_backend>& b, transfer_endpoint& ep,
                                              std::uint32_t target_pid, transfer_strategy how, ticket& t,
                                              error_code& ec) {
  ec.clear();
  if (how == transfer_strategy::wsa_duplicate || how == transfer_strategy::duplicate_handle) {
    ec = errc::strategy_unavailable;
    return nullptr;
  }
  const socket_kind kind = b->kind();
  if (how == transfer_strategy::inherit) {
    // The child inherited the descriptor under the same number when it was spawned.
    const int fd = static_cast<int>(b->release(ec));
    if (ec) return nullptr;
    b.reset();
    const std::uint64_t v = static_cast<std::uint64_t>(fd);
    t.method = transfer_method::inherit;
    t.payload.resize(8);
    std::memcpy(t.payload.data(), &v, 8);
    return std::make_unique<fd_export>(fd, kind, how);
  }
  bool push = how == transfer_strategy::scm_rights;
  if (!push && !pidfd_getfd_supported()) {
    // ENOSYS: an old kernel. The push path works everywhere.
    push = true;
    counters().fallbacks++;
  }
  bool ptracer = false;
  if (!push && yama_restricts_ptrace()) {
    ptracer = grant_ptracer(target_pid);
    if (!ptracer) {
      push = true;  // the one tracer slot serves moves to another target right now
      counters().fallbacks++;
    }
  }
  const int fd = static_cast<int>(b->release(ec));
  if (ec) {
    if (ptracer) release_ptracer();
    return nullptr;
  }
  b.reset();
  auto p = std::make_unique<fd_export>(fd, kind, how);
  if (ptracer) p->holds_ptracer();
  if (push) {
    t.method = transfer_method::scm_rights;
    t.payload.clear();
    p->push_to(static_cast<fd_endpoint&>(ep).sender(), t.id, t.ack_slot);
    return p;
  }
  struct stat st {};
  ::fstat(fd, &st);
  fd_payload pl{fd, 0, static_cast<std::uint64_t>(st.st_ino), static_cast<std::uint64_t>(st.st_dev)};
  t.method = transfer_method::pidfd_getfd;
  t.payload.resize(sizeof pl);
  std::memcpy(t.payload.data(), &pl, sizeof pl);
  return p;
}

std::unique_ptr<socket_backend> import_socket(socket_kind kind, transfer_endpoint& ep, const asio::any_io_executor& ex,
                                              const ticket& t, error_code& ec) {
  tcp protocol = tcp::v4();
  const int fd = import_fd(t, static_cast<fd_endpoint&>(ep), kind, protocol, ec);
  if (fd < 0) return nullptr;
  auto b = make_native_socket(kind, ex, protocol, static_cast<std::uintptr_t>(fd), ec);
  if (!b) ::close(fd);
  return b;
}

std::unique_ptr<socket_backend> attach_socket(socket_kind kind, const asio::any_io_executor& ex, std::uintptr_t h,
                                              error_code& ec) {
  const int fd = static_cast<int>(h);
  auto b = make_native_socket(kind, ex, protocol_of(fd), h, ec);
  if (!b) ::close(fd);
  return b;
}

std::uintptr_t duplicate_socket_handle(std::uintptr_t h, error_code& ec) {
  ec.clear();
  const int fd = ::fcntl(static_cast<int>(h), F_DUPFD_CLOEXEC, 3);
  if (fd < 0) ec = {errno, boost::system::system_category()};
  return static_cast<std::uintptr_t>(fd);
}

void close_socket_handle(std::uintptr_t h) noexcept { ::close(static_cast<int>(h)); }

}  // namespace baton::detail
