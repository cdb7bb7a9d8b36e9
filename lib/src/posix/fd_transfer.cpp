// Linux transfer of sockets: the target pulls the descriptor with pidfd_getfd (default), or the
// source pushes it with SCM_RIGHTS over the channel's Unix socket.
#include "detail/platform.hpp"
#include "detail/stream.hpp"
#include "detail/endian.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/local/datagram_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

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
// with SO_PASSCRED on. A source sends one datagram per move: the ticket id and its ack slot, the
// descriptor as SCM_RIGHTS, and (added by the kernel) its credentials. It sends after claiming the
// ack slot and before writing the ticket, so the datagram is queued by the time the receiver reads
// the ticket. Datagrams from another uid are refused and their descriptors closed. A datagram
// whose ticket will never come (the sender gave up or died) is closed by the receiver's
// collect_orphan_transfers, so that no copy of a rolled-back socket stays with the receiver.

std::string sock_path(const std::string& channel_name) { return "/dev/shm/baton." + channel_name + ".sock"; }

constexpr std::size_t push_bytes = 20;  // ticket id (16) + ack slot (u32, little-endian)

struct early_push {
  int fd = -1;
  std::uint32_t slot = 0;
  std::uint32_t sender = 0;
  bool sender_dead = false;  // seen dead by an earlier collection
};

struct endpoint {
  int fd = -1;
  std::map<ticket_id, early_push> early;  // descriptors whose ticket has not been read yet
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

// Opens a datagram socket connected to the channel's endpoint, refusing one that is not a socket
// of our own user (only such a socket may receive our connections).
int connect_push_socket(const std::string& channel_name, error_code& ec) {
  ec.clear();
  const auto path = sock_path(channel_name);
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode) || st.st_uid != ::geteuid()) {
    ec = errc::not_owner;
    return -1;
  }
  sockaddr_un sa;
  if (!fill_sockaddr(path, sa)) {
    ec = errc::invalid_name;
    return -1;
  }
  int s = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0) {
    ec = sys_error(errno);
    return -1;
  }
  if (::connect(s, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    ec = sys_error(errno);
    ::close(s);
    return -1;
  }
  return s;
}

// One attempt to send the datagram; false with ec clear if the target's queue is full.
bool try_send_push(int s, int fd, const ticket_id& id, std::uint32_t slot, error_code& ec) {
  ec.clear();
  std::byte data[push_bytes];
  std::memcpy(data, id.bytes.data(), 16);
  store_le<std::uint32_t>(data + 16, slot);
  iovec iov{data, sizeof data};
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof ctrl;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  for (;;) {
    if (::sendmsg(s, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0) return true;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
    ec = sys_error(errno);
    return true;
  }
}

// Sends the datagram; while the target's queue is full (a stalled receiver: it holds only
// net.unix.max_dgram_qlen datagrams) waits for room through the reactor, never on the thread,
// until the deadline, then fails with channel_full.
struct push_op : std::enable_shared_from_this<push_op> {
  asio::local::datagram_protocol::socket sock;
  asio::steady_timer timer;
  int fd;
  ticket_id id;
  std::uint32_t slot;
  asio::any_completion_handler<void(error_code)> handler;
  bool done = false;

  push_op(const asio::any_io_executor& ex, int s, int f, const ticket_id& i, std::uint32_t sl,
          asio::any_completion_handler<void(error_code)> h)
      : sock(ex), timer(ex), fd(f), id(i), slot(sl), handler(std::move(h)) {
    error_code ignored;
    sock.assign(asio::local::datagram_protocol(), s, ignored);
  }

  void finish(error_code ec) {
    if (done) return;
    done = true;
    error_code ignored;
    timer.cancel();
    sock.cancel(ignored);
    sock.close(ignored);
    std::move(handler)(ec);
  }

  void start(std::chrono::steady_clock::time_point deadline) {
    timer.expires_at(deadline);
    timer.async_wait([self = shared_from_this()](error_code ec) {
      if (!ec) self->finish(errc::channel_full);
    });
    wait();
  }

  void wait() {
    sock.async_wait(asio::socket_base::wait_write, [self = shared_from_this()](error_code ec) {
      if (self->done) return;
      if (ec) return self->finish(ec);
      error_code sec;
      if (try_send_push(self->sock.native_handle(), self->fd, self->id, self->slot, sec)) return self->finish(sec);
      self->wait();
    });
  }
};

// Takes the descriptor pushed for ticket `id` off the channel's socket (drains the datagrams
// queued before it into `early`).
int pull_pushed_fd(const std::string& channel_name, const ticket_id& id, error_code& ec);

void drain_pushes(endpoint& ep) {
  for (;;) {
    std::byte data[push_bytes + 1];
    iovec iov{data, sizeof data};
    alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * 4) + CMSG_SPACE(sizeof(ucred))];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl;
    msg.msg_controllen = sizeof ctrl;
    ssize_t n = ::recvmsg(ep.fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // EAGAIN: drained
    }
    int got = -1;
    bool trusted = false;
    std::uint32_t sender = 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET) continue;
      if (c->cmsg_type == SCM_CREDENTIALS) {
        ucred cr;
        std::memcpy(&cr, CMSG_DATA(c), sizeof cr);
        trusted = cr.uid == ::geteuid();
        sender = static_cast<std::uint32_t>(cr.pid);
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
    if (!trusted || n != static_cast<ssize_t>(push_bytes) || (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC))) {
      ::close(got);  // another user's push, or a malformed one
      counters().refused_pushes++;
      continue;
    }
    ticket_id mid;
    std::memcpy(mid.bytes.data(), data, 16);
    early_push e{got, load_le<std::uint32_t>(data + 16), sender, false};
    // Bounded: beyond this many, the oldest-numbered is dropped (collect_orphan_transfers closes
    // unwanted ones long before a live receiver gets here).
    if (ep.early.size() >= 4096) {
      ::close(ep.early.begin()->second.fd);
      ep.early.erase(ep.early.begin());
    }
    auto [it, fresh] = ep.early.emplace(mid, e);
    if (!fresh) {
      ::close(got);  // a second datagram for one ticket: keep the first
      counters().refused_pushes++;
    }
  }
}

