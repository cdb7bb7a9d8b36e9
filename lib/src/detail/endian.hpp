#pragma once
// Little-endian field access for wire formats. Reads and writes go through memcpy, so unaligned
// and shared-memory buffers are safe.
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace baton::detail {

template <class T>
inline T load_le(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);  // Baton supports little-endian hosts only.
  return v;
}

template <class T>
inline void store_le(std::byte* p, T v) noexcept {
  std::memcpy(p, &v, sizeof v);
}

}  // namespace baton::detail
