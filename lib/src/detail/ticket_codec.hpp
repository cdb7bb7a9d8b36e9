#pragma once
// Encoding without validation, for callers that already ran check_encodable() (the channel's send
// path validates once, before it reserves ring space, and encodes straight into the ring); and
// the batch record, several tickets in one ring record.
#include "baton/ticket.hpp"

#include <utility>

namespace baton::detail {

/// Writes `t` into `out` (exactly encoded_size(t) bytes). Precondition: check_encodable(t) passed.
void encode_checked(const ticket& t, std::span<std::byte> out) noexcept;

// A batch record carries the tickets a sender published in one turn of its event loop, so that a
// burst of moves takes one ring reservation, one record and at most one doorbell (the tickets
// stay separate transactions: each keeps its own ack slot and CRC). Layout, little-endian:
//   header (16): magic "BTBA" u32 | version u16 | reserved u16 (0) | count u32 | reserved u32 (0)
//   per ticket:  length u32 | reserved u32 (0) | the encoded ticket | zeros to a multiple of 8
// The items must tile the record exactly. A receiver of an older version sees a bad magic and
// acknowledges none of them, so their senders roll back at their timeout.
inline constexpr std::size_t batch_header_bytes = 16;
inline constexpr std::size_t batch_item_header_bytes = 8;
inline constexpr std::uint32_t max_batch_tickets = 4096;

/// Bytes one ticket of `ticket_bytes` takes in a batch record.
constexpr std::size_t batch_item_bytes(std::size_t ticket_bytes) noexcept {
  return batch_item_header_bytes + ((ticket_bytes + 7) & ~std::size_t{7});
}
/// True if `record` starts like a batch record (whether it is a valid one is split_batch's say).
bool is_batch(std::span<const std::byte> record) noexcept;
/// Writes the batch header for `count` tickets into the first batch_header_bytes of `out`.
void encode_batch_header(std::byte* out, std::uint32_t count) noexcept;
/// Writes one item (header, ticket, padding) at `out`; returns where the next one starts.
/// Precondition: check_encodable(t) passed.
std::byte* encode_batch_item(std::byte* out, const ticket& t) noexcept;
/// The byte ranges (offset, size) of the tickets in a batch record. Errors: ticket_bad_version,
/// ticket_bad_length (the count or an item's length does not tile the record).
void split_batch(std::span<const std::byte> record, std::vector<std::pair<std::size_t, std::size_t>>& items,
                 error_code& ec);

}  // namespace baton::detail
