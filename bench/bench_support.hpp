#pragma once
// Shared pieces of the cross-process benchmarks (Linux only): a bench binary re-runs itself as a
// helper (`--role=NAME args...`, dispatched before benchmark::Initialize), talks to it through a
// small control block in shared memory, and bounds every wait by a deadline and by the liveness
// of the other side. Shared-memory and socket names carry the pid and a counter; they are removed
// before creation (a crashed earlier run with the same pid cannot break this one) and at the end.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace bench {

using steady = std::chrono::steady_clock;
using namespace std::chrono_literals;

/// How long any one cross-process wait may last before the waiter gives up.
inline constexpr auto wait_deadline = 5s;

/// "baton-bench-<pid>-<n>-<what>": unique per process and call.
inline std::string unique_name(const char* what) {
  static std::atomic<unsigned> counter{0};
  return "baton-bench-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" + what;
}

/// A shared-memory object mapped read-write. The creator unlinks the name in its destructor.
class shm {
 public:
  shm() = default;
  shm(const shm&) = delete;
  shm& operator=(const shm&) = delete;
  ~shm() {
    if (base_) ::munmap(base_, size_);
    if (owner_) ::shm_unlink(name_.c_str());
  }

  /// Creates "/NAME" (removing a stale object of that name first), zero-filled.
  bool create(const std::string& name, std::size_t size) {
    name_ = "/" + name;
    ::shm_unlink(name_.c_str());
    int fd = ::shm_open(name_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return false;
    owner_ = true;
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
      ::close(fd);
      return false;
    }
    return map(fd, size);
  }

  bool open(const std::string& name, std::size_t size) {
    name_ = "/" + name;
    int fd = ::shm_open(name_.c_str(), O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) return false;
    return map(fd, size);
  }

  void* get() const noexcept { return base_; }
  template <class T>
  T* as() const noexcept {
    return static_cast<T*>(base_);
  }

 private:
  bool map(int fd, std::size_t size) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) return false;
    base_ = p;
    size_ = size;
    return true;
  }
  std::string name_;
  void* base_ = nullptr;
  std::size_t size_ = 0;
  bool owner_ = false;
};

/// Parent <-> helper control block (one shared-memory object per benchmark run).
struct control {
  std::atomic<std::uint32_t> parent_pid;
  std::atomic<std::uint32_t> ready;  // helper attached and waiting
  std::atomic<std::uint32_t> stop;   // parent: helper must exit
  std::atomic<std::int32_t> failed;  // helper: non-zero on error
  alignas(64) std::atomic<std::uint64_t> go;    // batches requested by the parent
  alignas(64) std::atomic<std::uint64_t> done;  // batches the helper finished
  // Futex words for the doorbell benchmark (each on its own cache line).
  alignas(64) std::atomic<std::uint32_t> ping;  // parent -> helper
  alignas(64) std::atomic<std::uint32_t> pong;  // helper -> parent
};
static_assert(std::atomic<std::uint32_t>::is_always_lock_free && sizeof(std::atomic<std::uint32_t>) == 4);

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

/// Helper side: false once the parent is gone or asked us to stop.
inline bool parent_wants_us(const control* c) noexcept {
  return c->stop.load(std::memory_order_relaxed) == 0 &&
         static_cast<std::uint32_t>(::getppid()) == c->parent_pid.load(std::memory_order_relaxed);
}

/// Number of CPUs this process may run on.
inline int usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return CPU_COUNT(&set);
}

/// The n-th CPU (0-based) of this process's affinity mask, or -1.
inline int nth_cpu(int n) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return -1;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set) && n-- == 0) return c;
  return -1;
}

inline bool pin_to(int cpu) {
  if (cpu < 0) return false;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return ::sched_setaffinity(0, sizeof set, &set) == 0;
}

/// Pins the calling process to one CPU for the lifetime of the guard, then restores its mask.
class pin_guard {
 public:
  explicit pin_guard(int cpu) {
    CPU_ZERO(&saved_);
    ok_ = ::sched_getaffinity(0, sizeof saved_, &saved_) == 0 && pin_to(cpu);
  }
  ~pin_guard() {
    if (ok_) ::sched_setaffinity(0, sizeof saved_, &saved_);
  }
  pin_guard(const pin_guard&) = delete;
  pin_guard& operator=(const pin_guard&) = delete;

