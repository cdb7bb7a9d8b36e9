// The Windows half of the test support: processes (CreateProcess, TerminateProcess, suspension),
// handle and memory measurements, environment, temp files and socket options.
#include "test_support.hpp"

#include "net_helpers.hpp"
#include "support_platform.hpp"

#include <boost/asio/detail/socket_types.hpp>

#include <cstdlib>
#include <stdexcept>

#include <windows.h>
#include <psapi.h>
#include <tlhelp32.h>

namespace baton::test {

child child::launch(std::vector<std::string> argv) {
  child c;
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
  c.reaped_ = false;
  return c;
}

bool child::running() {
  if (reaped_) return false;
  DWORD code = 0;
  if (::WaitForSingleObject(reinterpret_cast<HANDLE>(handle_), 0) != WAIT_OBJECT_0) return true;
  ::GetExitCodeProcess(reinterpret_cast<HANDLE>(handle_), &code);
  exit_code_ = static_cast<int>(code);
  ::CloseHandle(reinterpret_cast<HANDLE>(handle_));
  handle_ = -1;
  reaped_ = true;
  return false;
}

void child::kill() {
  if (reaped_) return;
  ::TerminateProcess(reinterpret_cast<HANDLE>(handle_), 137);
  ::WaitForSingleObject(reinterpret_cast<HANDLE>(handle_), 10000);
  wait(std::chrono::seconds(10));
}

void kill_process(std::uint32_t pid) {
  HANDLE h = ::OpenProcess(PROCESS_TERMINATE | SYNCHRONIZE, FALSE, pid);
  if (!h) return;
  ::TerminateProcess(h, 137);
  ::WaitForSingleObject(h, 10000);
  ::CloseHandle(h);
}

namespace {
// NtSuspendProcess / NtResumeProcess: what SIGSTOP / SIGCONT are on POSIX (ntdll, also in Wine).
void nt_process_call(std::uint32_t pid, const char* fn) {
  using nt_fn = LONG(NTAPI*)(HANDLE);
  auto f = reinterpret_cast<nt_fn>(
      reinterpret_cast<void*>(::GetProcAddress(::GetModuleHandleA("ntdll.dll"), fn)));
  HANDLE h = ::OpenProcess(PROCESS_SUSPEND_RESUME, FALSE, pid);
  if (!h) return;
  if (f) f(h);
  ::CloseHandle(h);
}
}  // namespace

void stop_process(std::uint32_t pid) { nt_process_call(pid, "NtSuspendProcess"); }
void resume_process(std::uint32_t pid) { nt_process_call(pid, "NtResumeProcess"); }
bool host_has_scm_rights() { return false; }
bool host_is_windows() { return true; }
void stop_self() { nt_process_call(::GetCurrentProcessId(), "NtSuspendProcess"); }

bool process_exists(std::uint32_t pid) {
  HANDLE h = ::OpenProcess(SYNCHRONIZE, FALSE, pid);
  if (!h) return false;
  const bool alive = ::WaitForSingleObject(h, 0) == WAIT_TIMEOUT;
  ::CloseHandle(h);
  return alive;
}

process_usage measure_process() {
  process_usage u;
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
  return u;
}

void set_env(const char* name, const std::string& value) { _putenv_s(name, value.c_str()); }

std::string temp_path(const std::string& tag) {
  char buf[MAX_PATH];
  ::GetTempPathA(sizeof buf, buf);
  return std::string(buf) + unique_name(tag);
}

void set_recv_timeout(boost::asio::ip::tcp::socket& s, std::chrono::milliseconds t) {
  DWORD v = static_cast<DWORD>(t.count());
  ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, reinterpret_cast<const char*>(&v), sizeof v);
}

// Windows raises no per-process socket limit that a burst of 1,000 connections would reach.
void raise_fd_limit() {}

// Windows names die with their last handle: nothing of a crashed run is left to sweep.
void sweep_stale_test_channels() {}

}  // namespace baton::test
