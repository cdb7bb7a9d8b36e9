#pragma once
// What a test needs to run a program as a Windows service under the Service Control Manager
// (Wine ships one): the SCM's command-line tool, a control the tool may lack, and a guard that
// stops and deletes a test's service even when the test fails. Windows in
// win/windows_service_win.cpp; on POSIX (posix/windows_service_posix.cpp) there is no SCM and
// each of these says so.
#include <chrono>
#include <cstdint>
#include <string>

namespace baton::test {

/// The prefix of every service a test creates: services left by a crashed run are found by it.
inline constexpr const char* test_service_prefix = "baton-test-";

/// The path of a program in the Windows system directory (e.g. "sc.exe"); "" elsewhere.
std::string windows_system_program(const std::string& exe);
/// True in the Windows build when it runs under Wine (ntdll exports wine_get_version).
bool host_is_wine();
/// Sends control `code` to service `name` through ControlService (what `sc control NAME CODE`
/// does; Wine's sc.exe has no `control` command). "" on success, else what failed.
std::string control_windows_service(const std::string& name, std::uint32_t code);
/// The pid of service `name`'s process (QueryServiceStatusEx), 0 if none runs.
std::uint32_t windows_service_pid(const std::string& name);
/// Deletes the stopped services whose names start with test_service_prefix and whose test
/// process (the pid in unique_name's tail) is gone: those crashed runs left. A running one, or a
/// stopped one of a test still running (created, not started yet), is left alone. How many went.
std::size_t delete_stale_test_services();

/// Stops service `name` when destroyed (or earlier, with remove()), waits for it up to
/// `within`, kills its process if it is still there, and deletes the service. Best effort.
struct windows_service_guard {
  std::string name;
  explicit windows_service_guard(std::string n) : name(std::move(n)) {}
  ~windows_service_guard() { remove(); }
  windows_service_guard(const windows_service_guard&) = delete;
  windows_service_guard& operator=(const windows_service_guard&) = delete;
  void remove(std::chrono::milliseconds within = std::chrono::seconds(30)) noexcept;
};

}  // namespace baton::test
