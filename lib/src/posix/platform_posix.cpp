// POSIX backend: shared memory regions, process watching.
#include "detail/platform.hpp"

#include <boost/interprocess/shared_memory_object.hpp>

#include <atomic>
#include <cstdio>
#include <ctime>
#include <pwd.h>
#include <random>
#include <sys/file.h>
#include <cerrno>
#include <mutex>
#include <pthread.h>
#include <csignal>
#include <dirent.h>
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

// The region guard. A process that can open a channel's object (any sender: same user) can
// ftruncate it, and every later access to the lost pages raises SIGBUS in every process that
// maps it. Checking the size with fstat before touching the ring cannot help (the object can
// shrink between the check and the access, and the ring is touched on every send and receive),
// and senders open the object by name, so it cannot be a sealed memfd. So each mapped region is
// registered here, with a descriptor of its object, and a SIGBUS handler that finds the faulting
// address in a registered region grows the object back to the region's size and returns: the
// access is retried and reads zeros where the truncation removed pages, in this process and in
// all others (they share the object). The ring then finds a zeroed header, reports
// errc::channel_truncated and heals. If growing back fails, the handler puts private zero pages
// over the region so that this process lives on, and marks the region lost (the channel then
// fails every receive with channel_truncated). Faults outside registered regions go to the
// handler that was installed before, or to the default action.
struct guarded_region {
  std::atomic<std::uintptr_t> base{0};
  std::atomic<std::size_t> size{0};
  std::atomic<int> fd{-1};
  std::atomic<std::uint64_t> faults{0};
  std::atomic<bool> lost{false};
};
constexpr std::size_t max_guarded_regions = 64;
guarded_region guarded[max_guarded_regions];
struct sigaction previous_sigbus {};
std::mutex guard_mutex;  // registration only; the handler reads the table lock-free

void on_sigbus(int sig, siginfo_t* info, void* context) {
  const auto addr = reinterpret_cast<std::uintptr_t>(info->si_addr);
  for (auto& g : guarded) {
    const std::uintptr_t base = g.base.load(std::memory_order_acquire);
    const std::size_t size = g.size.load(std::memory_order_relaxed);
    if (base == 0 || addr < base || addr - base >= size) continue;
    const int saved_errno = errno;
    g.faults.fetch_add(1, std::memory_order_relaxed);
    // fstat and ftruncate are async-signal-safe; mmap is a plain system call.
    const int fd = g.fd.load(std::memory_order_relaxed);
    struct stat st {};
    const bool restored = fd >= 0 && ::fstat(fd, &st) == 0 &&
                          (st.st_size >= static_cast<off_t>(size) || ::ftruncate(fd, static_cast<off_t>(size)) == 0);
    if (!restored) {
      ::mmap(reinterpret_cast<void*>(base), size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
      g.lost.store(true, std::memory_order_relaxed);
    }
    errno = saved_errno;
    return;
  }
  if ((previous_sigbus.sa_flags & SA_SIGINFO) != 0 && previous_sigbus.sa_sigaction != nullptr) {
    previous_sigbus.sa_sigaction(sig, info, context);
  } else if (previous_sigbus.sa_handler != SIG_DFL && previous_sigbus.sa_handler != SIG_IGN) {
    previous_sigbus.sa_handler(sig);
  } else {
    // Not ours and nobody else's: the default action, taken when the access is retried.
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    ::sigemptyset(&dfl.sa_mask);
    ::sigaction(SIGBUS, &dfl, nullptr);
  }
}

// Takes ownership of `fd`. With every slot taken the region goes unguarded.
void guard_region(void* base, std::size_t size, int fd) noexcept {
  std::lock_guard lk(guard_mutex);
  static const bool installed = [] {
    struct sigaction sa {};
    sa.sa_sigaction = &on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    ::sigemptyset(&sa.sa_mask);
    return ::sigaction(SIGBUS, &sa, &previous_sigbus) == 0;
  }();
  if (installed && base != nullptr) {
    for (auto& g : guarded) {
      if (g.base.load(std::memory_order_relaxed) != 0) continue;
      g.size.store(size, std::memory_order_relaxed);
      g.fd.store(fd, std::memory_order_relaxed);
      g.faults.store(0, std::memory_order_relaxed);
      g.lost.store(false, std::memory_order_relaxed);
      g.base.store(reinterpret_cast<std::uintptr_t>(base), std::memory_order_release);
      return;
    }
  }
  ::close(fd);
}

guarded_region* find_guarded(const void* base) noexcept {
  if (base == nullptr) return nullptr;
  for (auto& g : guarded)
    if (g.base.load(std::memory_order_acquire) == reinterpret_cast<std::uintptr_t>(base)) return &g;
  return nullptr;
}
}  // namespace

