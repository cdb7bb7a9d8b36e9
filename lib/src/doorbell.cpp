// The doorbell's platform-independent half: ownership and forwarding to its backend
// (detail/doorbell_impl.hpp).
#include "detail/doorbell_impl.hpp"

namespace baton::detail {

doorbell::doorbell() noexcept = default;
doorbell::doorbell(doorbell&&) noexcept = default;
doorbell& doorbell::operator=(doorbell&&) noexcept = default;
doorbell::~doorbell() = default;

void doorbell::ring() noexcept {
  if (impl_) impl_->ring();
}

void doorbell::async_wait(wait_handler handler) { impl_->async_wait(std::move(handler)); }

void doorbell::cancel() noexcept {
  if (impl_) impl_->cancel();
}

bool doorbell::is_open() const noexcept { return impl_ != nullptr; }

}  // namespace baton::detail
