#pragma once
// Shared by the fuzzers and the seed generator: the ring layouts the ring fuzzer overlays its
// input onto.
#include "ring.hpp"

#include <cstddef>
#include <cstdint>

namespace baton::fuzz {

// Mapping of data 4096 + 8 ack slots: 8 KiB; inputs longer than that get the 16 KiB layout
// (data 8192 + 64 ack slots).
inline constexpr std::size_t small_data_bytes = 4096;
inline constexpr std::uint32_t small_ack_slots = 8;
inline constexpr std::size_t large_data_bytes = 8192;
inline constexpr std::uint32_t large_ack_slots = 64;

inline std::size_t small_mapping() { return detail::ring::mapping_bytes(small_data_bytes, small_ack_slots); }
inline std::size_t large_mapping() { return detail::ring::mapping_bytes(large_data_bytes, large_ack_slots); }

/// Size of the buffer an input of `n` bytes is overlaid onto.
inline std::size_t mapping_for_input(std::size_t n) { return n <= small_mapping() ? small_mapping() : large_mapping(); }

}  // namespace baton::fuzz
