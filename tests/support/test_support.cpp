#include "test_support.hpp"

#include "net_helpers.hpp"

#include <baton/spawn.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#ifdef _WIN32
#include <boost/asio/detail/socket_types.hpp>
#include <windows.h>
#include <psapi.h>
#include <tlhelp32.h>
#else
#include <csignal>
#include <ctime>
#include <dirent.h>
#include <sys/stat.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
extern char** environ;
#endif

namespace baton::test {

namespace {
std::map<std::string, role_fn>& roles() {
  static std::map<std::string, role_fn> r;
  return r;
}

std::uint32_t self_pid() { return baton::current_process_id(); }
std::string self_path() { return baton::current_executable_path(); }
}  // namespace

std::string self_exe() { return self_path(); }

role_registrar::role_registrar(const char* name, role_fn fn) { roles()[name] = std::move(fn); }

std::string unique_name(const std::string& tag) {
  static std::atomic<int> counter{0};
  std::random_device rd;
  char buf[96];
  std::snprintf(buf, sizeof buf, "test-%s-%u-%d-%04x", tag.c_str(), static_cast<unsigned>(self_pid()),
                counter.fetch_add(1), static_cast<unsigned>(rd() & 0xFFFF));
  return buf;
}

name_guard::name_guard(std::string n) : name(std::move(n)) {
  error_code ec;
  channel::remove_stale(name, ec);
}
name_guard::~name_guard() {
  error_code ec;
  channel::remove_stale(name, ec);
}

child::child(child&& o) noexcept { *this = std::move(o); }
child& child::operator=(child&& o) noexcept {
  if (this != &o) {
    kill();
    pid_ = o.pid_;
    handle_ = o.handle_;
    exit_code_ = o.exit_code_;
    reaped_ = o.reaped_;
    o.pid_ = 0;
    o.handle_ = -1;
    o.reaped_ = true;
  }
  return *this;
}
child::~child() { kill(); }

child child::spawn(const std::string& role, const std::vector<std::string>& args) {
  return spawn_wrapped({}, role, args);
}

child child::spawn_wrapped(const std::vector<std::string>& prefix, const std::string& role,
                           const std::vector<std::string>& args) {
  child c;
  std::vector<std::string> argv = prefix;
  argv.push_back(self_path());
  argv.push_back("--role=" + role);
  argv.insert(argv.end(), args.begin(), args.end());
#ifdef _WIN32
  std::string cmd;
  for (auto& a : argv) cmd += "\"" + a + "\" ";
  STARTUPINFOA si{};
  si.cb = sizeof si;
  PROCESS_INFORMATION pi{};
  if (!::CreateProcessA(nullptr, cmd.data(), nullptr, nullptr, FALSE, 0, nullptr, nullptr, &si, &pi))
    throw std::runtime_error("CreateProcess failed: " + std::to_string(::GetLastError()));
  ::CloseHandle(pi.hThread);
  c.pid_ = pi.dwProcessId;
  c.handle_ = reinterpret_cast<std::intptr_t>(pi.hProcess);
#else
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  pid_t pid = 0;
  if (::posix_spawnp(&pid, cargv[0], nullptr, nullptr, cargv.data(), environ) != 0)
    throw std::runtime_error("posix_spawn failed");
  c.pid_ = static_cast<std::uint32_t>(pid);
#endif
  c.reaped_ = false;
  return c;
}

bool child::running() {
  if (reaped_) return false;
#ifdef _WIN32
  DWORD code = 0;
  if (::WaitForSingleObject(reinterpret_cast<HANDLE>(handle_), 0) == WAIT_OBJECT_0) {
    ::GetExitCodeProcess(reinterpret_cast<HANDLE>(handle_), &code);
    exit_code_ = static_cast<int>(code);
    ::CloseHandle(reinterpret_cast<HANDLE>(handle_));
    handle_ = -1;
    reaped_ = true;
    return false;
  }
  return true;
#else
  int status = 0;
  pid_t r = ::waitpid(static_cast<pid_t>(pid_), &status, WNOHANG);
  if (r == 0) return true;
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  reaped_ = true;
  return false;
#endif
}

int child::wait(std::chrono::milliseconds deadline) {
  auto end = std::chrono::steady_clock::now() + deadline;
  while (running()) {
    if (std::chrono::steady_clock::now() > end) {
      kill();
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return exit_code_;
}

void child::kill() {
  if (reaped_) return;
#ifdef _WIN32
  ::TerminateProcess(reinterpret_cast<HANDLE>(handle_), 137);
  ::WaitForSingleObject(reinterpret_cast<HANDLE>(handle_), 10000);
#else
  ::kill(static_cast<pid_t>(pid_), SIGKILL);
#endif
  wait(std::chrono::seconds(10));
}

void kill_process(std::uint32_t pid) {
#ifdef _WIN32
  HANDLE h = ::OpenProcess(PROCESS_TERMINATE | SYNCHRONIZE, FALSE, pid);
  if (!h) return;
  ::TerminateProcess(h, 137);
  ::WaitForSingleObject(h, 10000);
  ::CloseHandle(h);
#else
  ::kill(static_cast<pid_t>(pid), SIGKILL);
#endif
}

bool process_exists(std::uint32_t pid) {
#ifdef _WIN32
  HANDLE h = ::OpenProcess(SYNCHRONIZE, FALSE, pid);
  if (!h) return false;
  const bool alive = ::WaitForSingleObject(h, 0) == WAIT_TIMEOUT;
  ::CloseHandle(h);
  return alive;
#else
  if (::kill(static_cast<pid_t>(pid), 0) != 0) return false;
  // A zombie (exited, not yet reaped by its parent) has exited.
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  std::getline(f, stat);
  const auto paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] != 'Z';
#endif
}

process_usage measure_process() {
  process_usage u;
#ifdef _WIN32
  DWORD n = 0;
  ::GetProcessHandleCount(::GetCurrentProcess(), &n);
  if (n == 0) {
    // Wine 8 reports 0 here. Its handle values are small multiples of 4 (indexes into the
    // process's handle table), so the open ones can be counted by asking about each.
    for (std::uintptr_t v = 4; v < (1u << 16); v += 4) {
      DWORD flags = 0;
      if (::GetHandleInformation(reinterpret_cast<HANDLE>(v), &flags)) ++n;
    }
  }
  u.handles = n;
  PROCESS_MEMORY_COUNTERS pmc{};
  pmc.cb = sizeof pmc;
  ::GetProcessMemoryInfo(::GetCurrentProcess(), &pmc, sizeof pmc);
  u.rss = pmc.WorkingSetSize;
  u.priv = pmc.PagefileUsage;
  if (HANDLE snap = ::CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0); snap != INVALID_HANDLE_VALUE) {
    THREADENTRY32 te{};
    te.dwSize = sizeof te;
    for (BOOL ok = ::Thread32First(snap, &te); ok; ok = ::Thread32Next(snap, &te))
      if (te.th32OwnerProcessID == ::GetCurrentProcessId()) ++u.threads;
    ::CloseHandle(snap);
  }
#else
  // The directory stream itself holds one descriptor while it is read: the same at every call.
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ++u.handles;
    ::closedir(d);
  }
  std::istringstream status(baton::test::read_file("/proc/self/status"));
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
#endif
  return u;
}


