#include "baton/spawn.hpp"

#include "detail/platform.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace baton {

std::uint32_t current_process_id() noexcept { return detail::current_pid(); }

std::string current_executable_path() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf);
  return std::string(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
}

namespace {

// Closes every descriptor >= 3 in [from, to] (async-signal-safe: runs between fork and exec).
void close_span(unsigned from, unsigned to) {
  if (from > to) return;
  if (::syscall(SYS_close_range, from, to, 0) == 0) return;
  const unsigned cap = std::min<unsigned>(to, 65535);
  for (unsigned fd = from; fd <= cap; ++fd) ::close(static_cast<int>(fd));
}

}  // namespace

spawned_process spawn_with_handles(const std::string& exe, const std::vector<std::string>& args,
                                   const std::vector<std::uintptr_t>& handles, error_code& ec) {
  ec.clear();
  // Everything the child needs is prepared before fork: afterwards only system calls run.
  std::vector<std::string> argv_s{exe};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<unsigned> keep;
  for (auto h : handles) keep.push_back(static_cast<unsigned>(h));
  std::sort(keep.begin(), keep.end());
  int report[2];
  if (::pipe2(report, O_CLOEXEC) != 0) {
    ec = {errno, boost::system::system_category()};
    return {};
  }
  std::vector<unsigned> spare = keep;
  spare.push_back(static_cast<unsigned>(report[1]));
  std::sort(spare.begin(), spare.end());
  const pid_t pid = ::fork();
  if (pid < 0) {
    ec = {errno, boost::system::system_category()};
    ::close(report[0]);
    ::close(report[1]);
    return {};
  }
  if (pid == 0) {
    // Not every library marks its descriptors close-on-exec (Asio does not), so the child gets
    // exactly stdin/out/err, the chosen descriptors, and the error pipe (closed by exec).
    unsigned from = 3;
    for (unsigned k : spare) {  // sorted: the chosen descriptors and the error pipe
      if (k >= from) {
        close_span(from, k - 1);
        from = k + 1;
      }
    }
    close_span(from, UINT_MAX);
    for (unsigned k : keep) ::fcntl(static_cast<int>(k), F_SETFD, 0);
    ::execve(exe.c_str(), argv.data(), environ);
    const int err = errno;
    [[maybe_unused]] auto n = ::write(report[1], &err, sizeof err);
    ::_exit(127);
  }
  ::close(report[1]);
  int err = 0;
  const auto n = ::read(report[0], &err, sizeof err);
  ::close(report[0]);
  if (n == sizeof err) {
    ::waitpid(pid, nullptr, 0);
    ec = {err, boost::system::system_category()};
    return {};
  }
  return {static_cast<std::uint32_t>(pid)};
}

}  // namespace baton
