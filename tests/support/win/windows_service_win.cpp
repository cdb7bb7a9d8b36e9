// The Windows half of windows_service.hpp: the Service Control Manager's API (advapi32).
#include "windows_service.hpp"

#include "test_support.hpp"

#include <windows.h>

#include <memory>
#include <vector>

namespace baton::test {

namespace {

using namespace std::chrono_literals;

std::wstring wide(const std::string& s) { return std::wstring(s.begin(), s.end()); }  // ASCII names

struct sc_handle_close {
  void operator()(SC_HANDLE h) const noexcept { ::CloseServiceHandle(h); }
};
using sc_handle = std::unique_ptr<std::remove_pointer_t<SC_HANDLE>, sc_handle_close>;

sc_handle open_manager(DWORD access) { return sc_handle(::OpenSCManagerW(nullptr, nullptr, access)); }

SERVICE_STATUS_PROCESS query(SC_HANDLE s) {
  SERVICE_STATUS_PROCESS st{};
  DWORD needed = 0;
  if (!::QueryServiceStatusEx(s, SC_STATUS_PROCESS_INFO, reinterpret_cast<BYTE*>(&st), sizeof st, &needed))
    st.dwCurrentState = 0;
  return st;
}

// Stops service `s` and waits up to `within` for SERVICE_STOPPED; kills its process if it is
// still there then.
void stop_and_wait(SC_HANDLE s, std::chrono::milliseconds within) {
  auto st = query(s);
  if (st.dwCurrentState == 0 || st.dwCurrentState == SERVICE_STOPPED) return;
  SERVICE_STATUS ignored{};
  ::ControlService(s, SERVICE_CONTROL_STOP, &ignored);
  for (const auto until = std::chrono::steady_clock::now() + within; std::chrono::steady_clock::now() < until;
       nap(100ms)) {
    st = query(s);
    if (st.dwCurrentState == 0 || st.dwCurrentState == SERVICE_STOPPED) return;
  }
  if (st.dwProcessId != 0) kill_process(st.dwProcessId);
}

}  // namespace

std::string windows_system_program(const std::string& exe) {
  char dir[MAX_PATH];
  const UINT n = ::GetSystemDirectoryA(dir, sizeof dir);
  return n == 0 || n >= sizeof dir ? exe : std::string(dir, n) + "\\" + exe;
}

bool host_is_wine() { return ::GetProcAddress(::GetModuleHandleA("ntdll.dll"), "wine_get_version") != nullptr; }

std::string control_windows_service(const std::string& name, std::uint32_t code) {
  const auto m = open_manager(SC_MANAGER_CONNECT);
  if (!m) return "OpenSCManager failed: " + std::to_string(::GetLastError());
  const sc_handle s(::OpenServiceW(m.get(), wide(name).c_str(), SERVICE_USER_DEFINED_CONTROL));
  if (!s) return "OpenService(" + name + ") failed: " + std::to_string(::GetLastError());
  SERVICE_STATUS st{};
  if (!::ControlService(s.get(), code, &st)) return "ControlService(" + std::to_string(code) + ") failed: " +
                                                  std::to_string(::GetLastError());
  return "";
}

std::uint32_t windows_service_pid(const std::string& name) {
  const auto m = open_manager(SC_MANAGER_CONNECT);
  const sc_handle s(m ? ::OpenServiceW(m.get(), wide(name).c_str(), SERVICE_QUERY_STATUS) : nullptr);
  return s ? query(s.get()).dwProcessId : 0;
}

std::size_t delete_stale_test_services() {
  const auto m = open_manager(SC_MANAGER_ENUMERATE_SERVICE | SC_MANAGER_CONNECT);
  if (!m) return 0;
  std::vector<BYTE> buf(64 * 1024);
  DWORD needed = 0, count = 0, resume = 0;
  if (!::EnumServicesStatusExW(m.get(), SC_ENUM_PROCESS_INFO, SERVICE_WIN32, SERVICE_INACTIVE, buf.data(),
                               static_cast<DWORD>(buf.size()), &needed, &count, &resume, nullptr) &&
      ::GetLastError() != ERROR_MORE_DATA)
    return 0;
  const auto* e = reinterpret_cast<const ENUM_SERVICE_STATUS_PROCESSW*>(buf.data());
  const auto prefix = wide(test_service_prefix);
  std::size_t deleted = 0;
  for (DWORD i = 0; i < count; ++i) {
    const std::wstring name = e[i].lpServiceName;
    if (name.rfind(prefix, 0) != 0) continue;
    // A stopped service whose test still runs may be one being created (sc create, then sc
    // start): only a dead test's services are stale.
    // (Test service names are unique_name()s: ASCII.)
    if (const auto pid = unique_name_pid(std::string(name.begin(), name.end())); pid != 0 && process_exists(pid))
      continue;
    const sc_handle s(::OpenServiceW(m.get(), e[i].lpServiceName, DELETE));
    if (s && ::DeleteService(s.get())) ++deleted;
  }
  return deleted;
}

void windows_service_guard::remove(std::chrono::milliseconds within) noexcept {
  if (name.empty()) return;
  const auto m = open_manager(SC_MANAGER_CONNECT);
  if (!m) return;
  const sc_handle s(::OpenServiceW(m.get(), wide(name).c_str(), SERVICE_STOP | SERVICE_QUERY_STATUS | DELETE));
  if (s) {
    stop_and_wait(s.get(), within);
    ::DeleteService(s.get());
  }
  name.clear();
}

}  // namespace baton::test
