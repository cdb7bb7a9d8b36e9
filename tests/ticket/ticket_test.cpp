#include <baton/ticket.hpp>

#include "detail/ticket_codec.hpp"

#include <gtest/gtest.h>

#include <cstring>

namespace {

using baton::errc;
using baton::ticket;

ticket sample() {
  ticket t;
  t.kind = baton::ticket_kind::connection;
  t.method = baton::transfer_method::pidfd_getfd;
  t.sender_pid = 100;
  t.target_pid = 200;
  t.id = baton::ticket_id::random();
  t.ack_slot = 7;
  t.flags = 3;
  t.payload.assign(24, std::byte{0x11});
  t.unread = {std::byte{'G'}, std::byte{'E'}, std::byte{'T'}};
  t.state.assign(100, std::byte{0x5A});
  return t;
}

baton::error_code decode_error(const std::vector<std::byte>& bytes, baton::ticket_limits lim = {}) {
  baton::error_code ec;
  baton::decode(bytes, ec, lim);
  return ec;
}

void fix_crc(std::vector<std::byte>& b) {
  std::uint32_t crc = baton::crc32c({b.data(), 60});
  crc = baton::crc32c({b.data() + 64, b.size() - 64}, crc);
  std::memcpy(b.data() + 60, &crc, 4);
}

TEST(ticket, round_trip) {
  auto t = sample();
  auto bytes = baton::encode(t);
  EXPECT_EQ(bytes.size(), baton::encoded_size(t));
  EXPECT_EQ(baton::decode(bytes), t);
}

TEST(ticket, round_trip_empty_sections_and_every_method) {
  for (auto [m, n] : {std::pair{baton::transfer_method::wsa_duplicate, 628},
                      {baton::transfer_method::duplicate_handle, 8}, {baton::transfer_method::inherit, 8},
                      {baton::transfer_method::pidfd_getfd, 24}, {baton::transfer_method::scm_rights, 0}}) {
    ticket t;
    t.kind = baton::ticket_kind::listener;
    t.method = m;
    t.payload.assign(static_cast<std::size_t>(n), std::byte{1});
    EXPECT_EQ(baton::decode(baton::encode(t)), t);
  }
  ticket c;
  c.kind = baton::ticket_kind::control;
  c.method = baton::transfer_method::none;
  c.state = {std::byte{9}};
  EXPECT_EQ(baton::decode(baton::encode(c)), c);
}

TEST(ticket, crc32c_known_vector) {
  const char* s = "123456789";
  EXPECT_EQ(baton::crc32c({reinterpret_cast<const std::byte*>(s), 9}), 0xE3069283u);
}

TEST(ticket, truncated) {
  auto b = baton::encode(sample());
  for (std::size_t n : {0, 1, 63}) {
    std::vector<std::byte> part(b.begin(), b.begin() + static_cast<long>(n));
    EXPECT_EQ(decode_error(part), errc::ticket_truncated) << n;
  }
  b.pop_back();
  EXPECT_EQ(decode_error(b), errc::ticket_bad_length);
}

TEST(ticket, bad_magic) {
  auto b = baton::encode(sample());
  b[0] = std::byte{0};
  EXPECT_EQ(decode_error(b), errc::ticket_bad_magic);
}

TEST(ticket, bad_version) {
  auto b = baton::encode(sample());
  b[4] = std::byte{2};
  EXPECT_EQ(decode_error(b), errc::ticket_bad_version);
}

TEST(ticket, bad_kind_and_method) {
  auto b = baton::encode(sample());
  b[6] = std::byte{9};
  fix_crc(b);
  EXPECT_EQ(decode_error(b), errc::ticket_bad_kind);
  b = baton::encode(sample());
  b[7] = std::byte{77};
  fix_crc(b);
  EXPECT_EQ(decode_error(b), errc::ticket_bad_method);
}

TEST(ticket, bad_payload_size_for_method) {
  auto b = baton::encode(sample());
  b[7] = std::byte{1};  // wsa_duplicate needs 628 bytes, the payload has 24
  fix_crc(b);
  EXPECT_EQ(decode_error(b), errc::ticket_bad_payload);
  auto t = sample();
  t.payload.resize(5);
  baton::error_code ec;
  std::vector<std::byte> out(baton::encoded_size(t));
  baton::encode(t, out, ec);
  EXPECT_EQ(ec, errc::ticket_bad_payload);
}

// A UDP socket's ticket: its unread section is a list of datagram records (family u8, port u16,
// address, length u32, bytes), checked on encode and on decode.
std::vector<std::byte> datagram_record(std::uint8_t family, std::uint32_t len, std::size_t actual) {
  std::vector<std::byte> r{std::byte{family}, std::byte{0x35}, std::byte{0x00}};
  r.resize(r.size() + (family == 6 ? 16 : 4), std::byte{1});
  for (int i = 0; i < 4; ++i) r.push_back(static_cast<std::byte>(len >> (8 * i)));
  r.resize(r.size() + actual, std::byte{'d'});
  return r;
}

TEST(ticket, udp_socket_queued_datagrams) {
  auto t = sample();
  t.kind = baton::ticket_kind::udp_socket;
  t.unread = datagram_record(4, 3, 3);
  const auto v6 = datagram_record(6, 0, 0);
  t.unread.insert(t.unread.end(), v6.begin(), v6.end());
  EXPECT_EQ(baton::decode(baton::encode(t)), t);
  t.unread.clear();  // no datagram queued
  EXPECT_EQ(baton::decode(baton::encode(t)), t);
  // Malformed: a length past the section, an unknown family, a record cut short.
  for (const auto& bad : {datagram_record(4, 10, 3), datagram_record(5, 0, 0), std::vector<std::byte>(5)}) {
    t.unread = bad;
    EXPECT_EQ(baton::check_encodable(t), errc::ticket_bad_datagrams);
    auto c = sample();  // a connection's ticket: its unread bytes are not parsed
    c.unread = bad;
    auto b = baton::encode(c);
    EXPECT_FALSE(decode_error(b));
    b[6] = std::byte{4};  // now a UDP socket's ticket
    fix_crc(b);
    EXPECT_EQ(decode_error(b), errc::ticket_bad_datagrams);
  }
}

TEST(ticket, lengths_that_overflow_or_disagree) {
  auto b = baton::encode(sample());
  const std::uint32_t huge = 0xFFFFFFF0u;
  std::memcpy(b.data() + 44, &huge, 4);
  fix_crc(b);
  EXPECT_EQ(decode_error(b), errc::ticket_bad_length);
  b = baton::encode(sample());
  b[52] = std::byte{1};  // reserved must be zero
  fix_crc(b);
  EXPECT_EQ(decode_error(b), errc::ticket_bad_length);
}

TEST(ticket, checksum) {
  auto b = baton::encode(sample());
  b[b.size() - 1] ^= std::byte{1};
  EXPECT_EQ(decode_error(b), errc::ticket_bad_checksum);
  b = baton::encode(sample());
  b[9] ^= std::byte{1};  // sender pid
  EXPECT_EQ(decode_error(b), errc::ticket_bad_checksum);
}

TEST(ticket, limits) {
  auto t = sample();
  t.state.assign(2000, std::byte{1});
  auto b = baton::encode(t);
  baton::ticket_limits small;
  small.max_ticket_bytes = 1024;
  EXPECT_EQ(decode_error(b, small), errc::ticket_too_large);
  baton::error_code ec;
  std::vector<std::byte> out(baton::encoded_size(t));
  baton::encode(t, out, ec, small);
  EXPECT_EQ(ec, errc::ticket_too_large);
  EXPECT_THROW(baton::encode(t, small), baton::system_error);
  small.max_ticket_bytes = 1u << 20;
  small.max_payload_bytes = 8;
  EXPECT_EQ(decode_error(baton::encode(sample()), small), errc::ticket_too_large);
}

TEST(ticket, default_limit_is_one_mebibyte) {
  auto t = sample();
  t.unread.assign((1u << 20) - baton::ticket_header_bytes - 24 - 100, std::byte{3});
  auto b = baton::encode(t);
  EXPECT_EQ(b.size(), 1u << 20);
  EXPECT_EQ(baton::decode(b), t);
  t.unread.push_back(std::byte{0});
  EXPECT_THROW(baton::encode(t), baton::system_error);
}

TEST(ticket, errors_have_actionable_messages) {
  baton::error_code ec = errc::ticket_bad_checksum;
  EXPECT_STREQ(ec.category().name(), "baton");
  EXPECT_NE(ec.message().find("CRC-32C"), std::string::npos);
  ec = errc::name_in_use;
  EXPECT_NE(ec.message().find("squatter"), std::string::npos);
}

TEST(ticket, ids_are_distinct) {
  auto a = baton::ticket_id::random(), b = baton::ticket_id::random();
  EXPECT_NE(a, b);
  EXPECT_EQ(a.to_string().size(), 32u);
}

}  // namespace

