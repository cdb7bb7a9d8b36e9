#pragma once
// Multi-process test support: a test binary re-runs itself in a helper role
// (`--role=NAME args...`), and every named OS object gets a unique, guarded name.
#include <baton/channel.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace baton::test {

/// A channel name unique to this process and call, e.g. "test-t-1234-7-9f3a".
std::string unique_name(const std::string& tag);
/// The pid of the test process that made a name with unique_name ("...-<pid>-<n>-<hex>"; anything
/// may come before it), 0 if `name` has no such tail.
std::uint32_t unique_name_pid(const std::string& name);

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
  /// Runs any program: argv[0] is its path (e.g. helper_exe("../samples/batonctl")).
  static child run(std::vector<std::string> argv) { return launch(std::move(argv)); }
  std::uint32_t pid() const noexcept { return pid_; }
  bool running();
  /// Waits for exit; returns the exit code, or -1 if the deadline passed (the child is killed).
  int wait(std::chrono::milliseconds deadline = std::chrono::seconds(60));
  /// Hard kill (SIGKILL / TerminateProcess), then reaps.
  void kill();
  /// Like run, with the program's standard output written to the file `out` (created or
  /// truncated); its standard error stays ours.
  static child run_to_file(std::vector<std::string> argv, const std::string& out);

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
/// kill_process, then waits (up to 10 s) until the process is gone, so that a name_guard after
/// it finds its channels' owner dead and removes them.
void kill_process_and_wait(std::uint32_t pid);
/// The pid of whichever generation of `service` answers its status within `timeout` (0: none).
std::uint32_t service_generation_pid(const std::string& service,
                                     std::chrono::milliseconds timeout = std::chrono::seconds(5));
/// Kills whichever generation of `service` answers its status now, and waits until it is gone
/// (nothing if none answers within 5 s).
void kill_service_generation(const std::string& service);
/// POSIX: sends SIGTERM (a polite stop) and returns true. Windows has no such signal: false.
bool terminate_process(std::uint32_t pid);
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

/// Runs a program (argv[0] its path) to its end, its standard output in `out`; returns its exit
/// code, or -1 if it was still running at the deadline (then it is killed).
int run_capture(const std::vector<std::string>& argv, std::string& out,
                std::chrono::milliseconds deadline = std::chrono::seconds(120));

// A process stalled on purpose (the ring's stopped producer): on POSIX it stops itself (SIGSTOP)
// and resume_stalled sends SIGCONT; on Windows it waits for the file `resume`, which
// resume_stalled touches. wait_until_stalled waits (up to `deadline`) until `pid` is stopped by a
// signal (POSIX, from /proc); on Windows the stall is the wait for the file, so it is true at once.
void stall_until_resumed(const std::string& resume);
void resume_stalled(std::uint32_t pid, const std::string& resume);
bool wait_until_stalled(std::uint32_t pid, std::chrono::milliseconds deadline);

// Shrinks the shared object of channel `name`'s ring to nothing (POSIX: shm_open + ftruncate);
// false if that failed. A Windows section cannot be truncated while mapped: false there.
bool truncate_channel_ring(const std::string& name);

// POSIX descriptors for the tests of descriptors that are not sockets: a pipe opened without
// FD_CLOEXEC ({read end, write end}), a descriptor's F_GETFD flags, and close. On Windows these
// throw std::logic_error (their tests skip there).
std::pair<std::uint64_t, std::uint64_t> open_plain_pipe();
int descriptor_flags(std::uint64_t fd);
void close_descriptor(std::uint64_t fd);

// A squatter's ring: a world-writable 1 MiB shared object under channel `name`'s ring name, made
// by someone else than the library (false if it could not be made). It lasts until
// unlink_squatted_ring (POSIX: shm_unlink) or, on Windows, until the squatting process exits.
bool squat_channel_ring(const std::string& name);
void unlink_squatted_ring(const std::string& name);

// The security of channel `name`'s named objects, as the platform reports it. POSIX (the files
// under /dev/shm: .ring, .bell, .sock): stat's permission bits and whether the owner is this
// user. Windows (the Local\ mapping .ring and event .bell): the owner and the DACL's entries.
// Each throws std::logic_error on the other platform (its test skips there).
struct posix_object_mode {
  std::string suffix;
  bool found = false;
  unsigned mode = 0;  // st_mode & 0777
  bool owner_is_me = false;
};
std::vector<posix_object_mode> channel_object_modes(const std::string& name);
struct windows_ace {
  bool allowed = false;  // ACCESS_ALLOWED_ACE_TYPE
  bool is_me = false;    // this user's SID
  std::string sid;       // as a string ("?" if it could not be converted)
};
struct windows_object_acl {
  std::string object;
  unsigned long open_error = 0;  // GetLastError() if the object could not be opened
  bool opened = false, read = false, owner_is_me = false, has_dacl = false;
  std::vector<windows_ace> aces;
};
std::vector<windows_object_acl> channel_object_acls(const std::string& name);
// Whether the ring's mapping can be opened under Global\ (it must be Local\ only).
bool channel_ring_is_global(const std::string& name);

// Removes what dead processes left of a service's channels (the control channel and inboxes,
// whatever their suffix; POSIX, from /dev/shm). Windows names die with the last handle: nothing.
void remove_service_names(const std::string& service);

// Whether this process runs as root (POSIX); false on Windows.
bool running_as_root();

// Objects of another uid ("nobody") under /dev/shm, removed when this goes (root may remove them).
// POSIX only: on Windows add_* throw std::logic_error.
struct foreign_objects {
  std::vector<std::string> paths;
  foreign_objects() = default;
  foreign_objects(const foreign_objects&) = delete;
  foreign_objects& operator=(const foreign_objects&) = delete;
  ~foreign_objects();
  std::uint32_t uid() const;
  bool add_region(const std::string& path);  // a 4 KiB file
  bool add_fifo(const std::string& path);
};

// The checks of restart_names' elevated_objects_carry_a_high_mandatory_label (gtest assertions):
// the labelled SDDL of an elevated process's objects, and that Windows accepts it. Windows only:
// throws std::logic_error elsewhere.
void check_high_mandatory_label_sddl();

}  // namespace baton::test