std::uint64_t region_faults(const void* base) noexcept {
  auto* g = find_guarded(base);
  return g ? g->faults.load(std::memory_order_relaxed) : 0;
}

bool region_lost(const void* base) noexcept {
  auto* g = find_guarded(base);
  return g && g->lost.load(std::memory_order_relaxed);
}

void unguard_region(const void* base) noexcept {
  std::lock_guard lk(guard_mutex);
  auto* g = find_guarded(base);
  if (!g) return;
  g->base.store(0, std::memory_order_release);
  ::close(g->fd.exchange(-1, std::memory_order_relaxed));
}


namespace {
std::string shm_path(const std::string& os_name) { return "/dev/shm" + os_name; }

// Creates a region (O_EXCL, mode 0600 whatever the umask) and maps it; on failure the name is
// removed again.
bip::mapped_region make_region(const std::string& os_name, std::size_t size, error_code& ec) {
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
    bip::mapped_region region(shm, bip::read_write, 0, size);
    guard_region(region.get_address(), size, fd);  // takes the descriptor
    return region;
  } catch (const bip::interprocess_exception& e) {
    ::close(fd);
    ::shm_unlink(os_name.c_str());
    ec = {e.get_native_error() ? e.get_native_error() : EIO, boost::system::system_category()};
    return {};
  }
}
}  // namespace

bip::mapped_region create_region(const std::string& os_name, std::size_t size, error_code& ec) {
  ec.clear();
  return make_region(os_name, size, ec);
}