void report_bytes_checked(std::uint64_t n) {
  std::printf("[ BYTES    ] %llu bytes checked for continuity\n", static_cast<unsigned long long>(n));
  std::fflush(stdout);
}

void fill_pattern(std::uint64_t seed, std::byte* out, std::size_t n) {
  // splitmix64 stream: fast, and any offset error shows up as a mismatch.
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  std::size_t i = 0;
  while (i < n) {
    x += 0x9E3779B97F4A7C15ull;
    std::uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const std::size_t k = std::min<std::size_t>(8, n - i);
    std::memcpy(out + i, &z, k);
    i += k;
  }
}

bool check_pattern(std::uint64_t seed, const std::byte* data, std::size_t n) {
  std::vector<std::byte> expect(n);
  fill_pattern(seed, expect.data(), n);
  return n == 0 || std::memcmp(expect.data(), data, n) == 0;
}

void nap(std::chrono::milliseconds ms) { std::this_thread::sleep_for(ms); }

void set_env(const char* name, const std::string& value) {
#ifdef _WIN32
  _putenv_s(name, value.c_str());
#else
  if (value.empty()) ::unsetenv(name);
  else ::setenv(name, value.c_str(), 1);
#endif
}

std::string temp_path(const std::string& tag) {
#ifdef _WIN32
  char buf[MAX_PATH];
  ::GetTempPathA(sizeof buf, buf);
  return std::string(buf) + unique_name(tag);
#else
  return "/tmp/" + unique_name(tag);
#endif
}
bool file_exists(const std::string& path) { return std::ifstream(path).good(); }
void touch(const std::string& path) { std::ofstream(path) << "1"; }
void remove_file(const std::string& path) { std::remove(path.c_str()); }
bool wait_for_file(const std::string& path, std::chrono::milliseconds deadline) {
  auto end = std::chrono::steady_clock::now() + deadline;
  while (!file_exists(path)) {
    if (std::chrono::steady_clock::now() > end) return false;
    nap(std::chrono::milliseconds(2));
  }
  return true;
}

}  // namespace baton::test

namespace {
// Objects of test channels whose receiver died (a crashed run) are removed before tests start;
// remove_stale refuses any channel whose owner is alive, so concurrent runs are safe.
void sweep_stale_test_channels() {
#ifndef _WIN32
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
#endif
}
}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--role=", 7) == 0) {
      std::string role = argv[i] + 7;
      std::vector<std::string> args(argv + i + 1, argv + argc);
      auto it = baton::test::roles().find(role);
      if (it == baton::test::roles().end()) {
        std::fprintf(stderr, "unknown role %s\n", role.c_str());
        return 2;
      }
      try {
        return it->second(args);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "role %s failed: %s\n", role.c_str(), e.what());
        return 3;
      }
    }
  }
  ::testing::InitGoogleTest(&argc, argv);
  sweep_stale_test_channels();
  return RUN_ALL_TESTS();
}
