// Owner-only security descriptors for named objects, and the owner check of an opened one
// (win/security.hpp).
#include "win/security.hpp"

#include <vector>

namespace baton::detail {

namespace {
error_code last_error() { return {static_cast<int>(::GetLastError()), boost::system::system_category()}; }

std::vector<unsigned char> token_user() {
  HANDLE tok = nullptr;
  std::vector<unsigned char> buf;
  if (!::OpenProcessToken(::GetCurrentProcess(), TOKEN_QUERY, &tok)) return buf;
  DWORD len = 0;
  ::GetTokenInformation(tok, TokenUser, nullptr, 0, &len);
  buf.resize(len);
  if (!::GetTokenInformation(tok, TokenUser, buf.data(), len, &len)) buf.clear();
  ::CloseHandle(tok);
  return buf;
}
}  // namespace

std::wstring widen(const std::string& s) {
  if (s.empty()) return {};
  std::wstring w(s.size(), L'\0');  // UTF-8 never needs more UTF-16 units than bytes
  const int n = ::MultiByteToWideChar(CP_UTF8, 0, s.data(), static_cast<int>(s.size()), w.data(), static_cast<int>(w.size()));
  w.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return w;
}

std::wstring current_user_sid(error_code& ec) {
  ec.clear();
  auto tu = token_user();
  if (tu.empty()) {
    ec = last_error();
    return {};
  }
  LPWSTR str = nullptr;
  if (!::ConvertSidToStringSidW(reinterpret_cast<TOKEN_USER*>(tu.data())->User.Sid, &str)) {
    ec = last_error();
    return {};
  }
  std::wstring out(str);
  ::LocalFree(str);
  return out;
}

std::wstring owner_only_sddl(const std::wstring& user_sid, bool high_integrity) {
  // Specific rights as well as GA: Wine does not map generic rights on stored ACEs when an
  // object is opened by name. 0x001F001F covers SECTION_ALL_ACCESS and EVENT_ALL_ACCESS.
  std::wstring sddl = L"O:" + user_sid + L"D:P(A;;GA;;;" + user_sid + L")(A;;0x001F001F;;;" + user_sid + L")(A;;GA;;;SY)";
  // The DACL admits every process of the user, whatever its integrity level. An elevated
  // service's objects get a high mandatory label, so that a medium-integrity process of the same
  // user (no write up) cannot write to its rings, ring its doorbells, or fire its restart event.
  if (high_integrity) sddl += L"S:(ML;;NW;;;HI)";
  return sddl;
}

bool process_is_high_integrity() noexcept {
  HANDLE tok = nullptr;
  if (!::OpenProcessToken(::GetCurrentProcess(), TOKEN_QUERY, &tok)) return false;
  bool high = false;
  DWORD len = 0;
  ::GetTokenInformation(tok, TokenIntegrityLevel, nullptr, 0, &len);
  std::vector<unsigned char> buf(len);
  if (len && ::GetTokenInformation(tok, TokenIntegrityLevel, buf.data(), len, &len)) {
    PSID sid = reinterpret_cast<TOKEN_MANDATORY_LABEL*>(buf.data())->Label.Sid;
    const DWORD rid = *::GetSidSubAuthority(sid, *::GetSidSubAuthorityCount(sid) - 1);
    high = rid >= SECURITY_MANDATORY_HIGH_RID;
  } else {
    TOKEN_ELEVATION elevation{};
    if (::GetTokenInformation(tok, TokenElevation, &elevation, sizeof elevation, &len)) high = elevation.TokenIsElevated;
  }
  ::CloseHandle(tok);
  return high;
}

owner_only_security::owner_only_security(error_code& ec) {
  auto sid = current_user_sid(ec);
  if (ec) return;
  const std::wstring sddl = owner_only_sddl(sid, process_is_high_integrity());
  if (!::ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl.c_str(), SDDL_REVISION_1, &sd_, nullptr)) {
    ec = last_error();
    return;
  }
  sa_.nLength = sizeof sa_;
  sa_.lpSecurityDescriptor = sd_;
  sa_.bInheritHandle = FALSE;
}

owner_only_security::~owner_only_security() {
  if (sd_) ::LocalFree(sd_);
}

bool object_owned_by_current_user(HANDLE h, error_code& ec) {
  ec.clear();
  PSID owner = nullptr;
  PACL dacl = nullptr;
  PSECURITY_DESCRIPTOR sd = nullptr;
  DWORD rc = ::GetSecurityInfo(h, SE_KERNEL_OBJECT, OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION, &owner,
                               nullptr, &dacl, nullptr, &sd);
  if (rc != ERROR_SUCCESS) {
    ec = {static_cast<int>(rc), boost::system::system_category()};
    return false;
  }
  auto tu = token_user();
  PSID me = tu.empty() ? nullptr : reinterpret_cast<TOKEN_USER*>(tu.data())->User.Sid;
  bool ok = me && owner && ::EqualSid(owner, me);
  if (ok && dacl) {
    // Every ACE must name this user or SYSTEM: an object readable by others is not private.
    PSID system_sid = nullptr;
    SID_IDENTIFIER_AUTHORITY nt = SECURITY_NT_AUTHORITY;
    ::AllocateAndInitializeSid(&nt, 1, SECURITY_LOCAL_SYSTEM_RID, 0, 0, 0, 0, 0, 0, 0, &system_sid);
    for (DWORD i = 0; ok && i < dacl->AceCount; ++i) {
      void* ace = nullptr;
      if (!::GetAce(dacl, i, &ace)) continue;
      auto* hdr = static_cast<ACE_HEADER*>(ace);
      if (hdr->AceType != ACCESS_ALLOWED_ACE_TYPE) continue;
      PSID s = reinterpret_cast<PSID>(&static_cast<ACCESS_ALLOWED_ACE*>(ace)->SidStart);
      ok = ::EqualSid(s, me) || (system_sid && ::EqualSid(s, system_sid));
    }
    if (system_sid) ::FreeSid(system_sid);
  } else if (ok && !dacl) {
    ok = false;  // a null DACL grants everyone everything
  }
  ::LocalFree(sd);
  return ok;
}

}  // namespace baton::detail
