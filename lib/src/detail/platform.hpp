#pragma once
// The one internal interface between Baton's shared code and its two backends
// (lib/src/win/ and lib/src/posix/). Shared code includes only this header for OS services.

#include <baton/error.hpp>
#include <baton/ticket.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/interprocess/mapped_region.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace baton::detail {

/// The calling process's id.
std::uint32_t current_pid() noexcept;

/// Platform object name for a validated Baton name and a suffix, e.g. "/baton.NAME.ring" on
/// POSIX or "Local\baton.NAME.ring" on Windows.
std::string object_name(const std::string& name, const char* suffix, bool global_namespace);

/// Creates a private (owner-only) shared memory region; fails with errc::name_in_use if the name
/// exists. The region is zero-filled.
boost::interprocess::mapped_region create_region(const std::string& os_name, std::size_t size, error_code& ec);
/// Like create_region, but `init` fills the region before any other process can open it by name:
/// POSIX creates it under a private name and links it into place (failing with errc::name_in_use
/// if the name exists by then); Windows runs `init` right after creation, and openers wait for a
/// header that is still zero (see channel::open).
using region_init = std::function<void(void* base, std::size_t size)>;
boost::interprocess::mapped_region create_region(const std::string& os_name, std::size_t size, const region_init& init,
                                                 error_code& ec);
/// Opens an existing region, refusing one not owned by the caller's user (errc::not_owner).
boost::interprocess::mapped_region open_region(const std::string& os_name, error_code& ec);
/// Removes the region's name (POSIX unlink; a no-op on Windows where names die with their last handle).
void remove_region(const std::string& os_name) noexcept;

/// Removes the names of channel `name` if its receiver is dead. `owner_of` reads the owner pid
/// from the first bytes of the region (0: no valid header). errc::name_in_use while the owner lives
/// or the region is young and has no valid header yet; errc::not_owner for another user's object
/// (left alone). POSIX removes only what it verified: under an exclusive lock of the region it
/// checked, and only while the name still names that region; the doorbell and the transfer
/// endpoint go before the region, so that no new channel of the name can exist meanwhile.
/// Windows removes nothing (names die with their last handle) but reports the same errors.
using owner_reader = std::function<std::uint32_t(const void* header, std::size_t bytes)>;
void remove_stale_channel(const std::string& name, const owner_reader& owner_of, error_code& ec);

/// Says which of channel `name`'s objects belong to another user, with their paths and owners,
/// and what to do; empty if none does (or the platform cannot tell: Windows).
std::string describe_foreign_objects(const std::string& name);
/// Names of the channels whose ring object exists and belongs to this user (the receiver may be
/// dead): POSIX reads the "baton.NAME.ring" entries of /dev/shm. Windows cannot list the named
/// objects of a session simply: boost::asio::error::operation_not_supported.
std::vector<std::string> list_channel_names(error_code& ec);
/// Regions from create_region/open_region are guarded against another process truncating their
/// object (POSIX: an access past the end would raise SIGBUS). A fault inside a guarded region
/// grows the object back to the region's size (the lost pages read as zeros) or, if that fails,
/// replaces the region's pages with private zero pages and marks it lost. Windows: a mapped
/// section cannot be truncated; these are no-ops. Thread-safe.
/// Faults recovered in the region starting at `base` so far (0 for an unknown region).
std::uint64_t region_faults(const void* base) noexcept;
/// True once the region could not be restored and no longer reaches the shared object.
bool region_lost(const void* base) noexcept;
/// Stops guarding the region (before it is unmapped). A null or unknown base is ignored.
void unguard_region(const void* base) noexcept;

/// Receiving side: which transferred handles are still wanted. `wanted(slot, id)` is false once
/// the sender of ticket `id` gave up and its ack slot moved on.
using transfer_wanted = std::function<bool(std::uint32_t slot, const ticket_id& id)>;

/// A channel's endpoint of the transfer layer, made by the backend and held by the channel, which
/// passes it to export_socket / import_socket (detail/stream.hpp). Receiving side: Linux the Unix
/// socket that SCM_RIGHTS pushes arrive on; Windows a table with one entry per ack slot, in which
/// a source records the handle it made for us before the ticket exists, so that we can close it
/// if the ticket never comes. Sending side: how to reach the receiver's (Linux: the socket's
/// path; Windows: its table, opened on first use). The receiving side's objects are removed
/// with it. Use from the channel's strand.
class transfer_endpoint {
 public:
  virtual ~transfer_endpoint() = default;
  /// Receiving side: closes the socket handles that senders made for this process (SCM_RIGHTS
  /// datagrams on Linux, table entries on Windows) whose tickets will never be claimed: `wanted`
  /// is false, or the sender died before this call's previous one and no ticket of it is left in
  /// the ring (the caller calls this only when the ring was just seen empty). Without this, a
  /// copy of a rolled-back socket would stay with the receiver and the client would never see
  /// the source's close. A no-op on a sending endpoint.
  virtual void collect_orphans(const transfer_wanted& wanted) noexcept = 0;
};

