// The SCM_RIGHTS push (Linux). The receiver of a channel binds a Unix datagram socket at
// /dev/shm/baton.NAME.sock (mode 0600) with SO_PASSCRED on. A source sends, per datagram, up to
// 253 descriptors as SCM_RIGHTS and for each the ticket id and its ack slot (the pushes of one
// turn of its event loop travel together); the kernel adds its credentials. It sends after
// claiming the ack slots and before writing the tickets, so the datagram is queued by the time
// the receiver reads a ticket. Datagrams from another uid, or whose records do not match their
// descriptors one for one, are refused and their descriptors closed. A descriptor whose ticket
// will never come (the sender gave up or died) is closed by the receiver's orphan collection, so
// that no copy of a rolled-back socket stays with the receiver.
#include "posix/scm_rights_push.hpp"

#include "detail/endian.hpp"
#include "detail/stream.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/local/datagram_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <cerrno>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <vector>

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

// A push waiting to be sent: its descriptor (the caller's), ticket and completion.
struct push_entry {
  int fd;
  ticket_id id;
  std::uint32_t slot;
  std::chrono::steady_clock::time_point deadline;
  asio::any_io_executor ex;
  asio::any_completion_handler<void(error_code)> h;

  void complete(error_code ec) { asio::dispatch(ex, asio::append(std::move(h), ec)); }
};

// Sends entries [e, e + n) (n <= max_push_fds) as one datagram: n records of ticket id and ack
// slot, and the n descriptors in the same order. -1 with errno set on failure.
long send_group(int s, const push_entry* e, std::size_t n) {
  std::byte data[push_bytes * max_push_fds];
  int fds[max_push_fds];
  for (std::size_t i = 0; i < n; ++i) {
    std::memcpy(data + i * push_bytes, e[i].id.bytes.data(), 16);
    store_le<std::uint32_t>(data + i * push_bytes + 16, e[i].slot);
    fds[i] = e[i].fd;
  }
  for (;;) {
    const long r = send_with_fds(s, fds, n, data, n * push_bytes, nullptr, 0, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r >= 0 || errno != EINTR) return r;
  }
}

void count_group(std::size_t n) {
  counters().push_datagrams++;
  counters().pushed += n;
}

// Pushes that found the target's queue full: they wait for room on a socket of their own (its
// writability is the peer's queue having room), in order, until the earliest deadline.
struct push_wait : std::enable_shared_from_this<push_wait> {
  asio::local::datagram_protocol::socket sock;
  asio::steady_timer timer;
  std::vector<push_entry> entries;
  std::size_t next = 0;
  bool done = false;

  push_wait(const asio::any_io_executor& ex, int s, std::vector<push_entry> es)
      : sock(ex), timer(ex), entries(std::move(es)) {
    error_code ignored;
    sock.assign(asio::local::datagram_protocol(), s, ignored);
  }

  void finish(error_code ec) {
    if (done) return;
    done = true;
    error_code ignored;
    timer.cancel();
    sock.close(ignored);
    for (; next < entries.size(); ++next) entries[next].complete(ec);
  }

  void start() {
    auto deadline = entries.front().deadline;
    for (auto& e : entries) deadline = std::min(deadline, e.deadline);
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
      while (self->next < self->entries.size()) {
        const std::size_t n = std::min(max_push_fds, self->entries.size() - self->next);
        if (send_group(self->sock.native_handle(), self->entries.data() + self->next, n) < 0) {
          if (errno == EAGAIN || errno == EWOULDBLOCK) return self->wait();
          return self->finish(sys_error(errno));
        }
        count_group(n);
        for (std::size_t i = 0; i < n; ++i) self->entries[self->next++].complete({});
      }
      self->finish({});
    });
  }
};

class push_sender_impl final : public push_sender, public std::enable_shared_from_this<push_sender_impl> {
 public:
  explicit push_sender_impl(std::string path) : path_(std::move(path)) {}
  ~push_sender_impl() override {
    if (sock_ >= 0) ::close(sock_);
  }

  void async_push(const asio::any_io_executor& ex, int fd, const ticket_id& id, std::uint32_t slot,
                  std::chrono::steady_clock::time_point deadline,
                  asio::any_completion_handler<void(error_code)> h) override {
    std::lock_guard lock(mutex_);
    pending_.push_back({fd, id, slot, deadline, ex, std::move(h)});
    if (flush_posted_) return;
    flush_posted_ = true;
    // The turn's other pushes join before this runs; it completes every one of them.
    asio::post(ex, [self = shared_from_this(), ex] { self->flush(ex); });
  }

