#pragma once
// What a doorbell's backend does (posix/fifo_doorbell.cpp, win/event_doorbell.cpp); the doorbell
// itself (doorbell.cpp) forwards to it.
#include "detail/platform.hpp"

namespace baton::detail {

struct doorbell::impl {
  virtual ~impl() = default;
  /// See doorbell::ring; a no-op on a receiving end.
  virtual void ring() noexcept = 0;
  /// See doorbell::async_wait; receiving end only.
  virtual void async_wait(wait_handler h) = 0;
  virtual void cancel() noexcept = 0;
};

}  // namespace baton::detail