/// The endpoint of channel `channel_name`: with `receiver`, creates the receiving side's objects
/// (errc::name_in_use if they exist); otherwise the sending side's (which opens nothing yet).
std::unique_ptr<transfer_endpoint> open_transfer_endpoint(const std::string& channel_name, std::uint32_t ack_slots,
                                                          bool global_namespace, bool receiver, error_code& ec);
/// Removes the receiving endpoint objects a dead receiver of `channel_name` left behind, if they
/// are this user's (POSIX; a no-op on Windows, where names die with their last handle).
void remove_transfer_endpoint(const std::string& channel_name) noexcept;

/// Watches another process for exit. Thread-safe after construction.
class process_watch {
 public:
  process_watch() noexcept;
  explicit process_watch(std::uint32_t pid);
  process_watch(process_watch&& o) noexcept
      : pid_(std::exchange(o.pid_, 0)), handle_(std::exchange(o.handle_, std::intptr_t{-1})) {}
  process_watch& operator=(process_watch&& o) noexcept {
    if (this != &o) {
      process_watch old(std::move(*this));  // closes our handle on the way out
      pid_ = std::exchange(o.pid_, 0);
      handle_ = std::exchange(o.handle_, std::intptr_t{-1});
    }
    return *this;
  }
  ~process_watch();
  /// True while the process exists. A process that cannot be observed (no such pid) is dead.
  bool alive() const noexcept;
  std::uint32_t pid() const noexcept { return pid_; }

 private:
  std::uint32_t pid_ = 0;
  std::intptr_t handle_ = -1;  // pidfd on Linux, HANDLE on Windows
};

/// Awaits another process's exit through the reactor, without polling: Linux a pidfd
/// (pidfd_open) in an asio::posix::stream_descriptor waiting for readability; Windows an
/// OpenProcess(SYNCHRONIZE) handle in an asio::windows::object_handle. With `reap`, a POSIX child
/// of this process is reaped once it has exited (only for children the caller started itself).
/// Not thread-safe; use from one strand.
class process_exit_wait {
 public:
  process_exit_wait() noexcept;
  /// A process that no longer exists is not an error: the wait then completes at once.
  process_exit_wait(const boost::asio::any_io_executor& ex, std::uint32_t pid, bool reap, error_code& ec);
  process_exit_wait(process_exit_wait&&) noexcept;
  process_exit_wait& operator=(process_exit_wait&&) noexcept;
  ~process_exit_wait();
  /// Completes with success once the process has exited, operation_aborted after cancel().
  void async_wait(boost::asio::any_completion_handler<void(error_code)> handler);
  void cancel() noexcept;

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

/// True where a socket accepted from a listening socket with TCP_NODELAY has it too (Linux), so a
/// dispatcher sets it once on the acceptor instead of once per connection.
bool accepted_socket_inherits_no_delay() noexcept;

/// Hard kill (SIGKILL / TerminateProcess) and wait until the process is gone (fault injection).
void kill_process_hard(std::uint32_t pid) noexcept;

/// One-shot liveness probe for a pid (used for the pids of ring producers).
bool process_alive(std::uint32_t pid) noexcept;

/// Cross-process wake-up. The receiving side creates it and awaits it through its reactor; any
/// number of senders open it by name and ring it. A ring while nobody waits is remembered (at
/// least one wake-up follows). Not thread-safe; use from one strand.
class doorbell {
 public:
  using wait_handler = boost::asio::any_completion_handler<void(error_code)>;

  doorbell() noexcept;
  doorbell(doorbell&&) noexcept;
  doorbell& operator=(doorbell&&) noexcept;
  ~doorbell();

  /// Receiving end. Fails with errc::name_in_use if the name exists.
  static doorbell create(const boost::asio::any_io_executor& ex, const std::string& os_name, error_code& ec);
  /// Ringing end.
  static doorbell open(const std::string& os_name, error_code& ec);
  /// Removes the name (POSIX only), if it is a FIFO of this user.
  static void remove(const std::string& os_name) noexcept;

