#pragma once
// Atomic access to plain words of shared memory (ring headers, ack slots, transfer tables), which
// other processes read and write at the same time.
#include <atomic>

namespace baton::detail {

/// An atomic view of `v`, which must be suitably aligned for atomic_ref<T>.
template <class T>
std::atomic_ref<T> at(T& v) noexcept {
  return std::atomic_ref<T>(v);
}

}  // namespace baton::detail
