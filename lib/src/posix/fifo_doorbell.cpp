// POSIX doorbell: a named FIFO in /dev/shm (mode 0600). The receiver holds it open read-write, so
// it never sees end-of-file, and awaits readability through the reactor; senders write one byte.
// A full FIFO means a wake-up is already pending, so a failed write is harmless.
// The FIFO is made and opened by its receiver under a private name, then linked into place, so a
// FIFO under a channel's name always had a reader: one that has none (ENXIO) was left by a dead
// receiver, and a sender knows at once (channel_owner_dead) instead of waiting for it to appear.
// Once it knows the receiver is there, a sender holds the FIFO read-write too: a FIFO with a reader
// never answers a write with SIGPIPE, so ringing is one write() and not four system calls (block
// SIGPIPE, look for a pending one, write, restore), which was a quarter of a balancer dispatcher's
// system calls per connection. A receiver that dies is noticed through its pidfd, as before (and a
// FIFO a dead receiver left may now still have readers, its senders: channel::open asks the
// owner's pidfd before it opens the doorbell, so ENXIO is only the quicker of two answers).
#include "detail/doorbell_impl.hpp"

#include <boost/asio/posix/stream_descriptor.hpp>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <random>
#include <pthread.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace baton::detail {

namespace asio = boost::asio;

namespace {

struct fifo_bell final : doorbell::impl {
  std::string path;
  int write_fd = -1;                                  // sender side
  bool reads_too = false;                             // write_fd is read-write: no SIGPIPE
  std::unique_ptr<asio::posix::stream_descriptor> rx;  // receiver side
  fifo_bell(std::string p, int fd, std::unique_ptr<asio::posix::stream_descriptor> r)
      : path(std::move(p)), write_fd(fd), rx(std::move(r)) {}
  ~fifo_bell() override {
    if (write_fd >= 0) ::close(write_fd);
  }
  void ring() noexcept override;
  void async_wait(doorbell::wait_handler handler) override;
  void cancel() noexcept override {
    error_code ignored;
    if (rx) rx->cancel(ignored);
  }
};

std::string fifo_path(const std::string& os_name) { return "/dev/shm" + os_name; }
}  // namespace

doorbell doorbell::create(const asio::any_io_executor& ex, const std::string& os_name, error_code& ec) {
  ec.clear();
  doorbell d;
  auto path = fifo_path(os_name);
  std::random_device rd;
  char tmp[64];
  std::snprintf(tmp, sizeof tmp, "/baton-creating.%u.%08x%08x", static_cast<unsigned>(::getpid()), rd(), rd());
  const auto tmp_path = fifo_path(tmp);
  if (::mkfifo(tmp_path.c_str(), 0600) != 0) {
    ec = {errno, boost::system::system_category()};
    return d;
  }
  ::chmod(tmp_path.c_str(), 0600);  // mkfifo applies the umask; make the mode exact
  int fd = ::open(tmp_path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
  // link() fails if the name exists: a name is never taken over.
  const int rc = fd < 0 ? -1 : ::link(tmp_path.c_str(), path.c_str());
  const int err = errno;
  ::unlink(tmp_path.c_str());
  if (rc != 0) {
    if (fd >= 0) ::close(fd);
    ec = fd >= 0 && err == EEXIST ? make_error_code(errc::name_in_use) : error_code(err, boost::system::system_category());
    return d;
  }
  d.impl_ = std::make_unique<fifo_bell>(path, -1, std::make_unique<asio::posix::stream_descriptor>(ex, fd));
  return d;
}

doorbell doorbell::open(const std::string& os_name, error_code& ec) {
  ec.clear();
  doorbell d;
  auto path = fifo_path(os_name);
  int fd = ::open(path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    ec = errno == ENOENT ? make_error_code(errc::channel_not_found)
         : errno == ENXIO ? make_error_code(errc::channel_owner_dead)  // its receiver is gone
                          : error_code(errno, boost::system::system_category());
    return d;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode) || st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
    ::close(fd);
    ec = errc::not_owner;
    return d;
  }
  // The same FIFO again, read-write (through /proc, so not a name that could be swapped meanwhile).
  char self_path[48];
  std::snprintf(self_path, sizeof self_path, "/proc/self/fd/%d", fd);
  const int rw = ::open(self_path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
  struct stat rw_st {};
  const bool same = rw >= 0 && ::fstat(rw, &rw_st) == 0 && rw_st.st_ino == st.st_ino && rw_st.st_dev == st.st_dev;
  if (same) {
    ::close(fd);
    fd = rw;
  } else if (rw >= 0) {
    ::close(rw);
  }
  auto bell = std::make_unique<fifo_bell>(path, fd, nullptr);
  bell->reads_too = same;
  d.impl_ = std::move(bell);
  return d;
}

void doorbell::remove(const std::string& os_name) noexcept {
  const auto path = fifo_path(os_name);
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0 && S_ISFIFO(st.st_mode) && st.st_uid == ::geteuid()) ::unlink(path.c_str());
}

void fifo_bell::ring() noexcept {
  if (write_fd < 0) return;
  char b = 1;
  if (reads_too) {
    [[maybe_unused]] const auto r = ::write(write_fd, &b, 1);  // full: a wake-up is pending anyway
    return;
  }
  // Without /proc the sender holds the FIFO write-only. A receiver that has died leaves the FIFO without a reader, and write() then raises SIGPIPE,
  // whose default action would kill this (sending) process. Block it for the write and consume
  // the one our write raised, unless one was already pending for someone else. (Found by the
  // fault matrix: the target killed between the ticket and the doorbell killed the source.)
  sigset_t pipe_set, old_set, pending;
  ::sigemptyset(&pipe_set);
  ::sigaddset(&pipe_set, SIGPIPE);
  ::pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
  ::sigpending(&pending);
  const bool was_pending = ::sigismember(&pending, SIGPIPE) == 1;
  const auto r = ::write(write_fd, &b, 1);
  if (r < 0 && errno == EPIPE && !was_pending) {
    const timespec zero{0, 0};
    ::sigtimedwait(&pipe_set, nullptr, &zero);
  }
  ::pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
}

void fifo_bell::async_wait(doorbell::wait_handler handler) {
  rx->async_wait(asio::posix::stream_descriptor::wait_read,
                 [rx = rx.get(), h = std::move(handler)](error_code ec) mutable {
                   if (!ec) {
                     // Drain every pending ring: they are coalesced into this one wake-up.
                     char buf[256];
                     while (::read(rx->native_handle(), buf, sizeof buf) > 0) {
                     }
                   }
                   std::move(h)(ec);
                 });
}

}  // namespace baton::detail
