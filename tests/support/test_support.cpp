#include "test_support.hpp"

#include "net_helpers.hpp"
#include "support_platform.hpp"

#include "detail/platform.hpp"

#include <baton/restart.hpp>
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

std::string helper_exe(const std::string& name) {
  const std::string self = self_path();
  const auto slash = self.find_last_of("/\\");
  const std::string dir = slash == std::string::npos ? std::string() : self.substr(0, slash + 1);
  const bool exe_suffix = self.size() > 4 && self.compare(self.size() - 4, 4, ".exe") == 0;
  return dir + name + (exe_suffix ? ".exe" : "");
}

role_registrar::role_registrar(const char* name, role_fn fn) { roles()[name] = std::move(fn); }

std::string unique_name(const std::string& tag) {
  static std::atomic<int> counter{0};
  std::random_device rd;
  char buf[96];
  std::snprintf(buf, sizeof buf, "test-%s-%u-%d-%04x", tag.c_str(), static_cast<unsigned>(self_pid()),
                counter.fetch_add(1), static_cast<unsigned>(rd() & 0xFFFF));
  return buf;
}

std::uint32_t unique_name_pid(const std::string& name) {
  const auto hex = name.rfind('-');
  const auto n = hex == std::string::npos || hex == 0 ? std::string::npos : name.rfind('-', hex - 1);
  const auto pid = n == std::string::npos || n == 0 ? std::string::npos : name.rfind('-', n - 1);
  if (pid == std::string::npos) return 0;
  try {
    return static_cast<std::uint32_t>(std::stoul(name.substr(pid + 1, n - pid - 1)));
  } catch (const std::exception&) {
    return 0;
  }
}

void kill_process_and_wait(std::uint32_t pid) {
  kill_process(pid);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (detail::process_alive(pid) && std::chrono::steady_clock::now() < until) nap(std::chrono::milliseconds(5));
}

std::uint32_t service_generation_pid(const std::string& service, std::chrono::milliseconds timeout) {
  error_code ec;
  const auto st = request_status(service, timeout, ec);
  const auto p = st.find("\npid ");
  if (ec || p == std::string::npos) return 0;
  try {
    return static_cast<std::uint32_t>(std::stoul(st.substr(p + 5)));
  } catch (const std::exception&) {
    return 0;
  }
}

void kill_service_generation(const std::string& service) {
  if (const auto pid = service_generation_pid(service)) kill_process_and_wait(pid);
}

name_guard::name_guard(std::string n) : name(std::move(n)) {
  error_code ec;
  channel::remove_stale(name, ec);
}
name_guard::~name_guard() {
  error_code ec;
  channel::remove_stale(name, ec);
  // A service's successors made inboxes "<name>.<10 characters>" (Linux: listed in /dev/shm;
  // Windows: gone with their processes): those whose owner is dead go too.
  remove_dead_channels(name, ec);
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
  std::vector<std::string> argv = prefix;
  argv.push_back(self_path());
  argv.push_back("--role=" + role);
  argv.insert(argv.end(), args.begin(), args.end());
  return launch(std::move(argv));
}

child child::spawn_exe(const std::string& exe, const std::string& role, const std::vector<std::string>& args) {
  std::vector<std::string> argv{exe, "--role=" + role};
  argv.insert(argv.end(), args.begin(), args.end());
  return launch(std::move(argv));
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

int run_capture(const std::vector<std::string>& argv, std::string& out, std::chrono::milliseconds deadline) {
  const std::string path = temp_path("out");
  auto c = child::run_to_file(argv, path);
  const int rc = c.wait(deadline);
  out = read_file(path);
  remove_file(path);
  return rc;
}

void report_bytes_checked(std::uint64_t n) {
  std::printf("[ BYTES    ] %llu bytes checked for continuity\n", static_cast<unsigned long long>(n));
  std::fflush(stdout);
}

namespace {

// splitmix64 stream: fast, and any offset error shows up as a mismatch.
struct pattern_stream {
  std::uint64_t x;
  explicit pattern_stream(std::uint64_t seed) : x(seed * 0x9E3779B97F4A7C15ull + 1) {}
  std::uint64_t next() {
    x += 0x9E3779B97F4A7C15ull;
    std::uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
};

}  // namespace

void fill_pattern(std::uint64_t seed, std::byte* out, std::size_t n) {
  pattern_stream p(seed);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const std::uint64_t z = p.next();
    std::memcpy(out + i, &z, 8);
  }
  if (i < n) {
    const std::uint64_t z = p.next();
    std::memcpy(out + i, &z, n - i);
  }
}

// Compares in place, without filling a copy to compare against: the tests check gigabytes of
// patterns.
bool check_pattern(std::uint64_t seed, const std::byte* data, std::size_t n) {
  pattern_stream p(seed);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t have;
    std::memcpy(&have, data + i, 8);
    if (have != p.next()) return false;
  }
  if (i < n) {
    const std::uint64_t z = p.next();
    return std::memcmp(data + i, &z, n - i) == 0;
  }
  return true;
}

void nap(std::chrono::milliseconds ms) { std::this_thread::sleep_for(ms); }

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
  baton::test::sweep_stale_test_channels();
  return RUN_ALL_TESTS();
}
