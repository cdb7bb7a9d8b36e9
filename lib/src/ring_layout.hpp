#pragma once
// The ring's layout in shared memory: its header, record headers and ack slots, and the states a
// record goes through. Shared by ring.cpp and ring_quarantine.cpp.
#include "ring.hpp"

#include <cstdint>

namespace baton::detail {

struct ring::shared_header {
  // Identity, written once by the owner (64 bytes).
  std::uint32_t magic;
  std::uint16_t layout_version;
  std::uint16_t header_bytes;
  std::uint64_t total_bytes;
  std::uint64_t data_offset;
  std::uint64_t data_bytes;
  std::uint32_t ack_slots;
  std::uint32_t owner_pid;
  std::uint8_t token[16];
  std::uint64_t max_record_bytes;
  // Producer side (own cache line).
  std::uint32_t lock;  // 0, or the pid of the producer holding it
  std::uint32_t pad0;
  std::uint64_t tail;
  std::uint64_t records_in;
  std::uint64_t doorbells;
  std::uint8_t pad1[32];
  // Consumer side (own cache line).
  std::uint64_t head;
  std::uint32_t waiting;
  std::uint32_t pad2;
  std::uint8_t pad3[48];
  // Quarantined areas (ring offsets; len 0 = unused), written by the consumer, read by producers
  // under the lock. See ring::pop.
  std::uint32_t hole_off[ring_max_holes];
  std::uint32_t hole_len[ring_max_holes];
};
static_assert(sizeof(ring::shared_header) == ring_header_bytes);

struct ring::record_header {
  std::uint32_t state;  // 0 none, 1 reserved, 2 committed, 3 padding to the end of the area
  std::uint32_t length;
  std::uint32_t pid;
  std::uint32_t check;
};
static_assert(sizeof(ring::record_header) == record_header_bytes);

// `word` holds the state in its low half and a generation in its high half. Every claim of the
// slot bumps the generation, so a compare-and-swap on the word cannot succeed against a later
// owner of the slot (the ABA of a slot released and reclaimed between a reader's id check and
// its CAS).
struct ring::ack_slot {
  std::uint64_t word;
  std::uint32_t pid;
  std::uint32_t pad;
  std::uint8_t id[16];
};
static_assert(sizeof(ring::ack_slot) == ack_slot_bytes);

// Record states.
inline constexpr std::uint32_t rec_reserved = 1, rec_committed = 2, rec_padding = 3;
// Set by the consumer when it skips a reserved record, and by the record's producer when it then
// finds its record skipped and stops writing into it.
inline constexpr std::uint32_t rec_skipped = 4, rec_abandoned = 5;
inline constexpr std::uint32_t ack_claiming = 5;

}  // namespace baton::detail
