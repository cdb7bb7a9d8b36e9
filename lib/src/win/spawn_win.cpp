// spawn_with_handles on Windows: CreateProcessW with an explicit handle list
// (PROC_THREAD_ATTRIBUTE_HANDLE_LIST), so the child inherits the chosen sockets and nothing else.
#include "baton/spawn.hpp"

#include "win/security.hpp"
#include "win/win_headers.hpp"

namespace baton {

std::uint32_t current_process_id() noexcept { return ::GetCurrentProcessId(); }

std::string current_executable_path() {
  std::wstring buf(32768, L'\0');
  const DWORD n = ::GetModuleFileNameW(nullptr, buf.data(), static_cast<DWORD>(buf.size()));
  buf.resize(n);
  const int len = ::WideCharToMultiByte(CP_UTF8, 0, buf.data(), static_cast<int>(n), nullptr, 0, nullptr, nullptr);
  std::string out(static_cast<std::size_t>(len), '\0');
  ::WideCharToMultiByte(CP_UTF8, 0, buf.data(), static_cast<int>(n), out.data(), len, nullptr, nullptr);
  return out;
}

namespace {
std::wstring quote(const std::wstring& a) {
  // Enough for paths and plain arguments: wrap in quotes, escape embedded quotes.
  std::wstring out = L"\"";
  for (wchar_t c : a) {
    if (c == L'"') out += L'\\';
    out += c;
  }
  return out + L"\"";
}
}  // namespace

spawned_process spawn_with_handles(const std::string& exe, const std::vector<std::string>& args,
                                   const std::vector<std::uintptr_t>& handles, error_code& ec) {
  ec.clear();
  std::wstring cmd = quote(detail::widen(exe));
  for (auto& a : args) cmd += L" " + quote(detail::widen(a));
  std::vector<HANDLE> list;
  for (auto h : handles) {
    list.push_back(reinterpret_cast<HANDLE>(h));
    // Inheritable only for the duration of CreateProcess; the handle list keeps every other
    // inheritable handle of ours out of the child.
    ::SetHandleInformation(list.back(), HANDLE_FLAG_INHERIT, HANDLE_FLAG_INHERIT);
  }
  SIZE_T size = 0;
  ::InitializeProcThreadAttributeList(nullptr, 1, 0, &size);
  std::vector<unsigned char> attr_buf(size);
  auto* attrs = reinterpret_cast<LPPROC_THREAD_ATTRIBUTE_LIST>(attr_buf.data());
  STARTUPINFOEXW si{};
  si.StartupInfo.cb = sizeof si;
  PROCESS_INFORMATION pi{};
  BOOL ok = ::InitializeProcThreadAttributeList(attrs, 1, 0, &size);
  if (ok && !list.empty())
    ok = ::UpdateProcThreadAttribute(attrs, 0, PROC_THREAD_ATTRIBUTE_HANDLE_LIST, list.data(),
                                     list.size() * sizeof(HANDLE), nullptr, nullptr);
  if (ok) {
    si.lpAttributeList = attrs;
    ok = ::CreateProcessW(nullptr, cmd.data(), nullptr, nullptr, list.empty() ? FALSE : TRUE,
                          EXTENDED_STARTUPINFO_PRESENT, nullptr, nullptr, &si.StartupInfo, &pi);
  }
  const DWORD err = ::GetLastError();
  ::DeleteProcThreadAttributeList(attrs);
  for (auto h : list) ::SetHandleInformation(h, HANDLE_FLAG_INHERIT, 0);
  if (!ok) {
    ec = {static_cast<int>(err), boost::system::system_category()};
    return {};
  }
  ::CloseHandle(pi.hThread);
  ::CloseHandle(pi.hProcess);
  return {pi.dwProcessId};
}

}  // namespace baton
