#pragma once
// Owner-only security for Baton's named objects: a DACL granting the current user and SYSTEM,
// and nobody else.
#include "win/win_headers.hpp"

#include <baton/error.hpp>

#include <string>

namespace baton::detail {

/// SECURITY_ATTRIBUTES with DACL "D:P(A;;GA;;;<user>)(A;;GA;;;SY)" and, in an elevated process,
/// a high mandatory label (owner_only_sddl). Non-inheritable.
class owner_only_security {
 public:
  explicit owner_only_security(error_code& ec);
  ~owner_only_security();
  owner_only_security(const owner_only_security&) = delete;
  owner_only_security& operator=(const owner_only_security&) = delete;
  SECURITY_ATTRIBUTES* attributes() noexcept { return &sa_; }

 private:
  SECURITY_ATTRIBUTES sa_{};
  PSECURITY_DESCRIPTOR sd_ = nullptr;
};

/// The SDDL of owner_only_security: owner and DACL for `user_sid` (and SYSTEM), plus the
/// mandatory label S:(ML;;NW;;;HI) when `high_integrity` (the process is elevated).
std::wstring owner_only_sddl(const std::wstring& user_sid, bool high_integrity);

/// True when this process's token has a high (or higher) integrity level, or is elevated.
bool process_is_high_integrity() noexcept;

/// The current user's SID as a string ("S-1-5-21-...").
std::wstring current_user_sid(error_code& ec);

/// True if `h`'s owner is the current user (or the object grants access to nobody but the
/// current user and SYSTEM, which is what Baton's own objects do).
bool object_owned_by_current_user(HANDLE h, error_code& ec);

/// `s` (UTF-8; Baton's names are ASCII) as UTF-16, for the W functions.
std::wstring widen(const std::string& s);

}  // namespace baton::detail