namespace {

// A batch record of the given tickets, as the channel's sender writes it.
std::vector<std::byte> batch_of(const std::vector<ticket>& ts) {
  std::size_t n = baton::detail::batch_header_bytes;
  for (const auto& t : ts) n += baton::detail::batch_item_bytes(baton::encoded_size(t));
  std::vector<std::byte> out(n);
  baton::detail::encode_batch_header(out.data(), static_cast<std::uint32_t>(ts.size()));
  std::byte* p = out.data() + baton::detail::batch_header_bytes;
  for (const auto& t : ts) p = baton::detail::encode_batch_item(p, t);
  EXPECT_EQ(p, out.data() + out.size());
  return out;
}

baton::error_code split_error(const std::vector<std::byte>& b) {
  std::vector<std::pair<std::size_t, std::size_t>> items;
  baton::error_code ec;
  baton::detail::split_batch(b, items, ec);
  if (ec) EXPECT_TRUE(items.empty());
  return ec;
}

}  // namespace

TEST(ticket_batch, round_trip_of_tickets_of_every_size) {
  std::vector<ticket> ts;
  for (std::size_t unread : {0u, 1u, 7u, 8u, 9u, 1000u}) {
    auto t = sample();
    t.unread.assign(unread, std::byte{0x33});
    ts.push_back(t);
  }
  const auto b = batch_of(ts);
  ASSERT_TRUE(baton::detail::is_batch(b));
  std::vector<std::pair<std::size_t, std::size_t>> items;
  baton::error_code ec;
  baton::detail::split_batch(b, items, ec);
  ASSERT_FALSE(ec) << ec.message();
  ASSERT_EQ(items.size(), ts.size());
  for (std::size_t i = 0; i < ts.size(); ++i) {
    auto got = baton::decode(std::span<const std::byte>(b).subspan(items[i].first, items[i].second), ec);
    ASSERT_FALSE(ec) << i << ": " << ec.message();
    EXPECT_EQ(got, ts[i]) << i;
  }
  // A plain ticket is not a batch, and a batch is not a ticket.
  EXPECT_FALSE(baton::detail::is_batch(baton::encode(sample())));
  EXPECT_EQ(decode_error(b), errc::ticket_bad_magic);
}

