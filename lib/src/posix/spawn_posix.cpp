#include "baton/spawn.hpp"

#include "detail/platform.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
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

// Closes every descriptor >= 3 in [from, to] (async-signal-safe: runs between vfork and exec).
void close_span(unsigned from, unsigned to) {
  if (from > to) return;
  if (::syscall(SYS_close_range, from, to, 0) == 0) return;
  const unsigned cap = std::min<unsigned>(to, 65535);
  for (unsigned fd = from; fd <= cap; ++fd) ::close(static_cast<int>(fd));
}

// What the child needs, prepared by the parent before vfork.
struct child_plan {
  const char* exe;
  char* const* argv;
  const std::vector<unsigned>& keep;   // descriptors the child keeps, sorted
  const std::vector<unsigned>& spare;  // keep and the error pipe's write end, sorted
  int report;                          // the error pipe's write end (close-on-exec)
  const sigset_t& parent_mask;
};

// The child between vfork and exec. It shares the parent's memory (the parent's thread waits
// until exec), so it only makes system calls and writes its own frame (hence a function of its
// own, never inlined into the parent's). Its signal handlers are its own copy: the handlers the
// parent installed go back to the default before signals are let through again, so no handler
// of the parent's runs on the parent's memory from here.
[[gnu::noinline]] void run_child(const child_plan& p) noexcept {
  for (int sig = 1; sig < NSIG; ++sig) {
    struct sigaction sa {};
    if (::sigaction(sig, nullptr, &sa) == 0 && sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN) {
      sa.sa_handler = SIG_DFL;
      sa.sa_flags = 0;
      ::sigaction(sig, &sa, nullptr);
    }
  }
  ::sigprocmask(SIG_SETMASK, &p.parent_mask, nullptr);
  // Not every library marks its descriptors close-on-exec (Asio does not), so the child gets
  // exactly stdin/out/err, the chosen descriptors, and the error pipe (closed by exec).
  unsigned from = 3;
  for (unsigned k : p.spare) {  // sorted: the chosen descriptors and the error pipe
    if (k >= from) {
      close_span(from, k - 1);
      from = k + 1;
    }
  }
  close_span(from, UINT_MAX);
  for (unsigned k : p.keep) ::fcntl(static_cast<int>(k), F_SETFD, 0);
  ::execve(p.exe, p.argv, environ);
  const int err = errno;
  [[maybe_unused]] auto n = ::write(p.report, &err, sizeof err);
  ::_exit(127);
}

}  // namespace

spawned_process spawn_with_handles(const std::string& exe, const std::vector<std::string>& args,
                                   const std::vector<std::uintptr_t>& handles, error_code& ec) {
  ec.clear();
  // Everything the child needs is prepared before vfork: afterwards only system calls run.
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
  // vfork, not fork: fork marks every page of this process copy-on-write, and a generation
  // handing over 15,000 connections then took a page fault for each page it wrote afterwards
  // (~33,000 during the hand-over, ~2 per connection; 46 us of its CPU per connection, 14.5 us
  // with vfork; tests/restart and bench/README.md). No signal reaches the child before its
  // handlers are reset (run_child).
  sigset_t all, old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  const child_plan plan{exe.c_str(), argv.data(), keep, spare, report[1], old};
  const pid_t pid = ::vfork();
  if (pid == 0) run_child(plan);
  const int vfork_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) {
    ec = {vfork_errno, boost::system::system_category()};
    ::close(report[0]);
    ::close(report[1]);
    return {};
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
