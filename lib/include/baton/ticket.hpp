#pragma once
/// The wire format of one move. A ticket carries the platform handle payload, the bytes the
/// source had read but the application had not consumed, and an opaque application state.
/// Encoding is little-endian and versioned; decoding validates every field and never reads out of
/// bounds. Free functions here are thread-safe.

#include <baton/error.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace baton {

/// What a ticket moves.
enum class ticket_kind : std::uint8_t {
  connection = 1,  ///< an established TCP connection
  listener = 2,    ///< a listening TCP socket
  control = 3,     ///< no socket: a control message (restart, balance protocols)
  udp_socket = 4,  ///< a bound UDP socket; `unread` holds the datagrams it had taken from the kernel
};

/// How the OS handle travels. The payload's layout depends on it.
enum class transfer_method : std::uint8_t {
  none = 0,              ///< control tickets: no handle
  wsa_duplicate = 1,     ///< Windows: WSAPROTOCOL_INFOW from WSADuplicateSocketW for the target pid
  duplicate_handle = 2,  ///< Windows: handle value pushed into the target with DuplicateHandle
  inherit = 3,           ///< Windows/Linux: handle value inherited by a child the source spawned
  pidfd_getfd = 4,       ///< Linux: target pulls (pid, fd) with pidfd_getfd; inode guards reuse
  scm_rights = 5,        ///< Linux: fd pushed over the channel's Unix socket
};

/// A 128-bit random identifier of one move.
struct ticket_id {
  std::array<std::uint8_t, 16> bytes{};
  static ticket_id random();
  std::string to_string() const;
  friend bool operator==(const ticket_id&, const ticket_id&) = default;
  friend auto operator<=>(const ticket_id&, const ticket_id&) = default;
};

/// Upper bounds a decoder enforces. Defaults: 1 MiB for the whole ticket.
struct ticket_limits {
  std::size_t max_ticket_bytes = 1u << 20;
  std::size_t max_payload_bytes = 4096;
};

/// One move, decoded.
struct ticket {
  ticket_kind kind = ticket_kind::connection;
  transfer_method method = transfer_method::none;
  std::uint32_t sender_pid = 0;
  std::uint32_t target_pid = 0;
  ticket_id id{};
  std::uint32_t ack_slot = 0;  ///< index of the sender's slot in the channel's ack table
  std::uint32_t flags = 0;     ///< reserved for kind-specific flags; none is defined yet (0)
  std::vector<std::byte> payload;  ///< platform handle payload
  std::vector<std::byte> unread;   ///< bytes read from the kernel, not yet consumed (a UDP socket:
                                   ///< its queued datagrams, each with its sender's address)
  std::vector<std::byte> state;    ///< opaque application state

  friend bool operator==(const ticket&, const ticket&) = default;
};

/// Size of the fixed header that precedes the three variable sections.
inline constexpr std::size_t ticket_header_bytes = 64;
/// Current wire format version.
inline constexpr std::uint16_t ticket_format_version = 1;

/// Bytes `encode` will produce for `t`.
std::size_t encoded_size(const ticket& t) noexcept;

/// The checks `encode` makes, without encoding: ticket_too_large, ticket_bad_kind,
/// ticket_bad_method, ticket_bad_payload, ticket_bad_datagrams (a UDP socket's queued datagrams),
/// or success.
error_code check_encodable(const ticket& t, const ticket_limits& limits = {}) noexcept;

/// Encodes `t` into `out`, which must hold exactly `encoded_size(t)` bytes.
/// Fails with `ticket_too_large` / `ticket_bad_payload` where `t` breaks `limits`.
void encode(const ticket& t, std::span<std::byte> out, error_code& ec, const ticket_limits& limits = {});
/// Encodes `t` into a new buffer. Throws `system_error` on the errors above.
std::vector<std::byte> encode(const ticket& t, const ticket_limits& limits = {});

/// Decodes and validates a ticket. Each malformation has its own `errc::ticket_*` code.
ticket decode(std::span<const std::byte> bytes, error_code& ec, const ticket_limits& limits = {});
/// Throwing overload of `decode`.
ticket decode(std::span<const std::byte> bytes, const ticket_limits& limits = {});

/// CRC-32C (Castagnoli) of `data`, continuing from `crc` (0 to start).
std::uint32_t crc32c(std::span<const std::byte> data, std::uint32_t crc = 0) noexcept;

}  // namespace baton
