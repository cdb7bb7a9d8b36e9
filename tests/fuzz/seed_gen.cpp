// Writes the fuzzers' seed corpora (committed in tests/fuzz/corpus/):
//   fuzz_seed_gen <ticket dir> <ring dir>
// Tickets: valid tickets of every kind and transfer method, with and without unread bytes and
// state (a UDP socket's: queued datagrams). Ring images: valid channel mappings (as the ring fuzzer lays them out) holding encoded
// tickets, a producer's abandoned record, a full ring, a wrapped ring. Output is deterministic:
// tokens, pids and ids are fixed, and trailing zero bytes are trimmed (the ring fuzzer overlays
// its input onto a zero-filled buffer).
#include "detail/datagram_queue.hpp"
#include "fuzz_common.hpp"
#include "ring.hpp"

#include <baton/ticket.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <new>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using baton::ticket;
using baton::ticket_kind;
using baton::transfer_method;
using baton::detail::ring;

constexpr std::uint32_t fixed_pid = 0x7FFFFFF0;  // never a live process (process_alive says no)

std::vector<std::byte> bytes(std::size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  std::uint32_t x = seed * 2654435761u + 12345;
  for (auto& b : v) {
    x = x * 1664525u + 1013904223u;
    b = static_cast<std::byte>(x >> 24);
  }
  return v;
}

ticket make(ticket_kind k, transfer_method m, std::size_t payload, std::size_t unread, std::size_t state, unsigned seed) {
  ticket t;
  t.kind = k;
  t.method = m;
  t.sender_pid = 1000 + seed;
  t.target_pid = 2000 + seed;
  for (std::size_t i = 0; i < 16; ++i) t.id.bytes[i] = static_cast<std::uint8_t>(seed * 16 + i);
  t.ack_slot = seed % 3 == 0 ? 0xFFFFFFFFu : seed % 8;
  t.flags = seed % 4;
  t.payload = bytes(payload, seed);
  t.unread = bytes(unread, seed + 100);
  t.state = bytes(state, seed + 200);
  return t;
}

std::size_t payload_for(transfer_method m) {
  switch (m) {
    case transfer_method::wsa_duplicate: return 628;
    case transfer_method::duplicate_handle:
    case transfer_method::inherit: return 8;
    case transfer_method::pidfd_getfd: return 24;
    default: return 0;
  }
}

std::vector<std::pair<std::string, ticket>> all_tickets() {
  std::vector<std::pair<std::string, ticket>> out;
  unsigned seed = 1;
  out.emplace_back("control-none-empty", make(ticket_kind::control, transfer_method::none, 0, 0, 0, seed++));
  out.emplace_back("control-none-state", make(ticket_kind::control, transfer_method::none, 0, 0, 40, seed++));
  out.emplace_back("control-none-unread-state", make(ticket_kind::control, transfer_method::none, 0, 9, 120, seed++));
  const transfer_method methods[] = {transfer_method::wsa_duplicate, transfer_method::duplicate_handle,
                                     transfer_method::inherit, transfer_method::pidfd_getfd,
                                     transfer_method::scm_rights};
  const char* mnames[] = {"wsa_duplicate", "duplicate_handle", "inherit", "pidfd_getfd", "scm_rights"};
  for (int k = 0; k < 2; ++k) {
    const auto kind = k == 0 ? ticket_kind::connection : ticket_kind::listener;
    const std::string kname = k == 0 ? "connection" : "listener";
    for (int m = 0; m < 5; ++m) {
      out.emplace_back(kname + "-" + mnames[m], make(kind, methods[m], payload_for(methods[m]), 0, 0, seed++));
      if (k == 0)
        out.emplace_back(kname + "-" + mnames[m] + "-unread-state",
                         make(kind, methods[m], payload_for(methods[m]), 37 + m, 16 * m + 3, seed++));
    }
  }
  // UDP sockets (appended, so that the ring images below keep their tickets): queued datagrams of
  // both families, one of them empty, in the unread section.
  for (int m : {0, 3}) {
    auto t = make(ticket_kind::udp_socket, methods[m], payload_for(methods[m]), 0, 3, seed++);
    std::deque<baton::detail::queued_datagram> q;
    q.push_back({{boost::asio::ip::make_address("127.0.0.1"), 5353}, bytes(29, seed)});
    q.push_back({{boost::asio::ip::make_address("::1"), 443}, {}});
    q.push_back({{boost::asio::ip::make_address("10.1.2.3"), 53}, bytes(300, seed + 1)});
    t.unread = baton::detail::encode_datagrams(q);
    out.emplace_back(std::string("udp_socket-") + mnames[m] + "-datagrams", t);
  }
  return out;
}

bool write_file(const fs::path& p, const std::vector<std::byte>& v, std::size_t n) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(n));
  return static_cast<bool>(f);
}

std::uint32_t record_check(std::uint32_t len, std::uint32_t pid) {
  // Mirrors ring.cpp; a mismatch only turns the seeds into corruption cases.
  return (len * 2654435761u) ^ pid ^ baton::detail::ring_magic;
}

