// POSIX backend: shared memory regions, process watching.
#include "detail/platform.hpp"

#include <boost/interprocess/shared_memory_object.hpp>

#include <atomic>
#include <cerrno>
#include <pthread.h>
#include <csignal>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace baton::detail {

namespace bip = boost::interprocess;

namespace {
// getpid() is a real system call on this libc; the send path needs the pid on every ticket.
// The cache is refreshed in a forked child.
std::atomic<std::uint32_t> cached_pid{0};
void forget_pid() noexcept { cached_pid.store(0, std::memory_order_relaxed); }
}  // namespace

std::uint32_t current_pid() noexcept {
  std::uint32_t p = cached_pid.load(std::memory_order_relaxed);
  if (p == 0) {
    static const int registered = ::pthread_atfork(nullptr, nullptr, &forget_pid);
    (void)registered;
    p = static_cast<std::uint32_t>(::getpid());
    cached_pid.store(p, std::memory_order_relaxed);
  }
  return p;
}

std::string object_name(const std::string& name, const char* suffix, bool /*global_namespace*/) {
  return "/baton." + name + "." + suffix;
}

namespace {
error_code last_errno() { return {errno, boost::system::system_category()}; }
}  // namespace

bip::mapped_region create_region(const std::string& os_name, std::size_t size, error_code& ec) {
  ec.clear();
  // shm_open directly rather than through bip::shared_memory_object: O_EXCL and mode 0600 must be
  // applied atomically at creation, and the umask must not widen or narrow them.
  int fd = ::shm_open(os_name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    ec = errno == EEXIST ? make_error_code(errc::name_in_use) : last_errno();
    return {};
  }
  ::fchmod(fd, 0600);
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    ec = last_errno();
    ::close(fd);
    ::shm_unlink(os_name.c_str());
    return {};
  }
  try {
    bip::shared_memory_object shm(bip::open_only, os_name.c_str(), bip::read_write);
    ::close(fd);
    return bip::mapped_region(shm, bip::read_write, 0, size);
  } catch (const bip::interprocess_exception& e) {
    ::close(fd);
    ::shm_unlink(os_name.c_str());
    ec = {e.get_native_error() ? e.get_native_error() : EIO, boost::system::system_category()};
    return {};
  }
}

bip::mapped_region open_region(const std::string& os_name, error_code& ec) {
  ec.clear();
  try {
    bip::shared_memory_object shm(bip::open_only, os_name.c_str(), bip::read_write);
    struct stat st {};
    if (::fstat(shm.get_mapping_handle().handle, &st) != 0) {
      ec = last_errno();
      return {};
    }
    // A region owned by someone else, or readable by group/others, may be a squatter's trap.
    if (st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
      ec = errc::not_owner;
      return {};
    }
    if (st.st_size <= 0) {
      ec = errc::bad_channel_header;
      return {};
    }
    return bip::mapped_region(shm, bip::read_write, 0, static_cast<std::size_t>(st.st_size));
  } catch (const bip::interprocess_exception& e) {
    if (e.get_error_code() == bip::not_found_error)
      ec = errc::channel_not_found;
    else
      ec = {e.get_native_error() ? e.get_native_error() : EIO, boost::system::system_category()};
    return {};
  }
}

void remove_region(const std::string& os_name) noexcept { ::shm_unlink(os_name.c_str()); }

process_watch::process_watch() noexcept = default;

process_watch::process_watch(std::uint32_t pid) : pid_(pid) {
  // A pidfd pins the process identity, so a recycled pid cannot pass for the original.
  long fd = ::syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0);
  handle_ = fd;
}

process_watch::process_watch(process_watch&& o) noexcept : pid_(o.pid_), handle_(o.handle_) {
  o.handle_ = -1;
  o.pid_ = 0;
}

process_watch& process_watch::operator=(process_watch&& o) noexcept {
  if (this != &o) {
    if (handle_ >= 0) ::close(static_cast<int>(handle_));
    pid_ = o.pid_;
    handle_ = o.handle_;
    o.handle_ = -1;
    o.pid_ = 0;
  }
  return *this;
}

process_watch::~process_watch() {
  if (handle_ >= 0) ::close(static_cast<int>(handle_));
}

bool process_watch::alive() const noexcept {
  if (pid_ == 0) return false;
  if (handle_ < 0) return process_alive(pid_);
  pollfd p{static_cast<int>(handle_), POLLIN, 0};
  int r = ::poll(&p, 1, 0);
  return r == 0;  // a pidfd becomes readable when the process exits
}

bool accepted_socket_inherits_no_delay() noexcept { return true; }

bool process_alive(std::uint32_t pid) noexcept {
  if (pid == 0 || pid > 0x3FFFFFFF) return false;
  // A pidfd tells an exited process that its parent has not reaped yet (a zombie: its
  // descriptors and mappings are gone) from a live one; kill(pid, 0) cannot.
  const long fd = ::syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0);
  if (fd >= 0) {
    pollfd p{static_cast<int>(fd), POLLIN, 0};
    const int r = ::poll(&p, 1, 0);
    ::close(static_cast<int>(fd));
    return r == 0;
  }
  if (errno == ESRCH) return false;
  if (::kill(static_cast<pid_t>(pid), 0) == 0) return true;
  return errno == EPERM;  // exists, but belongs to someone else
}

void kill_process_hard(std::uint32_t pid) noexcept {
  ::kill(static_cast<pid_t>(pid), SIGKILL);
  // SIGKILL to ourselves does not return; for another process wait until it is gone (a zombie
  // counts as gone: its descriptors are closed).
  for (int i = 0; i < 2000; ++i) {
    process_watch w(pid);
    if (!w.alive()) return;
    ::usleep(1000);
  }
}

}  // namespace baton::detail
