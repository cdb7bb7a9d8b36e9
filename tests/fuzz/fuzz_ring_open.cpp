// libFuzzer target: arbitrary bytes as the contents of a channel's shared memory (header, ack
// table, record area). The input is overlaid onto a zero-filled buffer of a valid mapping size;
// if ring::attach accepts the header, records are popped (and decoded, as the channel does)
// until the ring is empty, blocked or reports an error, in a bounded loop. It must never crash,
// hang or touch memory outside the buffer (ASan: the buffer is exactly the mapping size).
#include "fuzz_common.hpp"
#include "ring.hpp"

#include <baton/ticket.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

namespace {

struct aligned_buffer {
  explicit aligned_buffer(std::size_t n)
      : size(n), p(static_cast<std::byte*>(::operator new(n, std::align_val_t{4096}))) {
    std::memset(p, 0, n);
  }
  ~aligned_buffer() { ::operator delete(p, std::align_val_t{4096}); }
  aligned_buffer(const aligned_buffer&) = delete;
  aligned_buffer& operator=(const aligned_buffer&) = delete;
  std::size_t size;
  std::byte* p;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using baton::detail::ring;
  const std::size_t map = baton::fuzz::mapping_for_input(size);
  aligned_buffer buf(map);
  std::memcpy(buf.p, data, std::min(size, map));
  // The producer lock word (offset 64) is cleared: with a lock held by garbage a heal stays
  // pending (pop() reports `blocked`) until a 10 ms grace or the holder's death, which is a
  // timing path, not a parsing one, and would leave the header unhealed at the end of a run.
  std::memset(buf.p + 64, 0, 4);

  ring r;
  baton::error_code ec;
  r.attach(buf.p, buf.size, ec);
  if (ec) return 0;
  const auto& id = r.identity();
  if (id.total_bytes != map || id.data_offset + id.data_bytes != map) {
    std::fprintf(stderr, "attach accepted an identity that does not match the mapping\n");
    std::abort();
  }

  // Every pop either consumes at least 8 bytes of the record area or heals the ring, so a few
  // rounds of the area's size in 8-byte steps bound the loop; more would be a livelock.
  const std::size_t max_pops = 2 * (id.data_bytes / 8) + 16;
  std::vector<std::byte> rec;
  std::size_t records = 0, errors = 0;
  for (std::size_t i = 0;; ++i) {
    if (i == max_pops) {
      std::fprintf(stderr, "pop did not reach an empty ring after %zu calls\n", i);
      std::abort();
    }
    rec.clear();
    const auto res = r.pop(rec, ec);
    if (res == ring::pop_result::empty || res == ring::pop_result::blocked) break;
    if (res == ring::pop_result::error) {
      if (!ec) {
        std::fprintf(stderr, "pop reported an error without an error code\n");
        std::abort();
      }
      // A healed ring is empty; a skipped dead producer's record lets popping go on.
      if (++errors > 4) break;
      continue;
    }
    if (rec.size() > id.max_record_bytes) {
      std::fprintf(stderr, "pop returned %zu bytes, more than max_record_bytes %llu\n", rec.size(),
                   static_cast<unsigned long long>(id.max_record_bytes));
      std::abort();
    }
    ++records;
    baton::error_code dec;
    (void)baton::decode(rec, dec);
  }
  // After all that, the header in the buffer must be intact (pop heals what it finds broken).
  if (!r.header_intact()) {
    std::fprintf(stderr, "header not intact after popping\n");
    std::abort();
  }
  (void)records;
  return 0;
}
