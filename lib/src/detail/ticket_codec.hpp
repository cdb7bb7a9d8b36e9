#pragma once
// Encoding without validation, for callers that already ran check_encodable() (the channel's send
// path validates once, before it reserves ring space, and encodes straight into the ring).
#include "baton/ticket.hpp"

namespace baton::detail {

/// Writes `t` into `out` (exactly encoded_size(t) bytes). Precondition: check_encodable(t) passed.
void encode_checked(const ticket& t, std::span<std::byte> out) noexcept;

}  // namespace baton::detail
