// Windows doorbell: a named auto-reset event with an owner-only DACL, awaited through the IOCP
// reactor with asio::windows::object_handle. Rings while nobody waits leave the event set, so
// they coalesce into one wake-up.
#include "detail/doorbell_impl.hpp"
#include "win/security.hpp"

#include <boost/asio/windows/object_handle.hpp>

namespace baton::detail {

namespace asio = boost::asio;

namespace {

struct event_bell final : doorbell::impl {
  HANDLE ring_handle = nullptr;                          // sender side
  std::unique_ptr<asio::windows::object_handle> rx;      // receiver side (owns its handle)
  event_bell(HANDLE ring, std::unique_ptr<asio::windows::object_handle> r) : ring_handle(ring), rx(std::move(r)) {}
  ~event_bell() override {
    if (ring_handle) ::CloseHandle(ring_handle);
  }
  void ring() noexcept override {
    if (ring_handle) ::SetEvent(ring_handle);
  }
  void async_wait(doorbell::wait_handler handler) override { rx->async_wait(std::move(handler)); }
  void cancel() noexcept override {
    error_code ignored;
    if (rx) rx->cancel(ignored);
  }
};

}  // namespace

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
  d.impl_ = std::make_unique<event_bell>(nullptr, std::make_unique<asio::windows::object_handle>(ex, h));
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
  d.impl_ = std::make_unique<event_bell>(h, nullptr);
  return d;
}

void doorbell::remove(const std::string&) noexcept {}

}  // namespace baton::detail
