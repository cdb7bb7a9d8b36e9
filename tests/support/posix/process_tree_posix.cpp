// The POSIX half of process_tree.hpp: /proc, /dev/shm, and a stand-in for systemd's notify socket.
#include "process_tree.hpp"

#include "test_support.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <mutex>
#include <set>
#include <sstream>
#include <sys/socket.h>
#include <sys/un.h>
#include <thread>
#include <unistd.h>

namespace baton::test {

using namespace std::chrono_literals;

namespace {

// A /proc file's text ("" if it cannot be read: the process may have just gone, and a read
// then fails with ESRCH, which iostreams would throw).
std::string read_proc(const std::string& path) {
  std::string s;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return s;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) s.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return s;
}
}  // namespace

proc_stat read_stat(std::uint32_t pid) {
  const std::string s = read_proc("/proc/" + std::to_string(pid) + "/stat");
  const auto close = s.rfind(')');  // the command may contain spaces and parentheses
  proc_stat st;
  if (close == std::string::npos) return st;
  std::istringstream rest(s.substr(close + 1));
  rest >> st.state >> st.ppid;
  return st;
}
std::vector<std::pair<std::uint32_t, proc_stat>> children_of(std::uint32_t ppid) {
  std::vector<std::pair<std::uint32_t, proc_stat>> out;
  DIR* d = ::opendir("/proc");
  if (!d) return out;
  while (const dirent* e = ::readdir(d)) {
    char* end = nullptr;
    const auto pid = std::strtoul(e->d_name, &end, 10);
    if (pid == 0 || *end != '\0') continue;
    const auto st = read_stat(static_cast<std::uint32_t>(pid));
    if (st.state != '\0' && st.ppid == ppid) out.emplace_back(static_cast<std::uint32_t>(pid), st);
  }
  ::closedir(d);
  return out;
}
namespace {
std::size_t zombies_of(std::uint32_t ppid) {
  std::size_t n = 0;
  for (auto& [pid, st] : children_of(ppid)) n += st.state == 'Z';
  return n;
}
}  // namespace

std::size_t wait_no_zombie(std::uint32_t ppid) {
  const auto until = std::chrono::steady_clock::now() + 10s;
  std::size_t n = zombies_of(ppid);
  while (n != 0 && std::chrono::steady_clock::now() < until) {
    nap(20ms);
    n = zombies_of(ppid);
  }
  return n;
}
std::string status_field(std::uint32_t pid, const std::string& key) {
  std::istringstream f(read_proc("/proc/" + std::to_string(pid) + "/status"));
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key + ":", 0) == 0) return line.substr(key.size() + 1);
  return {};
}
bool holds_tcp_listener(std::uint32_t pid) {
  std::set<std::string> inodes;
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      char target[256];
      const auto n = ::readlink((dir + "/" + e->d_name).c_str(), target, sizeof target - 1);
      if (n <= 0) continue;
      const std::string t(target, static_cast<std::size_t>(n));
      if (t.rfind("socket:[", 0) == 0) inodes.insert(t.substr(8, t.size() - 9));
    }
    ::closedir(d);
  }
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::istringstream f(read_proc(table));
    std::string line;
    std::getline(f, line);  // header
    while (std::getline(f, line)) {
      std::istringstream w(line);
      std::string sl, local, remote, state, queues, timer, retr, uid, timeout, inode;
      w >> sl >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >> inode;
      if (state == "0A" && inodes.count(inode)) return true;  // 0A: LISTEN
    }
  }
  return false;
}
bool shm_has(const std::string& fragment) {
  bool found = false;
  if (DIR* d = ::opendir("/dev/shm")) {
    while (const dirent* e = ::readdir(d))
      if (std::string(e->d_name).find(fragment) != std::string::npos) found = true;
    ::closedir(d);
  }
  return found;
}

struct notify_socket::state {
  int fd = -1;
  std::string path;
  mutable std::mutex m;
  std::vector<std::pair<std::uint32_t, std::string>> heard;
  std::atomic<bool> done{false};
  std::thread listener;

  void listen() {
    while (!done) {
      char buf[4096];
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
      iovec iov{buf, sizeof buf};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      const auto n = ::recvmsg(fd, &msg, 0);
      if (n <= 0) continue;  // the receive timeout: look at `done` again
      std::uint32_t pid = 0;
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
          ucred cr{};
          std::memcpy(&cr, CMSG_DATA(c), sizeof cr);
          pid = static_cast<std::uint32_t>(cr.pid);
        }
      std::lock_guard lk(m);
      heard.emplace_back(pid, std::string(buf, static_cast<std::size_t>(n)));
    }
  }
};

notify_socket::notify_socket(const std::string& path) : st_(std::make_unique<state>()) {
  st_->path = path;
  remove_file(path);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return;
  }
  const int on = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on);
  timeval tv{0, 100000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  st_->fd = fd;
  st_->listener = std::thread([s = st_.get()] { s->listen(); });
}

notify_socket::~notify_socket() {
  st_->done = true;
  if (st_->listener.joinable()) st_->listener.join();
  if (st_->fd >= 0) ::close(st_->fd);
  remove_file(st_->path);
}

bool notify_socket::ok() const { return st_->fd >= 0; }

std::vector<std::pair<std::uint32_t, std::string>> notify_socket::heard() const {
  std::lock_guard lk(st_->m);
  return st_->heard;
}

long notify_socket::count(const std::string& what) const {
  std::lock_guard lk(st_->m);
  return std::count_if(st_->heard.begin(), st_->heard.end(),
                       [&](const auto& h) { return h.second.find(what) != std::string::npos; });
}

}  // namespace baton::test