 private:
  void flush(const asio::any_io_executor& ex) {
    std::unique_lock lock(mutex_);
    std::vector<push_entry> batch;
    batch.swap(pending_);
    flush_posted_ = false;
    std::size_t i = 0;
    error_code ec;
    std::vector<std::pair<std::size_t, error_code>> results;  // groups sent or failed: [.., first)
    while (i < batch.size() && !ec) {
      const std::size_t n = std::min(max_push_fds, batch.size() - i);
      if (!send_now(batch.data() + i, n, ec)) break;  // the target's queue is full
      results.emplace_back(i + n, ec);
      i += n;
    }
    int wait_sock = -1;
    if (i < batch.size() && !ec) wait_sock = connect_push_socket(path_, ec);
    lock.unlock();
    std::size_t k = 0;
    for (auto& [end, gec] : results)
      for (; k < end; ++k) batch[k].complete(gec);
    if (i == batch.size()) return;
    std::vector<push_entry> rest(std::make_move_iterator(batch.begin() + static_cast<std::ptrdiff_t>(i)),
                                 std::make_move_iterator(batch.end()));
    if (ec || wait_sock < 0) {
      for (auto& e : rest) e.complete(ec ? ec : make_error_code(errc::channel_full));
      return;
    }
    std::make_shared<push_wait>(ex, wait_sock, std::move(rest))->start();
  }

  // One attempt on the kept socket: true when sent or failed (ec), false if the queue is full.
  // A socket whose receiver closed its end (ECONNREFUSED) is replaced once: the channel's endpoint
  // is the same path, and connecting again checks its owner again.
  bool send_now(const push_entry* e, std::size_t n, error_code& ec) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (sock_ < 0 && (sock_ = connect_push_socket(path_, ec)) < 0) return true;
      if (send_group(sock_, e, n) >= 0) {
        count_group(n);
        return true;
      }
      const int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) return false;
      ::close(sock_);
      sock_ = -1;
      ec = sys_error(err);
      if (err != ECONNREFUSED && err != ENOTCONN) return true;
    }
    return true;
  }

  std::string path_;
  std::mutex mutex_;
  int sock_ = -1;
  bool flush_posted_ = false;
  std::vector<push_entry> pending_;
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

  std::shared_ptr<push_sender> sender() override {
    std::lock_guard lock(mutex_);
    if (!sender_) sender_ = std::make_shared<push_sender_impl>(path_);
    return sender_;
  }

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
      std::byte data[push_bytes * max_push_fds + 1];
      iovec iov{data, sizeof data};
      alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * max_push_fds) + CMSG_SPACE(sizeof(ucred))];
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
      int got[max_push_fds];
      std::size_t k = 0;
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
          const std::size_t m = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
          for (std::size_t i = 0; i < m; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (k < max_push_fds) got[k++] = fd;
            else ::close(fd);
          }
        }
      }
      if (k == 0) continue;
      // One record (ticket id, ack slot) per descriptor, in the same order.
      if (!trusted || static_cast<std::size_t>(n) != k * push_bytes || (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC))) {
        for (std::size_t i = 0; i < k; ++i) ::close(got[i]);  // another user's push, or a malformed one
        counters().refused_pushes++;
        continue;
      }
      for (std::size_t i = 0; i < k; ++i) {
        ticket_id mid;
        std::memcpy(mid.bytes.data(), data + i * push_bytes, 16);
        early_push e{got[i], load_le<std::uint32_t>(data + i * push_bytes + 16), sender, false};
        // Bounded: beyond this many, the oldest-numbered is dropped (orphan collection closes
        // unwanted ones long before a live receiver gets here).
        if (early_.size() >= 4096) {
          ::close(early_.begin()->second.fd);
          early_.erase(early_.begin());
        }
        auto [it, fresh] = early_.emplace(mid, e);
        if (!fresh) {
          ::close(got[i]);  // a second push for one ticket: keep the first
          counters().refused_pushes++;
        }
      }
    }
  }

  std::string path_;
  int fd_;
  std::mutex mutex_;
  std::map<ticket_id, early_push> early_;
  std::shared_ptr<push_sender_impl> sender_;
};

}  // namespace

long send_with_fds(int s, const int* fds, std::size_t nfds, const void* data, std::size_t n, const void* dest,
                   std::size_t dest_len, int flags) noexcept {
  if (nfds == 0 || nfds > max_push_fds) {
    errno = EINVAL;
    return -1;
  }
  iovec iov{const_cast<void*>(data), n};
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * max_push_fds)] = {};
  msghdr msg{};
  msg.msg_name = const_cast<void*>(dest);
  msg.msg_namelen = static_cast<socklen_t>(dest_len);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctrl;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
  std::memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  return ::sendmsg(s, &msg, flags);
}

std::string push_socket_path(const std::string& channel_name) { return "/dev/shm/baton." + channel_name + ".sock"; }

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
