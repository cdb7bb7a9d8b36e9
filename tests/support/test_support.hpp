#pragma once
// Multi-process test support: a test binary re-runs itself in a helper role
// (`--role=NAME args...`), and every named OS object gets a unique, guarded name.
#include <baton/channel.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace baton::test {

/// A channel name unique to this process and call, e.g. "t-1234-7-9f3a".
std::string unique_name(const std::string& tag);

/// Removes the channel's names before and after the test, so a crashed run never breaks the next.
struct name_guard {
  std::string name;
  explicit name_guard(std::string n);
  ~name_guard();
};

/// Path of this test executable.
std::string self_exe();
/// Path of a helper executable built next to this one (`name` without suffix).
std::string helper_exe(const std::string& name);

/// A helper process running this test binary in a role.
class child {
 public:
  child() = default;
  child(child&&) noexcept;
  child& operator=(child&&) noexcept;
  ~child();  // kills the child if still running

  static child spawn(const std::string& role, const std::vector<std::string>& args = {});
  /// POSIX: runs `prefix... <this binary> --role=... args...` (e.g. setpriv to drop privileges).
  static child spawn_wrapped(const std::vector<std::string>& prefix, const std::string& role,
                             const std::vector<std::string>& args = {});
  /// Runs another executable in a role: a small helper binary (see helper_exe) whose start-up
  /// costs less than this test binary's when a test starts hundreds of processes.
  static child spawn_exe(const std::string& exe, const std::string& role, const std::vector<std::string>& args = {});
  std::uint32_t pid() const noexcept { return pid_; }
  bool running();
  /// Waits for exit; returns the exit code, or -1 if the deadline passed (the child is killed).
  int wait(std::chrono::milliseconds deadline = std::chrono::seconds(60));
  /// Hard kill (SIGKILL / TerminateProcess), then reaps.
  void kill();

 private:
  static child launch(std::vector<std::string> argv);  // platform half (posix/, win/)
  std::uint32_t pid_ = 0;
  std::intptr_t handle_ = -1;
  int exit_code_ = -1;
  bool reaped_ = true;
};

using role_fn = std::function<int(const std::vector<std::string>& args)>;
struct role_registrar {
  role_registrar(const char* name, role_fn fn);
};
#define BATON_CONCAT2(a, b) a##b
#define BATON_CONCAT(a, b) BATON_CONCAT2(a, b)
/// Defines a helper role: BATON_TEST_ROLE(sender) { ... return 0; } with `args` in scope.
#define BATON_TEST_ROLE(name)                                                             \
  static int baton_role_##name(const std::vector<std::string>& args);                     \
  static ::baton::test::role_registrar BATON_CONCAT(baton_role_reg_, name)(#name, &baton_role_##name); \
  static int baton_role_##name([[maybe_unused]] const std::vector<std::string>& args)

/// Hard-kills a process that is not our child (e.g. a later generation of a restarted service).
void kill_process(std::uint32_t pid);
/// True while a process with this pid exists (not our child: no reaping needed).
bool process_exists(std::uint32_t pid);
/// Stops every thread of a process until resume_process (SIGSTOP / NtSuspendProcess).
void stop_process(std::uint32_t pid);
void resume_process(std::uint32_t pid);
/// Stops this process until another resumes it.
void stop_self();
/// True where the SCM_RIGHTS transfer strategy exists (POSIX): tests of it skip elsewhere.
bool host_has_scm_rights();
/// True in the Windows build (where a test pins a known Windows gap, say).
bool host_is_windows();

/// What this process holds: open descriptors (Linux) or handles (Windows), and memory.
struct process_usage {
  std::uint64_t handles = 0;  ///< entries of /proc/self/fd, or GetProcessHandleCount (probed under Wine)
  std::uint64_t rss = 0;      ///< VmRSS, or the working set (bytes)
  /// Private memory (bytes): VmRSS without RssShmem (the pages of the channels' shared rings),
  /// or PagefileUsage (private committed bytes, which exclude section views).
  std::uint64_t priv = 0;
  std::uint64_t threads = 0;  ///< threads of this process
};
process_usage measure_process();

/// Reports bytes whose continuity a test checked ("[ BYTES    ] N ..."), summed by scripts/test.
void report_bytes_checked(std::uint64_t n);

/// Deterministic pseudo-random bytes for (seed, index): what senders write and receivers check.
void fill_pattern(std::uint64_t seed, std::byte* out, std::size_t n);
bool check_pattern(std::uint64_t seed, const std::byte* data, std::size_t n);

/// Sleeps a little (a child waiting for its parent's signal polls with this).
void nap(std::chrono::milliseconds ms);
/// Sets an environment variable of this process (children inherit it); empty removes it.
void set_env(const char* name, const std::string& value);

/// Simple cross-process flag: a file whose existence signals an event between parent and child.
std::string temp_path(const std::string& tag);
bool file_exists(const std::string& path);
void touch(const std::string& path);
void remove_file(const std::string& path);
/// Waits until `path` exists or the deadline passes.
bool wait_for_file(const std::string& path, std::chrono::milliseconds deadline = std::chrono::seconds(30));

}  // namespace baton::test
