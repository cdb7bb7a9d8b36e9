// Windows process exit through the reactor: a process handle opened with SYNCHRONIZE is signalled
// when the process ends, and asio::windows::object_handle awaits it through the IOCP reactor.
#include "detail/platform.hpp"
#include "win/win_headers.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/windows/object_handle.hpp>

namespace baton::detail {

namespace asio = boost::asio;

struct process_exit_wait::impl {
  asio::any_io_executor ex;
  bool gone = false;  // OpenProcess found no such process: it has already exited
  std::unique_ptr<asio::windows::object_handle> handle;
};

process_exit_wait::process_exit_wait() noexcept = default;
process_exit_wait::process_exit_wait(process_exit_wait&&) noexcept = default;
process_exit_wait& process_exit_wait::operator=(process_exit_wait&&) noexcept = default;
process_exit_wait::~process_exit_wait() = default;

process_exit_wait::process_exit_wait(const asio::any_io_executor& ex, std::uint32_t pid, bool /*reap*/,
                                     error_code& ec)
    : impl_(std::make_unique<impl>()) {
  ec.clear();
  impl_->ex = ex;
  HANDLE h = ::OpenProcess(SYNCHRONIZE, FALSE, pid);
  if (!h) {
    const DWORD e = ::GetLastError();
    if (e == ERROR_INVALID_PARAMETER)
      impl_->gone = true;
    else
      ec = {static_cast<int>(e), boost::system::system_category()};
    return;
  }
  impl_->handle = std::make_unique<asio::windows::object_handle>(ex, h);
}

void process_exit_wait::async_wait(asio::any_completion_handler<void(error_code)> handler) {
  if (impl_->gone) return asio::post(impl_->ex, asio::append(std::move(handler), error_code()));
  impl_->handle->async_wait(std::move(handler));
}

void process_exit_wait::cancel() noexcept {
  if (impl_ && impl_->handle) {
    error_code ignored;
    impl_->handle->cancel(ignored);
  }
}

}  // namespace baton::detail