  /// Wakes the receiver. Async-signal-safe in spirit: one system call, never blocks.
  void ring() noexcept;
  /// Completes when rung (after consuming the ring) or with operation_aborted after cancel().
  void async_wait(wait_handler handler);
  void cancel() noexcept;
  bool is_open() const noexcept;

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

/// The operating system's restart trigger of a service: Linux SIGHUP to the process; Windows the
/// named auto-reset event Local\baton.<service>.restart (owner-only DACL), awaited by the reactor.
class restart_trigger {
 public:
  virtual ~restart_trigger() = default;
  /// Completes when triggered, or with operation_aborted after cancel().
  virtual void async_wait(boost::asio::any_completion_handler<void(error_code)> h) = 0;
  virtual void cancel() noexcept = 0;
};
/// errc::name_in_use while another process (the previous generation) still holds the trigger.
std::unique_ptr<restart_trigger> make_restart_trigger(const boost::asio::any_io_executor& ex,
                                                      const std::string& service, error_code& ec);
/// Fires the trigger of `service`, run by process `pid`, from another process.
void fire_restart_trigger(const std::string& service, std::uint32_t pid, error_code& ec);

/// What a keeper (baton/keeper.hpp) needs from the operating system: the exits of the processes
/// it started, with their status; the OS's restart and stop requests; and the reaping of every
/// other child that ends up with it. POSIX: one signal_set for SIGCHLD, SIGHUP, SIGTERM and
/// SIGINT; every child is reaped (waitpid(-1)), orphans too, since a keeper that is not PID 1
/// makes itself their reaper (Linux PR_SET_CHILD_SUBREAPER). Windows: a process handle per
/// started process awaited through the reactor, Ctrl+C (SIGINT) and SIGTERM as stop requests; no
/// restart signal (the service's named event and batonctl do that). Use from one strand.
class keeper_os {
 public:
  struct events {
    /// A process passed to watch() has exited: its exit code, or 128 + the signal that ended it.
    std::function<void(std::uint32_t pid, int status)> exited;
    std::function<void()> restart;  ///< SIGHUP
    std::function<void()> stop;     ///< SIGTERM, SIGINT (Ctrl+C)
  };
  virtual ~keeper_os() = default;
  /// Reports the exit of `pid`, a child this process started.
  virtual void watch(std::uint32_t pid) = 0;
  /// Asks `pid` to stop at once: POSIX SIGTERM (a generation already stopping then cuts what is
  /// left; one not yet serving ends), Windows TerminateProcess.
  virtual void stop_at_once(std::uint32_t pid) noexcept = 0;
  virtual void close() noexcept = 0;
};
std::unique_ptr<keeper_os> make_keeper_os(const boost::asio::any_io_executor& ex, keeper_os::events ev, error_code& ec);

/// Makes a T from `args` and starts it (`start(error_code&)`): nullptr and `ec` if it would not
/// start. Both platforms' make_keeper_os.
template <class T, class... Args>
std::unique_ptr<T> make_started(error_code& ec, Args&&... args) {
  ec.clear();
  auto t = std::make_unique<T>(std::forward<Args>(args)...);
  t->start(ec);
  if (ec) return nullptr;
  return t;
}
/// Sets an environment variable of this process, inherited by the children it starts next.
void set_environment(const std::string& name, const std::string& value);

/// The service's state, for the service manager that started this process.
enum class supervisor_state { ready, reloading, stopping, status };
/// Tells the service manager about the service: systemd through libsystemd's sd_notify (to
/// NOTIFY_SOCKET; READY=1, RELOADING=1 with MONOTONIC_USEC, STOPPING=1, each with STATUS=`status`,
/// and MAINPID=`main_pid` unless 0: the process systemd is to watch from now on).
/// Returns false where nobody listens (no NOTIFY_SOCKET), the build has no libsystemd, or on
/// Windows (the Service Control Manager is a stateful connection: detail/windows_service.hpp).
bool notify_supervisor(supervisor_state s, const std::string& status, std::uint32_t main_pid = 0) noexcept;
/// True where notify_supervisor can reach systemd (the build has libsystemd).
bool supervisor_notify_built() noexcept;

/// What one process (the keeper, or a generation run without one) tells the service manager, in
/// the order systemd expects: READY=1 once serving, then per restart RELOADING=1 and READY=1 again
/// (or STOPPING=1). A READY outside a reload is only a STATUS= update. Use from one strand.
class supervisor_notes {
 public:
  void tell(supervisor_state s, const std::string& status, std::uint32_t main_pid = 0) {
    if (s == supervisor_state::ready && !reloading_ && ready_told_) s = supervisor_state::status;
    if (s == supervisor_state::ready) ready_told_ = true;
    if (s != supervisor_state::status) reloading_ = s == supervisor_state::reloading;
    notify_supervisor(s, status, main_pid);
  }
  /// Between a RELOADING=1 and the READY=1 (or STOPPING=1) that ends it.
  bool reloading() const noexcept { return reloading_; }

 private:
  bool ready_told_ = false, reloading_ = false;
};

/// A listening socket the service manager passed to this process, and its name (systemd's
/// FileDescriptorName=, from LISTEN_FDNAMES; "unknown" where none was given).
struct activated_listener {
  std::uintptr_t handle = 0;
  std::string name;
};
/// The listening sockets the service manager passed to this process (systemd socket activation:
/// LISTEN_FDS and LISTEN_FDNAMES for this pid, read with libsystemd's sd_listen_fds_with_names,
/// which also removes the variables), in order; none where there are none, without libsystemd,
/// or on Windows.
std::vector<activated_listener> take_activated_listeners() noexcept;
/// The variables through which a keeper passes activated listeners to its first generation, which
/// adopts them instead of binding: their numbers, comma-separated, and their names, separated by
/// ':' as in LISTEN_FDNAMES (a name cannot hold one).
inline constexpr const char* activated_listeners_variable = "BATON_LISTEN_FDS";
inline constexpr const char* activated_names_variable = "BATON_LISTEN_FDNAMES";

}  // namespace baton::detail
