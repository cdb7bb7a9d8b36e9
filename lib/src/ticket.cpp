#include "baton/ticket.hpp"

#include "detail/datagram_queue.hpp"
#include "detail/endian.hpp"
#include "detail/ticket_codec.hpp"

#include <atomic>
#include <cstring>
#include <random>

namespace baton {
namespace {

using detail::load_le;
using detail::store_le;

constexpr std::uint32_t ticket_magic = 0x4E4F5442;  // "BTON"

// Header layout (64 bytes, little-endian):
//   0 magic u32 | 4 version u16 | 6 kind u8 | 7 method u8 | 8 sender_pid u32 | 12 target_pid u32
//  16 id[16]    | 32 ack_slot u32 | 36 flags u32 | 40 payload_len u32 | 44 unread_len u32
//  48 state_len u32 | 52 reserved u32 (0) | 56 reserved u32 (0) | 60 crc32c u32
// The CRC covers bytes [0, 60) and every byte after the header.
constexpr std::size_t off_crc = 60;

// The payload size each transfer method requires. Sizes are part of the wire format, so they are
// spelled out here rather than taken from platform headers (the Windows backend static_asserts
// that sizeof(WSAPROTOCOL_INFOW) matches).
bool payload_size_ok(transfer_method m, std::size_t n) {
  switch (m) {
    case transfer_method::none: return n == 0;
    case transfer_method::wsa_duplicate: return n == 628;
    case transfer_method::duplicate_handle:
    case transfer_method::inherit: return n == 8;
    case transfer_method::pidfd_getfd: return n == 24;
    case transfer_method::scm_rights: return n == 0;
  }
  return false;
}

bool kind_ok(std::uint8_t k) { return k >= 1 && k <= 4; }

// A UDP socket's unread section is a list of datagram records; nothing else is checked here.
error_code sections_ok(ticket_kind k, std::span<const std::byte> unread) {
  return k == ticket_kind::udp_socket ? detail::decode_datagrams(unread, nullptr) : error_code();
}
bool method_ok(std::uint8_t m) { return m <= 5; }

}  // namespace

ticket_id ticket_id::random() {
  // Seeded once per thread from the OS; a counter keeps ids distinct even if two threads drew
  // the same seed.
  thread_local std::mt19937_64 gen{[] {
    std::random_device rd;
    return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
  }()};
  static std::atomic<std::uint64_t> counter{0};
  ticket_id id;
  std::uint64_t a = gen();
  std::uint64_t b = gen() ^ counter.fetch_add(1, std::memory_order_relaxed);
  std::memcpy(id.bytes.data(), &a, 8);
  std::memcpy(id.bytes.data() + 8, &b, 8);
  return id;
}

std::string ticket_id::to_string() const {
  static const char hex[] = "0123456789abcdef";
  std::string s;
  s.reserve(32);
  for (auto b : bytes) {
    s.push_back(hex[b >> 4]);
    s.push_back(hex[b & 15]);
  }
  return s;
}

std::size_t encoded_size(const ticket& t) noexcept {
  return ticket_header_bytes + t.payload.size() + t.unread.size() + t.state.size();
}

error_code check_encodable(const ticket& t, const ticket_limits& limits) noexcept {
  const std::size_t total = encoded_size(t);
  if (total > limits.max_ticket_bytes || t.payload.size() > limits.max_payload_bytes || total > 0xFFFFFFFFu)
    return errc::ticket_too_large;
  if (!kind_ok(static_cast<std::uint8_t>(t.kind))) return errc::ticket_bad_kind;
  if (!method_ok(static_cast<std::uint8_t>(t.method))) return errc::ticket_bad_method;
  if (!payload_size_ok(t.method, t.payload.size()) ||
      (t.kind == ticket_kind::control) != (t.method == transfer_method::none))
    return errc::ticket_bad_payload;
  return sections_ok(t.kind, t.unread);
}

void encode(const ticket& t, std::span<std::byte> out, error_code& ec, const ticket_limits& limits) {
  ec = check_encodable(t, limits);
  if (ec) return;
  if (out.size() != encoded_size(t)) {
    ec = errc::ticket_bad_length;
    return;
  }
  detail::encode_checked(t, out);
}

namespace detail {

void encode_checked(const ticket& t, std::span<std::byte> out) noexcept {
  const std::size_t total = out.size();
  std::byte* p = out.data();
  std::memset(p, 0, ticket_header_bytes);
  store_le<std::uint32_t>(p + 0, ticket_magic);
  store_le<std::uint16_t>(p + 4, ticket_format_version);
  store_le<std::uint8_t>(p + 6, static_cast<std::uint8_t>(t.kind));
  store_le<std::uint8_t>(p + 7, static_cast<std::uint8_t>(t.method));
  store_le<std::uint32_t>(p + 8, t.sender_pid);
  store_le<std::uint32_t>(p + 12, t.target_pid);
  std::memcpy(p + 16, t.id.bytes.data(), 16);
  store_le<std::uint32_t>(p + 32, t.ack_slot);
  store_le<std::uint32_t>(p + 36, t.flags);
  store_le<std::uint32_t>(p + 40, static_cast<std::uint32_t>(t.payload.size()));
  store_le<std::uint32_t>(p + 44, static_cast<std::uint32_t>(t.unread.size()));
  store_le<std::uint32_t>(p + 48, static_cast<std::uint32_t>(t.state.size()));
  std::byte* body = p + ticket_header_bytes;
  if (!t.payload.empty()) std::memcpy(body, t.payload.data(), t.payload.size());
  body += t.payload.size();
  if (!t.unread.empty()) std::memcpy(body, t.unread.data(), t.unread.size());
  body += t.unread.size();
  if (!t.state.empty()) std::memcpy(body, t.state.data(), t.state.size());
  std::uint32_t crc = crc32c({p, off_crc});
  crc = crc32c({p + ticket_header_bytes, total - ticket_header_bytes}, crc);
  store_le<std::uint32_t>(p + off_crc, crc);
}

namespace {
constexpr std::uint32_t batch_magic = 0x41425442;  // "BTBA"
constexpr std::uint16_t batch_format_version = 1;
}  // namespace

bool is_batch(std::span<const std::byte> record) noexcept {
  return record.size() >= 4 && load_le<std::uint32_t>(record.data()) == batch_magic;
}

void encode_batch_header(std::byte* out, std::uint32_t count) noexcept {
  std::memset(out, 0, batch_header_bytes);
  store_le<std::uint32_t>(out + 0, batch_magic);
  store_le<std::uint16_t>(out + 4, batch_format_version);
  store_le<std::uint32_t>(out + 8, count);
}

std::byte* encode_batch_item(std::byte* out, const ticket& t) noexcept {
  const std::size_t n = encoded_size(t), total = batch_item_bytes(n);
  store_le<std::uint32_t>(out, static_cast<std::uint32_t>(n));
  store_le<std::uint32_t>(out + 4, 0);
  encode_checked(t, {out + batch_item_header_bytes, n});
  std::memset(out + batch_item_header_bytes + n, 0, total - batch_item_header_bytes - n);
  return out + total;
}

void split_batch(std::span<const std::byte> record, std::vector<std::pair<std::size_t, std::size_t>>& items,
                 error_code& ec) {
  ec.clear();
  items.clear();
  const std::byte* p = record.data();
  if (record.size() < batch_header_bytes || !is_batch(record)) {
    ec = errc::ticket_bad_length;
    return;
  }
  if (load_le<std::uint16_t>(p + 4) != batch_format_version) {
    ec = errc::ticket_bad_version;
    return;
  }
  const std::uint32_t count = load_le<std::uint32_t>(p + 8);
  if (count == 0 || count > max_batch_tickets || load_le<std::uint16_t>(p + 6) != 0 ||
      load_le<std::uint32_t>(p + 12) != 0) {
    ec = errc::ticket_bad_length;
    return;
  }
  std::size_t off = batch_header_bytes;
  for (std::uint32_t i = 0; i < count; ++i) {
    if (record.size() - off < batch_item_header_bytes) break;
    const std::uint64_t n = load_le<std::uint32_t>(p + off);
    const std::uint64_t total = batch_item_bytes(static_cast<std::size_t>(n));
    if (load_le<std::uint32_t>(p + off + 4) != 0 || total > record.size() - off) break;
    items.emplace_back(off + batch_item_header_bytes, static_cast<std::size_t>(n));
    off += static_cast<std::size_t>(total);
  }
  if (items.size() != count || off != record.size()) {
    items.clear();
    ec = errc::ticket_bad_length;
  }
}

}  // namespace detail

std::vector<std::byte> encode(const ticket& t, const ticket_limits& limits) {
  std::vector<std::byte> out(encoded_size(t));
  error_code ec;
  encode(t, out, ec, limits);
  if (ec) throw system_error(ec, "baton::encode");
  return out;
}

ticket decode(std::span<const std::byte> bytes, error_code& ec, const ticket_limits& limits) {
  ec.clear();
  ticket t;
  const std::byte* p = bytes.data();
  if (bytes.size() < ticket_header_bytes) {
    ec = errc::ticket_truncated;
    return t;
  }
  if (load_le<std::uint32_t>(p) != ticket_magic) {
    ec = errc::ticket_bad_magic;
    return t;
  }
  if (load_le<std::uint16_t>(p + 4) != ticket_format_version) {
    ec = errc::ticket_bad_version;
    return t;
  }
  if (bytes.size() > limits.max_ticket_bytes) {
    ec = errc::ticket_too_large;
    return t;
  }
  // Lengths are summed in 64 bits so that hostile values cannot wrap around.
  const std::uint64_t payload_len = load_le<std::uint32_t>(p + 40);
  const std::uint64_t unread_len = load_le<std::uint32_t>(p + 44);
  const std::uint64_t state_len = load_le<std::uint32_t>(p + 48);
  if (payload_len > limits.max_payload_bytes) {
    ec = errc::ticket_too_large;
    return t;
  }
  if (ticket_header_bytes + payload_len + unread_len + state_len != bytes.size() ||
      load_le<std::uint32_t>(p + 52) != 0 || load_le<std::uint32_t>(p + 56) != 0) {
    ec = errc::ticket_bad_length;
    return t;
  }
  std::uint32_t crc = crc32c({p, off_crc});
  crc = crc32c(bytes.subspan(ticket_header_bytes), crc);
  if (crc != load_le<std::uint32_t>(p + off_crc)) {
    ec = errc::ticket_bad_checksum;
    return t;
  }
  const auto kind = load_le<std::uint8_t>(p + 6);
  const auto method = load_le<std::uint8_t>(p + 7);
  if (!kind_ok(kind)) {
    ec = errc::ticket_bad_kind;
    return t;
  }
  if (!method_ok(method)) {
    ec = errc::ticket_bad_method;
    return t;
  }
  t.kind = static_cast<ticket_kind>(kind);
  t.method = static_cast<transfer_method>(method);
  if (!payload_size_ok(t.method, payload_len) ||
      (t.kind == ticket_kind::control) != (t.method == transfer_method::none)) {
    ec = errc::ticket_bad_payload;
    return t;
  }
  t.sender_pid = load_le<std::uint32_t>(p + 8);
  t.target_pid = load_le<std::uint32_t>(p + 12);
  std::memcpy(t.id.bytes.data(), p + 16, 16);
  t.ack_slot = load_le<std::uint32_t>(p + 32);
  t.flags = load_le<std::uint32_t>(p + 36);
  const std::byte* body = p + ticket_header_bytes;
  t.payload.assign(body, body + payload_len);
  body += payload_len;
  t.unread.assign(body, body + unread_len);
  body += unread_len;
  t.state.assign(body, body + state_len);
  ec = sections_ok(t.kind, t.unread);
  if (ec) return ticket{};
  return t;
}

ticket decode(std::span<const std::byte> bytes, const ticket_limits& limits) {
  error_code ec;
  ticket t = decode(bytes, ec, limits);
  if (ec) throw system_error(ec, "baton::decode");
  return t;
}

}  // namespace baton