 private:
  cpu_set_t saved_;
  bool ok_ = false;
};

/// Pins the calling process (the parent) to its first allowed CPU for the lifetime of `g` and
/// returns the CPU for the helper: the same one, or the second allowed CPU. Returns -1 and pins
/// nothing if a cross-CPU placement is asked for on a single CPU.
inline int place(std::optional<pin_guard>& g, bool same_cpu) {
  if (!same_cpu && usable_cpus() < 2) return -1;
  const int parent_cpu = nth_cpu(0);
  const int helper_cpu = same_cpu ? parent_cpu : nth_cpu(1);
  g.emplace(parent_cpu);
  return helper_cpu;
}

/// A helper process: this very binary, run with `--role=ROLE args...`.
class child {
 public:
  child() = default;
  child(const child&) = delete;
  child& operator=(const child&) = delete;
  ~child() { kill(); }

  /// Starts the helper, pinned to `cpu` if it is >= 0 (else with the parent's affinity).
  bool spawn(const std::string& role, const std::vector<std::string>& args, int cpu = -1) {
    std::vector<std::string> argv_s{"bench-helper", "--role=" + role};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& s : argv_s) argv.push_back(s.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    pid_t pid = ::fork();
    if (pid < 0) return false;
    if (pid == 0) {
      // Dies with the parent even if it is SIGKILLed (the helper also polls getppid()).
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(3);
      if (cpu >= 0) pin_to(cpu);
      ::execv("/proc/self/exe", argv.data());
      ::_exit(127);
    }
    pid_ = pid;
    return true;
  }

  /// Waits for the helper to exit; kills it after the deadline. Returns its exit code or -1.
  int wait(std::chrono::milliseconds deadline = wait_deadline) {
    if (pid_ <= 0) return -1;
    const auto end = steady::now() + deadline;
    for (;;) {
      int st = 0;
      pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        pid_ = 0;
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
      }
      if (r < 0) {
        pid_ = 0;
        return -1;
      }
      if (steady::now() > end) {
        kill();
        return -1;
      }
      std::this_thread::sleep_for(1ms);
    }
  }

  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = 0;
  }

  pid_t pid() const noexcept { return pid_; }

 private:
  pid_t pid_ = 0;
};

/// Parent side: waits until `pred()` or the deadline, or the helper died. Busy-polls.
template <class Pred>
bool wait_until(Pred pred, const control* c, std::chrono::milliseconds deadline = wait_deadline) {
  const auto end = steady::now() + deadline;
  for (std::uint32_t i = 0;; ++i) {
    if (pred()) return true;
    cpu_relax();
    if ((i & 1023) == 1023) {
      if (c && c->failed.load(std::memory_order_relaxed) != 0) return false;
      if (steady::now() > end) return false;
      std::this_thread::yield();
    }
  }
}

/// Helper side: waits for the next batch request (go > seen). False if we should exit.
inline bool wait_for_batch(control* c, std::uint64_t seen) {
  const auto end = steady::now() + wait_deadline;
  for (std::uint32_t i = 0;; ++i) {
    if (c->go.load(std::memory_order_acquire) > seen) return true;
    cpu_relax();
    if ((i & 1023) == 1023) {
      if (!parent_wants_us(c) || steady::now() > end) return false;
      if (i > (1u << 20)) std::this_thread::yield();  // idle between benchmark runs
    }
  }
}

/// Helper side: a busy wait (for room in a ring, say), bounded by wait_deadline from its creation
/// and by the parent's liveness, checked every 1024 rounds.
class spinner {
 public:
  explicit spinner(const control* c) : c_(c) {}
  /// One more round of waiting; false once the deadline has passed or the parent is gone.
  bool spin() noexcept {
    cpu_relax();
    return (++spins_ & 1023) != 0 || (steady::now() <= end_ && parent_wants_us(c_));
  }

 private:
  const control* c_;
  steady::time_point end_ = steady::now() + wait_deadline;
  std::uint32_t spins_ = 0;
};

/// A helper's exit status: 1 after a failure (noted in the control block for the parent), else 0.
inline int helper_exit(control* c, bool fail) {
  if (fail) c->failed.store(1);
  return fail ? 1 : 0;
}

