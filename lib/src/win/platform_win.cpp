// Windows backend: named file mappings with an owner-only DACL, process watching.
#include "detail/platform.hpp"
#include "win/security.hpp"

#include <boost/asio/error.hpp>
#include <boost/interprocess/windows_shared_memory.hpp>

namespace baton::detail {

namespace bip = boost::interprocess;

std::uint32_t current_pid() noexcept { return ::GetCurrentProcessId(); }

std::string object_name(const std::string& name, const char* suffix, bool global_namespace) {
  return std::string(global_namespace ? "Global\\" : "Local\\") + "baton." + name + "." + suffix;
}

bip::mapped_region create_region(const std::string& os_name, std::size_t size, error_code& ec) {
  ec.clear();
  owner_only_security sec(ec);
  if (ec) return {};
  try {
    bip::permissions perm;
    perm.set_permissions(sec.attributes());
    // create_only fails when CreateFileMapping reports ERROR_ALREADY_EXISTS, so a squatter's
    // mapping is never reused.
    bip::windows_shared_memory shm(bip::create_only, os_name.c_str(), bip::read_write, size, perm);
    bip::mapped_region region(shm, bip::read_write, 0, size);
    // A view keeps the section alive after the handle closes; names die with the last view.
    std::memset(region.get_address(), 0, size);
    return region;
  } catch (const bip::interprocess_exception& e) {
    if (e.get_error_code() == bip::already_exists_error || e.get_native_error() == ERROR_ALREADY_EXISTS)
      ec = errc::name_in_use;
    else
      ec = {static_cast<int>(e.get_native_error() ? e.get_native_error() : ERROR_GEN_FAILURE),
            boost::system::system_category()};
    return {};
  }
}

bip::mapped_region create_region(const std::string& os_name, std::size_t size, const region_init& init,
                                 error_code& ec) {
  // A mapping cannot be created under one name and renamed: the name is visible from creation
  // on, with a zero header until `init` has run. channel::open waits for the header, and
  // remove_stale_channel treats a zero header as a channel being created.
  auto region = create_region(os_name, size, ec);
  if (!ec) init(region.get_address(), region.get_size());
  return region;
}

bip::mapped_region open_region(const std::string& os_name, error_code& ec) {
  ec.clear();
  // Boost opens without READ_CONTROL, which reading the security descriptor needs, so we hold a
  // handle of our own for the check. Holding it while Boost opens pins the name to the object we
  // checked.
  HANDLE check = ::OpenFileMappingW(READ_CONTROL, FALSE, widen(os_name).c_str());
  if (!check) {
    DWORD e = ::GetLastError();
    ec = e == ERROR_FILE_NOT_FOUND ? make_error_code(errc::channel_not_found)
         : e == ERROR_ACCESS_DENIED ? make_error_code(errc::not_owner)
                                    : error_code(static_cast<int>(e), boost::system::system_category());
    return {};
  }
  struct closer {
    HANDLE h;
    ~closer() { ::CloseHandle(h); }
  } guard{check};
  if (!object_owned_by_current_user(check, ec)) {
    if (!ec) ec = errc::not_owner;
    return {};
  }
  try {
    bip::windows_shared_memory shm(bip::open_only, os_name.c_str(), bip::read_write);
    return bip::mapped_region(shm, bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    if (e.get_error_code() == bip::not_found_error || e.get_native_error() == ERROR_FILE_NOT_FOUND)
      ec = errc::channel_not_found;
    else if (e.get_native_error() == ERROR_ACCESS_DENIED)
      ec = errc::not_owner;
    else
      ec = {static_cast<int>(e.get_native_error() ? e.get_native_error() : ERROR_GEN_FAILURE),
            boost::system::system_category()};
    return {};
  }
}

void remove_region(const std::string&) noexcept {}

void remove_stale_channel(const std::string& name, const owner_reader& owner_of, error_code& ec) {
  ec.clear();
  // Names die with their last handle: there is nothing to remove, only the same answer to give
  // as on POSIX about whether the name is in use.
  auto region = open_region(object_name(name, "ring", false), ec);
  if (ec == errc::channel_not_found) {
    ec.clear();
    return;
  }
  if (ec) return;
  const std::uint32_t pid = owner_of(region.get_address(), region.get_size());
  // A zero header belongs to a channel being created (a dead creator's name would be gone).
  if (pid == 0 || process_alive(pid)) ec = errc::name_in_use;
}

std::string describe_foreign_objects(const std::string&) { return {}; }

// Named sections live in the session's object directory (\Sessions\N\BaseNamedObjects), which
// only the native API (NtQueryDirectoryObject) lists; Baton does not go there.
std::vector<std::string> list_channel_names(error_code& ec) {
  ec = boost::asio::error::operation_not_supported;
  return {};
}

// A section's size is fixed when it is created and cannot change while it is mapped (there is
// no ftruncate for a pagefile-backed section, and SetEndOfFile on a file with a mapped view fails
// with ERROR_USER_MAPPED_FILE), so no peer can pull the pages from under us.
std::uint64_t region_faults(const void*) noexcept { return 0; }
bool region_lost(const void*) noexcept { return false; }
void unguard_region(const void*) noexcept {}

process_watch::process_watch() noexcept = default;

process_watch::process_watch(std::uint32_t pid) : pid_(pid) {
  HANDLE h = ::OpenProcess(SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION, FALSE, pid);
  handle_ = h ? reinterpret_cast<std::intptr_t>(h) : -1;
}

process_watch::~process_watch() {
  if (handle_ != -1) ::CloseHandle(reinterpret_cast<HANDLE>(handle_));
}

bool process_watch::alive() const noexcept {
  if (pid_ == 0) return false;
  if (handle_ == -1) return process_alive(pid_);
  return ::WaitForSingleObject(reinterpret_cast<HANDLE>(handle_), 0) == WAIT_TIMEOUT;
}

bool accepted_socket_inherits_no_delay() noexcept { return false; }

bool process_alive(std::uint32_t pid) noexcept {
  if (pid == 0) return false;
  HANDLE h = ::OpenProcess(SYNCHRONIZE, FALSE, pid);
  if (!h) return ::GetLastError() == ERROR_ACCESS_DENIED;
  const bool alive = ::WaitForSingleObject(h, 0) == WAIT_TIMEOUT;
  ::CloseHandle(h);
  return alive;
}

void kill_process_hard(std::uint32_t pid) noexcept {
  if (pid == ::GetCurrentProcessId()) ::TerminateProcess(::GetCurrentProcess(), 137);
  HANDLE h = ::OpenProcess(PROCESS_TERMINATE | SYNCHRONIZE, FALSE, pid);
  if (!h) return;
  ::TerminateProcess(h, 137);
  ::WaitForSingleObject(h, 10000);
  ::CloseHandle(h);
}

}  // namespace baton::detail