bip::mapped_region create_region(const std::string& os_name, std::size_t size, const region_init& init,
                                 error_code& ec) {
  ec.clear();
  // Other processes decide from the header whether a channel is live (its owner pid) or stale:
  // the name must never be visible before the header is. So the region is made and filled under
  // a private name, then linked into place; link() fails if the name exists, which keeps O_EXCL's
  // one-owner guarantee.
  std::random_device rd;
  char tmp[64];
  std::snprintf(tmp, sizeof tmp, "/baton-creating.%u.%08x%08x", static_cast<unsigned>(::getpid()), rd(), rd());
  auto region = make_region(tmp, size, ec);
  if (ec) return {};
  init(region.get_address(), region.get_size());
  const int rc = ::link(shm_path(tmp).c_str(), shm_path(os_name).c_str());
  const int err = errno;
  ::shm_unlink(tmp);
  if (rc != 0) {
    ec = err == EEXIST ? make_error_code(errc::name_in_use) : error_code(err, boost::system::system_category());
    unguard_region(region.get_address());
    return {};
  }
  return region;
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
    const int fd = ::fcntl(shm.get_mapping_handle().handle, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
      ec = last_errno();
      return {};
    }
    try {
      bip::mapped_region region(shm, bip::read_write, 0, static_cast<std::size_t>(st.st_size));
      guard_region(region.get_address(), region.get_size(), fd);
      return region;
    } catch (...) {
      ::close(fd);
      throw;
    }
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

void remove_stale_channel(const std::string& name, const owner_reader& owner_of, error_code& ec) {
  ec.clear();
  const std::string region = object_name(name, "ring", false);
  const std::string path = shm_path(region);
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    // No region: nothing is verifiably stale. A doorbell or transfer endpoint left without one
    // is removed by the next creator, who holds the region's name when it finds them.
    if (errno != ENOENT) ec = errno == ELOOP ? make_error_code(errc::not_owner) : last_errno();
    return;
  }
  struct closer {
    int fd;
    ~closer() { ::close(fd); }  // also releases the lock
  } guard{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ec = last_errno();
    return;
  }
  if (!S_ISREG(st.st_mode) || st.st_uid != ::geteuid()) {
    ec = errc::not_owner;  // someone else's object: never ours to remove
    return;
  }
  // Removers of one region take turns; the first removes it, the others then find the name gone
  // or naming another (new, live) region, and leave it alone.
  // (A remover holds the lock for a few system calls; one held for long is not a remover's.)
  for (int i = 0; ::flock(fd, LOCK_EX | LOCK_NB) != 0; ++i) {
    if (errno != EWOULDBLOCK && errno != EINTR) {
      ec = last_errno();
      return;
    }
    if (i == 2000) {
      ec = errc::name_in_use;
      return;
    }
    ::usleep(1000);
  }
  unsigned char header[256] = {};
  const ssize_t got = ::pread(fd, header, sizeof header, 0);
  const std::uint32_t pid = got > 0 ? owner_of(header, static_cast<std::size_t>(got)) : 0;
  if (pid != 0 && process_alive(pid)) {
    ec = errc::name_in_use;
    return;
  }
  // Baton publishes a region only with its header written; one without a valid header that is
  // only seconds old may be an older Baton's channel being created. Leave it alone for a while.
  if (pid == 0 && std::time(nullptr) - st.st_ctime < 5) {
    ec = errc::name_in_use;
    return;
  }
  struct stat now {};
  if (::lstat(path.c_str(), &now) != 0 || now.st_ino != st.st_ino || now.st_dev != st.st_dev) return;
  // While the stale region holds the name no new channel of it can be created, so its doorbell
  // and transfer endpoint are the dead owner's: remove them first, the region last.
  remove_transfer_endpoint(name);
  doorbell::remove(object_name(name, "bell", false));
  ::unlink(path.c_str());
}

std::vector<std::string> list_channel_names(error_code& ec) {
  ec.clear();
  std::vector<std::string> names;
  DIR* d = ::opendir("/dev/shm");
  if (!d) {
    ec = last_errno();
    return names;
  }
  const std::string prefix = "baton.", suffix = ".ring";
  while (const dirent* e = ::readdir(d)) {
    const std::string f = e->d_name;
    if (f.size() <= prefix.size() + suffix.size() || f.compare(0, prefix.size(), prefix) != 0 ||
        f.compare(f.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    struct stat st {};
    if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
        st.st_uid != ::geteuid())
      continue;
    names.push_back(f.substr(prefix.size(), f.size() - prefix.size() - suffix.size()));
  }
  ::closedir(d);
  return names;
}

std::string describe_foreign_objects(const std::string& name) {
  std::string out;
  for (const char* suffix : {"ring", "bell", "sock"}) {
    const std::string path = shm_path(object_name(name, suffix, false));
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0 || st.st_uid == ::geteuid()) continue;
    std::string owner = "uid " + std::to_string(st.st_uid);
    if (const passwd* pw = ::getpwuid(st.st_uid)) owner += " (" + std::string(pw->pw_name) + ")";
    if (!out.empty()) out += "; ";
    out += path + " belongs to " + owner + ", not to uid " + std::to_string(::geteuid()) +
           " (this process): if that user does not run this service, the name is squatted; remove the "
           "object as root or as that user (rm " + path + "), or use another name";
  }
  return out;
}

}  // namespace baton::detail
