#include "baton/ticket.hpp"

#include <cstring>

namespace baton {
namespace {

// Slicing-by-8 tables for the reflected Castagnoli polynomial, built once at start-up.
struct crc_tables {
  std::uint32_t t[8][256];
  crc_tables() {
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
      t[0][i] = c;
    }
    for (std::uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  }
};
const crc_tables tables;

std::uint32_t crc_software(const unsigned char* p, std::size_t n, std::uint32_t c) noexcept {
  while (n >= 8) {
    std::uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= c;  // little-endian hosts only: Baton targets x86-64 and AArch64 in LE mode
    c = tables.t[7][lo & 0xFF] ^ tables.t[6][(lo >> 8) & 0xFF] ^ tables.t[5][(lo >> 16) & 0xFF] ^
        tables.t[4][lo >> 24] ^ tables.t[3][hi & 0xFF] ^ tables.t[2][(hi >> 8) & 0xFF] ^
        tables.t[1][(hi >> 16) & 0xFF] ^ tables.t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ tables.t[0][(c ^ *p++) & 0xFF];
  return c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BATON_CRC_HW 1
__attribute__((target("sse4.2"))) std::uint32_t crc_hardware(const unsigned char* p, std::size_t n,
                                                             std::uint32_t c) noexcept {
  std::uint64_t c64 = c;
  while (n >= 8) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    c64 = __builtin_ia32_crc32di(c64, v);
    p += 8;
    n -= 8;
  }
  c = static_cast<std::uint32_t>(c64);
  while (n--) c = __builtin_ia32_crc32qi(c, *p++);
  return c;
}
const bool has_sse42 = __builtin_cpu_supports("sse4.2");
#endif

}  // namespace

std::uint32_t crc32c(std::span<const std::byte> data, std::uint32_t crc) noexcept {
  auto p = reinterpret_cast<const unsigned char*>(data.data());
  std::uint32_t c = ~crc;
#ifdef BATON_CRC_HW
  if (has_sse42) return ~crc_hardware(p, data.size(), c);
#endif
  return ~crc_software(p, data.size(), c);
}

}  // namespace baton
