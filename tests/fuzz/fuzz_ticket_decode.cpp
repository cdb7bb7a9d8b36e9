// libFuzzer target: baton::decode on arbitrary bytes, with the default and with small limits.
// A ticket that decodes must re-encode to the very same bytes; anything else aborts. The same
// bytes as a batch record: a table that splits must tile the input exactly, and each of its
// tickets goes through the same checks.
#include <baton/ticket.hpp>

#include "detail/ticket_codec.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

namespace {

void check_round_trip(std::span<const std::byte> in, const baton::ticket& t, const baton::ticket_limits& limits,
                      const char* what) {
  if (baton::encoded_size(t) != in.size()) {
    std::fprintf(stderr, "%s: encoded_size %zu != input size %zu\n", what, baton::encoded_size(t), in.size());
    std::abort();
  }
  std::vector<std::byte> out(in.size());
  baton::error_code ec;
  baton::encode(t, out, ec, limits);
  if (ec) {
    std::fprintf(stderr, "%s: decoded ticket does not re-encode: %s\n", what, ec.message().c_str());
    std::abort();
  }
  if (!out.empty() && std::memcmp(out.data(), in.data(), in.size()) != 0) {
    std::fprintf(stderr, "%s: re-encoded ticket differs from the input\n", what);
    std::abort();
  }
  // And the re-encoded bytes decode to the same ticket.
  baton::ticket again = baton::decode(out, ec, limits);
  if (ec || !(again == t)) {
    std::fprintf(stderr, "%s: re-encoded ticket does not decode to the same ticket\n", what);
    std::abort();
  }
}

void one_input(std::span<const std::byte> in) {
  baton::error_code ec;
  const baton::ticket_limits def{};
  baton::ticket t = baton::decode(in, ec, def);
  const bool ok_default = !ec;
  if (ok_default) check_round_trip(in, t, def, "default limits");

  baton::ticket_limits small;
  small.max_ticket_bytes = 512;
  small.max_payload_bytes = 24;
  baton::ticket s = baton::decode(in, ec, small);
  if (!ec) {
    check_round_trip(in, s, small, "small limits");
    // Tighter limits can only refuse more, never accept something else.
    if (!ok_default || !(s == t)) {
      std::fprintf(stderr, "accepted under small limits but not (or differently) under the defaults\n");
      std::abort();
    }
  }
}

void batch_input(std::span<const std::byte> in) {
  std::vector<std::pair<std::size_t, std::size_t>> items;
  baton::error_code ec;
  baton::detail::split_batch(in, items, ec);
  if (ec) return;
  std::size_t end = baton::detail::batch_header_bytes;
  for (const auto& [off, n] : items) {
    if (off != end + baton::detail::batch_item_header_bytes || n > in.size() - off) {
      std::fprintf(stderr, "batch item at %zu (%zu bytes) does not follow the previous one or leaves the input\n", off, n);
      std::abort();
    }
    end = off - baton::detail::batch_item_header_bytes + baton::detail::batch_item_bytes(n);
    one_input(in.subspan(off, n));
  }
  if (end != in.size()) {
    std::fprintf(stderr, "batch items end at %zu of %zu bytes\n", end, in.size());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  one_input(in);
  batch_input(in);
  // The CRC-32C guards every byte, so mutated inputs almost never get past it. Decode each input
  // a second time with a correct checksum (bytes 60..63 cover [0, 60) and everything after the
  // 64-byte header) so that the checks behind it are fuzzed too.
  if (size >= baton::ticket_header_bytes) {
    std::vector<std::byte> fixed(in.begin(), in.end());
    std::uint32_t crc = baton::crc32c({fixed.data(), 60});
    crc = baton::crc32c(std::span<const std::byte>(fixed).subspan(baton::ticket_header_bytes), crc);
    for (int i = 0; i < 4; ++i) fixed[60 + i] = static_cast<std::byte>(crc >> (8 * i));
    one_input(fixed);
  }
  return 0;
}
