// The queued datagrams a UDP socket's ticket carries (detail/datagram_queue.hpp).
#include "detail/datagram_queue.hpp"

#include "detail/endian.hpp"

#include <cstring>

namespace baton::detail {

std::vector<std::byte> encode_datagrams(const std::deque<queued_datagram>& q) {
  std::size_t size = 0;
  for (const auto& d : q) size += 1 + 2 + (d.from.address().is_v6() ? 16 : 4) + 4 + d.data.size();
  std::vector<std::byte> out(size);
  std::byte* p = out.data();
  for (const auto& d : q) {
    const auto a = d.from.address();
    store_le<std::uint8_t>(p, a.is_v6() ? 6 : 4);
    store_le<std::uint16_t>(p + 1, d.from.port());
    p += 3;
    if (a.is_v6()) {
      const auto b = a.to_v6().to_bytes();
      std::memcpy(p, b.data(), b.size());
      p += b.size();
    } else {
      const auto b = a.to_v4().to_bytes();
      std::memcpy(p, b.data(), b.size());
      p += b.size();
    }
    store_le<std::uint32_t>(p, static_cast<std::uint32_t>(d.data.size()));
    p += 4;
    if (!d.data.empty()) std::memcpy(p, d.data.data(), d.data.size());
    p += d.data.size();
  }
  return out;
}

error_code decode_datagrams(std::span<const std::byte> bytes, std::deque<queued_datagram>* out) {
  const error_code bad = errc::ticket_bad_datagrams;
  std::size_t at = 0;
  const std::size_t n = bytes.size();
  const std::byte* p = bytes.data();
  while (at < n) {
    if (n - at < 3) return bad;
    const auto family = load_le<std::uint8_t>(p + at);
    const std::uint16_t port = load_le<std::uint16_t>(p + at + 1);
    at += 3;
    const std::size_t alen = family == 4 ? 4 : family == 6 ? 16 : 0;
    if (alen == 0 || n - at < alen + 4) return bad;
    const std::byte* addr = p + at;
    at += alen;
    const std::uint64_t len = load_le<std::uint32_t>(p + at);
    at += 4;
    if (len > n - at) return bad;
    if (out) {
      queued_datagram d;
      if (family == 4) {
        boost::asio::ip::address_v4::bytes_type b;
        std::memcpy(b.data(), addr, b.size());
        d.from = {boost::asio::ip::address_v4(b), port};
      } else {
        boost::asio::ip::address_v6::bytes_type b;
        std::memcpy(b.data(), addr, b.size());
        d.from = {boost::asio::ip::address_v6(b), port};
      }
      d.data.assign(p + at, p + at + len);
      out->push_back(std::move(d));
    }
    at += static_cast<std::size_t>(len);
  }
  return {};
}

}  // namespace baton::detail
