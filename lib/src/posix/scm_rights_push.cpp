// The SCM_RIGHTS push (Linux). The receiver of a channel binds a Unix datagram socket at
// /dev/shm/baton.NAME.sock (mode 0600) with SO_PASSCRED on. A source sends one datagram per move:
// the ticket id and its ack slot, the descriptor as SCM_RIGHTS, and (added by the kernel) its
// credentials. It sends after claiming the ack slot and before writing the ticket, so the
// datagram is queued by the time the receiver reads the ticket. Datagrams from another uid are
// refused and their descriptors closed. A datagram whose ticket will never come (the sender gave
// up or died) is closed by the receiver's orphan collection, so that no copy of a rolled-back
// socket stays with the receiver.
#include "posix/scm_rights_push.hpp"

#include "detail/endian.hpp"
#include "detail/stream.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/local/datagram_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace baton::detail {

namespace asio = boost::asio;

namespace {


constexpr std::size_t push_bytes = 20;  // ticket id (16) + ack slot (u32, little-endian)

bool fill_sockaddr(const std::string& path, sockaddr_un& sa) {
  sa = {};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) return false;
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  return true;
}

// Opens a datagram socket connected to the endpoint at `path`, refusing one that is not a socket
// of our own user (only such a socket may receive our connections).
int connect_push_socket(const std::string& path, error_code& ec) {
  ec.clear();
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
  for (;;) {
    if (send_with_fd(s, fd, data, sizeof data, nullptr, 0, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0) return true;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
    ec = sys_error(errno);
    return true;
  }
}

// Sends the datagram, waiting for room in the target's queue (see async_push_fd).
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

struct early_push {
  int fd = -1;
  std::uint32_t slot = 0;
  std::uint32_t sender = 0;
  bool sender_dead = false;  // seen dead by an earlier collection
};

// A sending side knows the path only; a receiving side also holds the bound socket and the
// descriptors whose ticket has not been read yet.
class push_endpoint final : public fd_endpoint {
 public:
  explicit push_endpoint(std::string path, int fd = -1) : path_(std::move(path)), fd_(fd) {}
  ~push_endpoint() override {
    if (fd_ < 0) return;
    for (auto& [id, e] : early_) ::close(e.fd);
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  const std::string& path() const noexcept override { return path_; }

  int take_pushed(const ticket_id& id, error_code& ec) override {
    ec.clear();
    if (fd_ < 0) {
      ec = errc::strategy_unavailable;
      return -1;
    }
    std::lock_guard lock(mutex_);
    auto e = early_.find(id);
    if (e == early_.end()) {
      drain();
      e = early_.find(id);
    }
    if (e == early_.end()) {
      ec = errc::handle_mismatch;
      return -1;
    }
    const int fd = e->second.fd;
    early_.erase(e);
    return fd;
  }

  void collect_orphans(const transfer_wanted& wanted) noexcept override {
    if (fd_ < 0) return;
    std::lock_guard lock(mutex_);
    drain();
    for (auto e = early_.begin(); e != early_.end();) {
      // A sender seen dead by the previous collection died before the ring was last seen empty:
      // any ticket it committed has been read since, so its datagram will never be claimed.
      if (!wanted(e->second.slot, e->first) || e->second.sender_dead) {
        ::close(e->second.fd);
        counters().orphans_closed++;
        e = early_.erase(e);
        continue;
      }
      e->second.sender_dead = !process_alive(e->second.sender);
      ++e;
    }
  }

 private:
  // Moves the queued datagrams' descriptors into early_.
  void drain() {
    for (;;) {
      std::byte data[push_bytes + 1];
      iovec iov{data, sizeof data};
      alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * 4) + CMSG_SPACE(sizeof(ucred))];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = ctrl;
      msg.msg_controllen = sizeof ctrl;
      ssize_t n = ::recvmsg(fd_, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
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
      // Bounded: beyond this many, the oldest-numbered is dropped (orphan collection closes
      // unwanted ones long before a live receiver gets here).
      if (early_.size() >= 4096) {
        ::close(early_.begin()->second.fd);
        early_.erase(early_.begin());
      }
      auto [it, fresh] = early_.emplace(mid, e);
      if (!fresh) {
        ::close(got);  // a second datagram for one ticket: keep the first
        counters().refused_pushes++;
      }
    }
  }

  std::string path_;
  int fd_;
  std::mutex mutex_;
  std::map<ticket_id, early_push> early_;
};

}  // namespace

long send_with_fd(int s, int fd, const void* data, std::size_t n, const void* dest, std::size_t dest_len,
                  int flags) noexcept {
  iovec iov{const_cast<void*>(data), n};
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_name = const_cast<void*>(dest);
  msg.msg_namelen = static_cast<socklen_t>(dest_len);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof ctrl;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  return ::sendmsg(s, &msg, flags);
}

std::string push_socket_path(const std::string& channel_name) { return "/dev/shm/baton." + channel_name + ".sock"; }

void async_push_fd(const asio::any_io_executor& ex, const std::string& path, int fd, const ticket_id& id,
                   std::uint32_t slot, std::chrono::steady_clock::time_point deadline,
                   asio::any_completion_handler<void(error_code)> h) {
  error_code ec;
  const int s = connect_push_socket(path, ec);
  if (s >= 0 && try_send_push(s, fd, id, slot, ec)) {
    ::close(s);
    return asio::post(ex, asio::append(std::move(h), ec));
  }
  if (s < 0) return asio::post(ex, asio::append(std::move(h), ec));
  std::make_shared<push_op>(ex, s, fd, id, slot, std::move(h))->start(deadline);
}

std::unique_ptr<transfer_endpoint> open_transfer_endpoint(const std::string& channel_name, std::uint32_t, bool,
                                                          bool receiver, error_code& ec) {
  ec.clear();
  const auto path = push_socket_path(channel_name);
  if (!receiver) return std::make_unique<push_endpoint>(path);
  sockaddr_un sa;
  if (!fill_sockaddr(path, sa)) {
    ec = errc::invalid_name;
    return nullptr;
  }
  int s = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0) {
    ec = sys_error(errno);
    return nullptr;
  }
  int one = 1;
  ::setsockopt(s, SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
  // bind() fails with EADDRINUSE if the path exists: a squatter's socket is never taken over.
  // fchmod on a socket does not reach the file bind creates, so the mode is set right after
  // bind (datagrams from other users are refused by their credentials meanwhile).
  if (::bind(s, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    ec = errno == EADDRINUSE ? make_error_code(errc::name_in_use) : sys_error(errno);
    ::close(s);
    return nullptr;
  }
  ::chmod(path.c_str(), 0600);
  return std::make_unique<push_endpoint>(path, s);
}

void remove_transfer_endpoint(const std::string& channel_name) noexcept {
  // Not ours (a stale channel of a dead receiver): remove the name only if it is a socket of ours.
  struct stat st {};
  const auto path = push_socket_path(channel_name);
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_uid == ::geteuid()) ::unlink(path.c_str());
}

}  // namespace baton::detail
