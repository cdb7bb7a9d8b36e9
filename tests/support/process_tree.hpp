#pragma once
// What a keeper test looks at around a process on Linux: its place in the process tree (/proc),
// its zombies, the listening sockets it holds, the objects left in /dev/shm, and a stand-in for
// systemd's notify socket. POSIX in posix/process_tree_posix.cpp. Windows has no zombies, no
// /proc, no /dev/shm and no notify socket: the Windows half (win/process_tree_win.cpp) answers
// "nothing" and the tests that rely on these run their checks on Linux only.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace baton::test {

/// A process's state letter and parent ('\0' and 0 if it is gone). /proc/<pid>/stat.
struct proc_stat {
  char state = '\0';
  std::uint32_t ppid = 0;
};
proc_stat read_stat(std::uint32_t pid);
/// The processes whose parent is `ppid`, with their state.
std::vector<std::pair<std::uint32_t, proc_stat>> children_of(std::uint32_t ppid);
/// Waits (up to 10 s) until `ppid` has no zombie child; returns how many are left.
std::size_t wait_no_zombie(std::uint32_t ppid);
/// The value of `key:` in /proc/<pid>/status ("" if none).
std::string status_field(std::uint32_t pid, const std::string& key);
/// True if `pid` holds a listening TCP socket (its socket inodes against /proc/net/tcp{,6}).
bool holds_tcp_listener(std::uint32_t pid);
/// True if an entry of /dev/shm contains `fragment`.
bool shm_has(const std::string& fragment);

/// A datagram socket at `path` that records every message sent to it with its sender's pid, as
/// systemd's NOTIFY_SOCKET does, on a thread of its own until destroyed.
class notify_socket {
 public:
  explicit notify_socket(const std::string& path);
  ~notify_socket();
  notify_socket(const notify_socket&) = delete;
  notify_socket& operator=(const notify_socket&) = delete;
  /// False if the socket could not be made (then nothing is recorded).
  bool ok() const;
  /// The messages heard so far: sender pid, text.
  std::vector<std::pair<std::uint32_t, std::string>> heard() const;
  /// How many messages heard so far contain `what`.
  long count(const std::string& what) const;

 private:
  struct state;
  std::unique_ptr<state> st_;
};

}  // namespace baton::test
