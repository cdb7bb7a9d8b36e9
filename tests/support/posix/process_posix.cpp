// The POSIX half of the test support: processes (posix_spawn, waitpid, signals), /proc
// measurements, environment, temp files, the /dev/shm sweep and socket options, and the POSIX
// parts of tests that differ per platform (stalls, shm objects, descriptors, objects of another uid).
#include "test_support.hpp"

#include "net_helpers.hpp"
#include "support_platform.hpp"

#include <csignal>
#include <cstring>
#include <ctime>
#include <dirent.h>
#include <fcntl.h>
#include <fstream>
#include <pwd.h>
#include <set>
#include <sstream>
#include <spawn.h>
#include <stdexcept>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace baton::test {

child child::launch(std::vector<std::string> argv) {
  child c;
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  pid_t pid = 0;
  if (::posix_spawnp(&pid, cargv[0], nullptr, nullptr, cargv.data(), environ) != 0)
    throw std::runtime_error("posix_spawn failed");
  c.pid_ = static_cast<std::uint32_t>(pid);
  c.reaped_ = false;
  return c;
}

child child::run_to_file(std::vector<std::string> argv, const std::string& out) {
  child c;
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  ::posix_spawn_file_actions_init(&fa);
  ::posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  pid_t pid = 0;
  const int rc = ::posix_spawnp(&pid, cargv[0], &fa, nullptr, cargv.data(), environ);
  ::posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw std::runtime_error("posix_spawn failed");
  c.pid_ = static_cast<std::uint32_t>(pid);
  c.reaped_ = false;
  return c;
}

bool child::running() {
  if (reaped_) return false;
  int status = 0;
  pid_t r = ::waitpid(static_cast<pid_t>(pid_), &status, WNOHANG);
  if (r == 0) return true;
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  reaped_ = true;
  return false;
}

void child::kill() {
  if (reaped_) return;
  ::kill(static_cast<pid_t>(pid_), SIGKILL);
  wait(std::chrono::seconds(10));
}

void kill_process(std::uint32_t pid) { ::kill(static_cast<pid_t>(pid), SIGKILL); }
bool terminate_process(std::uint32_t pid) { return ::kill(static_cast<pid_t>(pid), SIGTERM) == 0; }

void stop_process(std::uint32_t pid) { ::kill(static_cast<pid_t>(pid), SIGSTOP); }
void resume_process(std::uint32_t pid) { ::kill(static_cast<pid_t>(pid), SIGCONT); }
void stop_self() { ::raise(SIGSTOP); }
bool host_has_scm_rights() { return true; }
bool host_is_windows() { return false; }

bool process_exists(std::uint32_t pid) {
  if (::kill(static_cast<pid_t>(pid), 0) != 0) return false;
  // A zombie (exited, not yet reaped by its parent) has exited.
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  std::getline(f, stat);
  const auto paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] != 'Z';
}

process_usage measure_process() {
  process_usage u;
  // The directory stream itself holds one descriptor while it is read: the same at every call.
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ++u.handles;
    ::closedir(d);
  }
  std::istringstream status(read_file("/proc/self/status"));
  std::string line;
  std::uint64_t shmem = 0;
  while (std::getline(status, line)) {
    auto kib = [&](const char* key) -> std::uint64_t {
      const std::size_t k = std::strlen(key);
      return line.compare(0, k, key) == 0 ? std::stoull(line.substr(k)) * 1024 : 0;
    };
    if (auto v = kib("VmRSS:")) u.rss = v;
    if (auto v = kib("RssShmem:")) shmem = v;
    if (line.compare(0, 8, "Threads:") == 0) u.threads = std::stoull(line.substr(8));
  }
  u.priv = u.rss - std::min(shmem, u.rss);
  return u;
}

void set_env(const char* name, const std::string& value) {
  if (value.empty()) ::unsetenv(name);
  else ::setenv(name, value.c_str(), 1);
}

std::string temp_path(const std::string& tag) { return "/tmp/" + unique_name(tag); }

void set_recv_timeout(boost::asio::ip::tcp::socket& s, std::chrono::milliseconds t) {
  timeval v{static_cast<time_t>(t.count() / 1000), static_cast<suseconds_t>((t.count() % 1000) * 1000)};
  ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &v, sizeof v);
}

std::size_t raise_fd_limit() {
  rlimit r{};
  ::getrlimit(RLIMIT_NOFILE, &r);
  r.rlim_cur = r.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &r);
  ::getrlimit(RLIMIT_NOFILE, &r);
  return r.rlim_cur == RLIM_INFINITY ? std::size_t{1} << 24 : static_cast<std::size_t>(r.rlim_cur);
}