int pull_pushed_fd(const std::string& channel_name, const ticket_id& id, error_code& ec) {
  ec.clear();
  std::lock_guard lock(endpoints_mutex);
  auto it = endpoints().find(channel_name);
  if (it == endpoints().end()) {
    ec = errc::strategy_unavailable;
    return -1;
  }
  auto& ep = it->second;
  auto e = ep.early.find(id);
  if (e == ep.early.end()) {
    drain_pushes(ep);
    e = ep.early.find(id);
  }
  if (e == ep.early.end()) {
    ec = errc::handle_mismatch;
    return -1;
  }
  const int fd = e->second.fd;
  ep.early.erase(e);
  return fd;
}

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
    if (ptracer_) release_ptracer();
  }
  void commit() override {
    ::close(fd_);
    fd_ = -1;
  }
  std::unique_ptr<stream_backend> rollback_stream(const asio::any_io_executor& ex, error_code& ec) override {
    tcp::socket s(ex);
    s.assign(protocol_of(fd_), fd_, ec);  // only on rollback: the common path needs no getsockname
    if (ec) return nullptr;  // the destructor closes fd_
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
  void async_publish(const asio::any_io_executor& ex, std::chrono::steady_clock::time_point deadline,
                     asio::any_completion_handler<void(error_code)> h) override {
    if (push_to_.empty()) return pending_export::async_publish(ex, deadline, std::move(h));
    error_code ec;
    const int s = connect_push_socket(push_to_, ec);
    if (s >= 0 && try_send_push(s, fd_, id_, slot_, ec)) {
      ::close(s);
      return asio::post(ex, asio::append(std::move(h), ec));
    }
    if (s < 0) return asio::post(ex, asio::append(std::move(h), ec));
    std::make_shared<push_op>(ex, s, fd_, id_, slot_, std::move(h))->start(deadline);
  }

  void push_to(const std::string& channel_name, const ticket_id& id, std::uint32_t slot) {
    push_to_ = channel_name;
    id_ = id;
    slot_ = slot;
  }
  void holds_ptracer() { ptracer_ = true; }

 private:
  int fd_;
  std::string push_to_;
  ticket_id id_{};
  std::uint32_t slot_ = 0;
  bool ptracer_ = false;
};

// Common to connections and listeners: `release` detaches the descriptor from the reactor (Asio
// deregisters it from epoll, so the source gets no further event for it). Nothing here is
// visible to the target yet: a push is sent by async_publish, and a pull needs the ticket.
template <class Release>
std::unique_ptr<pending_export> export_fd(Release&& release, std::uint32_t target_pid, transfer_strategy how,
                                          const std::string& channel_name, ticket& t, error_code& ec) {
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
  bool ptracer = false;
  if (!push && yama_restricts_ptrace()) {
    ptracer = grant_ptracer(target_pid);
    if (!ptracer) {
      push = true;  // the one tracer slot serves moves to another target right now
      counters().fallbacks++;
    }
  }
  int fd = release(ec);
  if (ec) {
    if (ptracer) release_ptracer();
    return nullptr;
  }
  auto p = std::make_unique<fd_export>(fd);
  if (ptracer) p->holds_ptracer();
  if (push) {
    t.method = transfer_method::scm_rights;
    t.payload.clear();
    p->push_to(channel_name, t.id, t.ack_slot);
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
  // Only now that it is known to be the promised socket: do not pass it on to our own children.
  if (t.method == transfer_method::inherit) ::fcntl(static_cast<int>(fd), F_SETFD, FD_CLOEXEC);
  return static_cast<int>(fd);
}

}  // namespace

void open_transfer_endpoint(const std::string& channel_name, std::uint32_t, bool, error_code& ec) {
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
      for (auto& [id, e] : it->second.early) ::close(e.fd);
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

std::size_t largest_transfer_payload() noexcept { return sizeof(fd_payload); }

void collect_orphan_transfers(const std::string& channel_name, const transfer_wanted& wanted) noexcept {
  std::lock_guard lock(endpoints_mutex);
  auto it = endpoints().find(channel_name);
  if (it == endpoints().end()) return;
  auto& ep = it->second;
  drain_pushes(ep);
  for (auto e = ep.early.begin(); e != ep.early.end();) {
    // A sender seen dead by the previous collection died before the ring was last seen empty:
    // any ticket it committed has been read since, so its datagram will never be claimed.
    if (!wanted(e->second.slot, e->first) || e->second.sender_dead) {
      ::close(e->second.fd);
      counters().orphans_closed++;
      e = ep.early.erase(e);
      continue;
    }
    e->second.sender_dead = !process_alive(e->second.sender);
    ++e;
  }
}

std::unique_ptr<pending_export> export_stream(std::unique_ptr<stream_backend>& s, std::uint32_t target_pid,
                                              transfer_strategy how, const std::string& channel_name, ticket& t,
                                              error_code& ec) {
  auto* sock = s->socket();
  if (!sock) {
    ec = errc::strategy_unavailable;
    return nullptr;
  }
  auto p = export_fd([&](error_code& e) { return sock->release(e); }, target_pid, how, channel_name, t, ec);
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
  auto p = export_fd([&](error_code& e) { return a->release(e); }, target_pid, how, channel_name, t, ec);
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