TEST(ticket_batch, malformed_tables_are_refused_whole) {
  const auto good = batch_of({sample(), sample(), sample()});
  ASSERT_FALSE(split_error(good));
  auto put32 = [](std::vector<std::byte> b, std::size_t at, std::uint32_t v) {
    std::memcpy(b.data() + at, &v, 4);
    return b;
  };
  EXPECT_EQ(split_error({good.begin(), good.begin() + 15}), errc::ticket_bad_length);  // header cut
  EXPECT_EQ(split_error(put32(good, 4, 2)), errc::ticket_bad_version);
  EXPECT_EQ(split_error(put32(good, 8, 0)), errc::ticket_bad_length);                  // no ticket
  EXPECT_EQ(split_error(put32(good, 8, 4)), errc::ticket_bad_length);                  // one more than there is
  EXPECT_EQ(split_error(put32(good, 8, 2)), errc::ticket_bad_length);                  // bytes left over
  EXPECT_EQ(split_error(put32(good, 8, 0xFFFFFFFF)), errc::ticket_bad_length);         // absurd count
  EXPECT_EQ(split_error(put32(good, 12, 1)), errc::ticket_bad_length);                 // reserved word
  EXPECT_EQ(split_error(put32(good, 16, 0xFFFFFFF0)), errc::ticket_bad_length);        // item past the end
  EXPECT_EQ(split_error(put32(good, 20, 5)), errc::ticket_bad_length);                 // item's reserved word
  auto longer = good;
  longer.resize(good.size() + 8);
  EXPECT_EQ(split_error(longer), errc::ticket_bad_length);
  // An item's own damage is the item's: the table still splits, that ticket fails its CRC.
  auto damaged = good;
  damaged[16 + 8 + 70] ^= std::byte{1};
  std::vector<std::pair<std::size_t, std::size_t>> items;
  baton::error_code ec;
  baton::detail::split_batch(damaged, items, ec);
  ASSERT_FALSE(ec);
  baton::decode(std::span<const std::byte>(damaged).subspan(items[0].first, items[0].second), ec);
  EXPECT_EQ(ec, errc::ticket_bad_checksum);
}