// Objects of test channels whose receiver died (a crashed run) are removed before tests start;
// remove_stale refuses any channel whose owner is alive, so concurrent runs are safe.
void sweep_stale_test_channels() {
  DIR* d = ::opendir("/dev/shm");
  if (!d) return;
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string f = e->d_name;
    const std::string prefix = "baton.test-", suffix = ".ring";
    // Only objects older than two minutes: a channel being created right now has a header
    // whose owner pid is not written yet, and must not be mistaken for a dead one.
    struct stat st {};
    if (f.rfind(prefix, 0) == 0 && f.size() > prefix.size() + suffix.size() &&
        f.compare(f.size() - suffix.size(), suffix.size(), suffix) == 0 &&
        ::stat(("/dev/shm/" + f).c_str(), &st) == 0 && ::time(nullptr) - st.st_mtime > 120)
      names.push_back(f.substr(6, f.size() - 6 - suffix.size()));
  }
  ::closedir(d);
  for (auto& n : names) {
    baton::error_code ec;
    baton::channel::remove_stale(n, ec);
  }
}

void stall_until_resumed(const std::string&) { ::raise(SIGSTOP); }
void resume_stalled(std::uint32_t pid, const std::string&) { ::kill(static_cast<pid_t>(pid), SIGCONT); }

namespace {
bool is_stopped(std::uint32_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), {});
  const auto p = s.rfind(')');
  return p != std::string::npos && p + 2 < s.size() && s[p + 2] == 'T';
}
}  // namespace

bool wait_until_stalled(std::uint32_t pid, std::chrono::milliseconds deadline) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (!is_stopped(pid) && std::chrono::steady_clock::now() < until) nap(std::chrono::milliseconds(5));
  return is_stopped(pid);
}

bool truncate_channel_ring(const std::string& name) {
  const int fd = ::shm_open(("/baton." + name + ".ring").c_str(), O_RDWR, 0);
  if (fd < 0) return false;
  const bool ok = ::ftruncate(fd, 0) == 0;
  ::close(fd);
  return ok;
}

std::pair<std::uint64_t, std::uint64_t> open_plain_pipe() {
  int p[2];
  if (::pipe(p) != 0) throw std::runtime_error("pipe failed");  // no FD_CLOEXEC
  return {static_cast<std::uint64_t>(p[0]), static_cast<std::uint64_t>(p[1])};
}
int descriptor_flags(std::uint64_t fd) { return ::fcntl(static_cast<int>(fd), F_GETFD); }
void close_descriptor(std::uint64_t fd) { ::close(static_cast<int>(fd)); }

bool squat_channel_ring(const std::string& name) {
  const int fd = ::shm_open(("/baton." + name + ".ring").c_str(), O_CREAT | O_EXCL | O_RDWR, 0666);
  if (fd < 0) return false;
  ::fchmod(fd, 0666);
  (void)::ftruncate(fd, 1 << 20);
  return true;
}
void unlink_squatted_ring(const std::string& name) { ::shm_unlink(("/baton." + name + ".ring").c_str()); }

std::vector<posix_object_mode> channel_object_modes(const std::string& name) {
  std::vector<posix_object_mode> out;
  for (const char* suffix : {".ring", ".bell", ".sock"}) {
    posix_object_mode m;
    m.suffix = suffix;
    struct stat st {};
    m.found = ::stat(("/dev/shm/baton." + name + suffix).c_str(), &st) == 0;
    if (m.found) {
      m.mode = st.st_mode & 0777;
      m.owner_is_me = st.st_uid == ::geteuid();
    }
    out.push_back(m);
  }
  return out;
}
std::vector<windows_object_acl> channel_object_acls(const std::string&) {
  throw std::logic_error("channel_object_acls is Windows'");
}
bool channel_ring_is_global(const std::string&) { throw std::logic_error("channel_ring_is_global is Windows'"); }

void remove_service_names(const std::string& service) {
  const std::string prefix = "baton." + service + ".";
  std::set<std::string> names{service};
  if (DIR* d = ::opendir("/dev/shm")) {
    while (dirent* e = ::readdir(d)) {
      const std::string f = e->d_name;
      if (f.rfind(prefix, 0) != 0) continue;
      const auto dot = f.rfind('.');
      if (dot > 6) names.insert(f.substr(6, dot - 6));
    }
    ::closedir(d);
  }
  for (const auto& n : names) {
    baton::error_code ec;
    baton::channel::remove_stale(n, ec);
  }
}

bool running_as_root() { return ::geteuid() == 0; }

foreign_objects::~foreign_objects() {
  for (const auto& p : paths) ::unlink(p.c_str());
}
std::uint32_t foreign_objects::uid() const {
  const passwd* pw = ::getpwnam("nobody");
  return pw ? pw->pw_uid : 65534;
}
bool foreign_objects::add_region(const std::string& path) {
  ::unlink(path.c_str());
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  paths.push_back(path);
  const bool ok = ::ftruncate(fd, 4096) == 0 && ::fchown(fd, uid(), uid()) == 0;
  ::close(fd);
  return ok;
}
bool foreign_objects::add_fifo(const std::string& path) {
  ::unlink(path.c_str());
  if (::mkfifo(path.c_str(), 0600) != 0) return false;
  paths.push_back(path);
  return ::chown(path.c_str(), uid(), uid()) == 0;
}

void check_high_mandatory_label_sddl() { throw std::logic_error("check_high_mandatory_label_sddl is Windows'"); }

}  // namespace baton::test