struct image {
  std::size_t data_bytes;
  std::uint32_t ack_slots;
  std::vector<std::byte> mem;
  ring r;
  image(std::size_t data, std::uint32_t slots, std::size_t max_record)
      : data_bytes(data), ack_slots(slots), mem(ring::mapping_bytes(data, slots)) {
    r.create(mem.data(), mem.size(), data, slots, max_record, fixed_pid);
  }
  bool push(const std::vector<std::byte>& rec) {
    baton::error_code ec;
    r.push(rec.size(), [&](std::span<std::byte> s) { std::memcpy(s.data(), rec.data(), s.size()); }, ec);
    return !ec;
  }
  // Fixed token and record pids, so that the output does not change from run to run.
  void normalise() {
    std::byte* h = mem.data();
    for (int i = 0; i < 16; ++i) h[40 + i] = static_cast<std::byte>(0xA0 + i);  // token at offset 40
    std::uint64_t head, tail;
    std::memcpy(&head, h + 128, 8);
    std::memcpy(&tail, h + 72, 8);
    std::byte* data = h + (mem.size() - data_bytes);
    // Records already consumed are stale: clear them.
    std::vector<bool> live(data_bytes, false);
    for (std::uint64_t pos = head; pos < tail; ++pos) live[pos & (data_bytes - 1)] = true;
    for (std::size_t i = 0; i < data_bytes; ++i)
      if (!live[i]) data[i] = std::byte{0};
    for (std::uint64_t pos = head; pos < tail;) {
      const std::uint64_t off = pos & (data_bytes - 1);
      if (data_bytes - off < baton::detail::record_header_bytes) {
        pos += data_bytes - off;
        continue;
      }
      std::uint32_t hdr[4];
      std::memcpy(hdr, data + off, 16);
      hdr[2] = fixed_pid;
      hdr[3] = record_check(hdr[1], fixed_pid);
      std::memcpy(data + off, hdr, 16);
      pos += hdr[0] == 3 ? hdr[1] : ((16 + hdr[1] + 7) & ~std::uint64_t{7});
    }
  }
  bool write(const fs::path& p) {
    normalise();
    std::size_t n = mem.size();
    while (n > 0 && mem[n - 1] == std::byte{0}) --n;
    // The fuzzer picks the larger layout for inputs longer than the small mapping.
    if (mem.size() > baton::fuzz::small_mapping()) n = std::max(n, baton::fuzz::small_mapping() + 1);
    return write_file(p, mem, n);
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <ticket corpus dir> <ring corpus dir>\n", argv[0]);
    return 2;
  }
  const fs::path tdir = argv[1], rdir = argv[2];
  fs::create_directories(tdir);
  fs::create_directories(rdir);
  bool ok = true;

  const auto tickets = all_tickets();
  std::vector<std::vector<std::byte>> encoded;
  for (const auto& [name, t] : tickets) {
    encoded.push_back(baton::encode(t));
    ok &= write_file(tdir / name, encoded.back(), encoded.back().size());
  }

  using namespace baton::fuzz;
  const std::size_t small_max = small_data_bytes / 2 - baton::detail::record_header_bytes;
  {
    image im(small_data_bytes, small_ack_slots, small_max);
    ok &= im.write(rdir / "empty");
  }
  {
    image im(small_data_bytes, small_ack_slots, small_max);
    for (std::size_t i : {0, 3, 10}) ok &= im.push(encoded[i]);
    ok &= im.write(rdir / "three-tickets");
  }
  {
    // A committed record, one a dead producer reserved and never committed, another committed.
    image im(small_data_bytes, small_ack_slots, small_max);
    ok &= im.push(encoded[1]);
    baton::error_code ec;
    im.r.reserve_and_abandon(100, ec);
    ok &= !ec;
    ok &= im.push(encoded[5]);
    ok &= im.write(rdir / "abandoned-record");
  }
  {
    // Full: small records until the ring refuses.
    image im(small_data_bytes, small_ack_slots, small_max);
    int n = 0;
    while (im.push(encoded[n % 3]) && ++n < 1000) {
    }
    ok &= n > 3;
    ok &= im.write(rdir / "full");
  }
  {
    // Head and tail advanced past the end once: a padding record at the wrap. (The fuzzer's
    // consumer starts at head 0, so this exercises the healing path.)
    image im(small_data_bytes, small_ack_slots, small_max);
    std::vector<std::byte> rec;
    baton::error_code ec;
    for (int i = 0; i < 5; ++i) {
      ok &= im.push(encoded[4]);
      ok &= im.r.pop(rec, ec) == ring::pop_result::record;
    }
    for (int i = 0; i < 4; ++i) ok &= im.push(encoded[4]);
    ok &= im.write(rdir / "wrapped");
  }
  {
    // Largest record the ring takes, plus an ack slot in use.
    image im(small_data_bytes, small_ack_slots, small_max);
    baton::ticket_id id;
    id.bytes.fill(7);
    ok &= im.r.ack_acquire(id, fixed_pid) >= 0;
    ok &= im.push(bytes(small_max, 99));
    ok &= im.write(rdir / "max-record");
  }
  {
    // The larger layout, with tickets of every kind.
    image im(large_data_bytes, large_ack_slots, 3000);
    for (std::size_t i = 0; i < encoded.size() && i < 8; ++i) ok &= im.push(encoded[i]);
    ok &= im.write(rdir / "large-layout");
  }
  if (!ok) std::fprintf(stderr, "seed generation failed\n");
  return ok ? 0 : 1;
}
