#pragma once
// The datagrams a UDP socket had taken from the kernel when a move stopped its reads: kept in
// front of the socket's own queue and carried in the ticket's unread section, so that the target
// reads them first. Wire format of the section, one record per datagram, little-endian:
//   family u8 (4 or 6) | port u16 | address (4 or 16 bytes) | length u32 | bytes
#include <baton/error.hpp>

#include <boost/asio/ip/udp.hpp>

#include <cstddef>
#include <deque>
#include <span>
#include <vector>

namespace baton::detail {

struct queued_datagram {
  boost::asio::ip::udp::endpoint from;
  std::vector<std::byte> data;
};

std::vector<std::byte> encode_datagrams(const std::deque<queued_datagram>& q);
/// Parses a section made by encode_datagrams into `out` (nullptr: only checks it).
/// errc::ticket_bad_datagrams if a record runs past the end or names an unknown family.
error_code decode_datagrams(std::span<const std::byte> bytes, std::deque<queued_datagram>* out);

}  // namespace baton::detail
