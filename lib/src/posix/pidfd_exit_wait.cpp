// Linux process exit through the reactor: a pidfd becomes readable when its process exits, so an
// asio::posix::stream_descriptor waiting for readability wakes the io_context exactly then.
#include "detail/platform.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <cerrno>
#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

namespace baton::detail {

namespace asio = boost::asio;

struct process_exit_wait::impl {
  asio::any_io_executor ex;
  std::uint32_t pid = 0;
  bool reap = false;
  bool gone = false;  // pidfd_open said ESRCH: the process had already exited (and been reaped)
  std::unique_ptr<asio::posix::stream_descriptor> fd;
  // Kernels without pidfd_open (before 5.3): a 20 ms liveness poll, the only non-reactor path.
  std::unique_ptr<asio::steady_timer> poll;
};

process_exit_wait::process_exit_wait() noexcept = default;
process_exit_wait::process_exit_wait(process_exit_wait&&) noexcept = default;
process_exit_wait& process_exit_wait::operator=(process_exit_wait&&) noexcept = default;
process_exit_wait::~process_exit_wait() = default;

process_exit_wait::process_exit_wait(const asio::any_io_executor& ex, std::uint32_t pid, bool reap, error_code& ec)
    : impl_(std::make_unique<impl>()) {
  ec.clear();
  impl_->ex = ex;
  impl_->pid = pid;
  impl_->reap = reap;
  const long fd = ::syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0);
  if (fd >= 0) {
    ::fcntl(static_cast<int>(fd), F_SETFD, FD_CLOEXEC);
    impl_->fd = std::make_unique<asio::posix::stream_descriptor>(ex, static_cast<int>(fd));
  } else if (errno == ESRCH) {
    impl_->gone = true;
  } else if (errno == ENOSYS) {
    impl_->poll = std::make_unique<asio::steady_timer>(ex);
  } else {
    ec = {errno, boost::system::system_category()};
  }
}

namespace {
void poll_exit(process_exit_wait::impl* im, asio::any_completion_handler<void(error_code)> h);
void wait_readable(process_exit_wait::impl* im, asio::any_completion_handler<void(error_code)> h);
}

void process_exit_wait::async_wait(asio::any_completion_handler<void(error_code)> handler) {
  impl* im = impl_.get();
  if (im->gone) return asio::post(im->ex, asio::append(std::move(handler), error_code()));
  if (im->poll) return poll_exit(im, std::move(handler));
  wait_readable(im, std::move(handler));
}

namespace {
void wait_readable(process_exit_wait::impl* im, asio::any_completion_handler<void(error_code)> h) {
  im->fd->async_wait(asio::posix::descriptor_base::wait_read,
                     [im, h = std::move(h)](error_code ec) mutable {
                       // Seen here (kernel 6.18, multi-threaded target): the reactor reports the
                       // pidfd ready while the process lives. Trust only a pidfd that is
                       // readable now; otherwise wait again.
                       pollfd p{im->fd->native_handle(), POLLIN, 0};
                       if (!ec && ::poll(&p, 1, 0) == 0) return wait_readable(im, std::move(h));
                       if (!ec && im->reap) ::waitpid(static_cast<pid_t>(im->pid), nullptr, WNOHANG);
                       std::move(h)(ec);
                     });
}
}  // namespace

namespace {
void poll_exit(process_exit_wait::impl* im, asio::any_completion_handler<void(error_code)> h) {
  if (im->reap) ::waitpid(static_cast<pid_t>(im->pid), nullptr, WNOHANG);
  if (!process_alive(im->pid)) return asio::post(im->ex, asio::append(std::move(h), error_code()));
  im->poll->expires_after(std::chrono::milliseconds(20));
  im->poll->async_wait([im, h = std::move(h)](error_code ec) mutable {
    if (ec) return std::move(h)(ec);
    poll_exit(im, std::move(h));
  });
}
}  // namespace

void process_exit_wait::cancel() noexcept {
  if (!impl_) return;
  error_code ignored;
  if (impl_->fd) impl_->fd->cancel(ignored);
  if (impl_->poll) impl_->poll->cancel();
}

}  // namespace baton::detail
