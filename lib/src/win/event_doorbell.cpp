// Windows doorbell: a named auto-reset event with an owner-only DACL, awaited through the IOCP
// reactor with asio::windows::object_handle. Rings while nobody waits leave the event set, so
// they coalesce into one wake-up.
#include "detail/platform.hpp"
#include "win/security.hpp"

#include <boost/asio/windows/object_handle.hpp>

namespace baton::detail {

namespace asio = boost::asio;

struct doorbell::impl {
  HANDLE ring_handle = nullptr;                          // sender side
  std::unique_ptr<asio::windows::object_handle> rx;      // receiver side (owns its handle)
  ~impl() {
    if (ring_handle) ::CloseHandle(ring_handle);
  }
};

doorbell::doorbell() noexcept = default;
doorbell::doorbell(doorbell&&) noexcept = default;
doorbell& doorbell::operator=(doorbell&&) noexcept = default;
doorbell::~doorbell() = default;

doorbell doorbell::create(const asio::any_io_executor& ex, const std::string& os_name, error_code& ec) {
  ec.clear();
  doorbell d;
  owner_only_security sec(ec);
  if (ec) return d;
  HANDLE h = ::CreateEventW(sec.attributes(), FALSE, FALSE, widen(os_name).c_str());
  if (!h) {
    ec = {static_cast<int>(::GetLastError()), boost::system::system_category()};
    return d;
  }
  if (::GetLastError() == ERROR_ALREADY_EXISTS) {
    ::CloseHandle(h);
    ec = errc::name_in_use;
    return d;
  }
  d.impl_ = std::make_unique<impl>();
  d.impl_->rx = std::make_unique<asio::windows::object_handle>(ex, h);
  return d;
}

doorbell doorbell::open(const std::string& os_name, error_code& ec) {
  ec.clear();
  doorbell d;
  HANDLE h = ::OpenEventW(EVENT_MODIFY_STATE | READ_CONTROL, FALSE, widen(os_name).c_str());
  if (!h) {
    DWORD e = ::GetLastError();
    ec = e == ERROR_FILE_NOT_FOUND ? make_error_code(errc::channel_not_found)
                                   : error_code(static_cast<int>(e), boost::system::system_category());
    return d;
  }
  if (!object_owned_by_current_user(h, ec)) {
    ::CloseHandle(h);
    if (!ec) ec = errc::not_owner;
    return d;
  }
  d.impl_ = std::make_unique<impl>();
  d.impl_->ring_handle = h;
  return d;
}

void doorbell::remove(const std::string&) noexcept {}

void doorbell::ring() noexcept {
  if (impl_ && impl_->ring_handle) ::SetEvent(impl_->ring_handle);
}

void doorbell::async_wait(wait_handler handler) { impl_->rx->async_wait(std::move(handler)); }

void doorbell::cancel() noexcept {
  if (impl_ && impl_->rx) {
    error_code ignored;
    impl_->rx->cancel(ignored);
  }
}

bool doorbell::is_open() const noexcept { return impl_ != nullptr; }

}  // namespace baton::detail