/// Helper side: serves the parent's batch requests, at most `max_batches`, each with `produce()`
/// (false: it failed, the helper stops), and says when each is done. Returns the exit status.
template <class Produce>
int serve_batches(control* c, std::uint64_t max_batches, Produce produce) {
  bool fail = false;
  for (std::uint64_t seen = 0; seen < max_batches && !fail; ++seen) {
    if (!wait_for_batch(c, seen)) break;
    fail = !produce();
    c->done.store(seen + 1, std::memory_order_release);
  }
  return helper_exit(c, fail);
}

/// A parent-side benchmark run: control block and helper process (stopped and reaped at the end).
struct session {
  shm ctl_mem;
  std::string ctl_name = unique_name("ctl");
  control* ctl = nullptr;
  child helper;

  bool start(benchmark::State& state, const std::string& role, std::vector<std::string> args, int cpu = -1) {
    if (!ctl_mem.create(ctl_name, sizeof(control))) {
      state.SkipWithError("shm_open(control) failed");
      return false;
    }
    ctl = new (ctl_mem.get()) control{};
    ctl->parent_pid.store(static_cast<std::uint32_t>(::getpid()));
    args.insert(args.begin(), ctl_name);
    if (!helper.spawn(role, args, cpu)) {
      state.SkipWithError("fork failed");
      return false;
    }
    if (!wait_until([&] { return ctl->ready.load(std::memory_order_acquire) != 0; }, ctl)) {
      state.SkipWithError("helper did not attach");
      return false;
    }
    return true;
  }
  ~session() {
    if (ctl) ctl->stop.store(1);
    helper.wait();
  }
};

/// The q-quantile (0..1) of `v` (nearest rank); reorders v.
inline double quantile(std::vector<double>& v, double q) {
  if (v.empty()) return 0;
  std::size_t k = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

/// Removes the objects that earlier runs left behind when they were killed: every entry of
/// /dev/shm (shared memory, FIFOs, channels) and /tmp (sockets) whose name contains
/// "baton-bench-<pid>-" for a pid that no longer exists.
inline void sweep_stale() {
  for (const char* dir : {"/dev/shm", "/tmp"}) {
    DIR* d = ::opendir(dir);
    if (!d) continue;
    while (dirent* e = ::readdir(d)) {
      const char* p = std::strstr(e->d_name, "baton-bench-");
      if (!p) continue;
      const long pid = std::strtol(p + 12, nullptr, 10);
      if (pid <= 0 || (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH))
        ::unlinkat(::dirfd(d), e->d_name, 0);
    }
    ::closedir(d);
  }
}

/// main()'s answer to a role it does not know (or with too few arguments): exit status 2.
inline int unknown_role(const std::string& role) {
  std::fprintf(stderr, "unknown role or arguments: %s\n", role.c_str());
  return 2;
}

/// Removes stale objects, then runs the benchmarks the command line selects. Nonzero: an argument
/// Google Benchmark does not know.
inline int run_benchmarks(int& argc, char** argv) {
  sweep_stale();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

/// Returns the `--role=` value of argv[1], or "" for a normal benchmark run.
inline std::string role_of(int argc, char** argv) {
  if (argc >= 2 && std::strncmp(argv[1], "--role=", 7) == 0) return argv[1] + 7;
  return {};
}

/// A helper role of a bench binary: its `--role=` name, the least argc it needs (the program name
/// and --role= included) and what runs it, given the arguments after --role=.
struct role {
  const char* name;
  int min_argc;
  int (*run)(char** args);
};

/// A bench binary's main(): runs the helper role argv[1] names, with the arguments after it (exit
/// status 2 when the role is unknown or has too few), or else `before()` if given, the benchmarks
/// the command line selects, and `after()` (a summary) if given.
inline int run_main(int argc, char** argv, std::span<const role> roles, void (*before)() = nullptr,
                    void (*after)() = nullptr) {
  if (const auto name = role_of(argc, argv); !name.empty()) {
    for (const auto& r : roles)
      if (name == r.name && argc >= r.min_argc) return r.run(argv + 2);
    return unknown_role(name);
  }
  if (before) before();
  if (const int rc = run_benchmarks(argc, argv)) return rc;
  if (after) after();
  return 0;
}

}  // namespace bench
