#pragma once
// A bounded multi-producer single-consumer ring of variable-size records in shared memory,
// plus the ack table that the move protocol needs. Layout (all offsets from the mapping start):
//
//   [0, 256)            ring_header: identity (magic, version, sizes, owner pid, token) and
//                       the producer lock, tail, head, waiting flag, counters
//   [256, 256+A*32)     ack table: A slots of 32 bytes
//   [data_off, +D)      record area, D a power of two; records 8-byte aligned, never wrapping
//
// The consumer trusts nothing in shared memory: it keeps private copies of the identity and of
// its head, validates every record header against them, and heals the ring when it finds
// garbage. Producers keep private copies too and never write outside the mapping.

#include <baton/error.hpp>
#include <baton/ticket.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

namespace baton::detail {

inline constexpr std::uint32_t ring_magic = 0x52544E42;  // "BNTR"
inline constexpr std::uint16_t ring_layout_version = 2;  // 2: quarantined areas in the header, ack slots with a generation
inline constexpr std::size_t ring_header_bytes = 256;
inline constexpr std::size_t ack_slot_bytes = 32;
inline constexpr std::size_t record_header_bytes = 16;
/// How long a record may stay reserved by a live producer (stopped, debugged, recycled pid)
/// before the consumer skips it; the same bound as a producer's wait for the lock.
inline constexpr std::chrono::milliseconds ring_stall_bound{2000};
/// Areas of skipped records that a stalled producer may still write into (see ring::pop).
inline constexpr std::size_t ring_max_holes = 8;

struct ring_identity {
  std::uint32_t magic = ring_magic;
  std::uint16_t layout_version = ring_layout_version;
  std::uint16_t header_bytes = ring_header_bytes;
  std::uint64_t total_bytes = 0;
  std::uint64_t data_offset = 0;
  std::uint64_t data_bytes = 0;
  std::uint32_t ack_slots = 0;
  std::uint32_t owner_pid = 0;
  std::uint8_t token[16] = {};
  std::uint64_t max_record_bytes = 0;
};

/// Ack slot states.
enum class ack_state : std::uint32_t { free = 0, pending = 1, accepted = 2, rejected = 3, cancelled = 4 };

struct ring_counters {
  std::uint64_t records_in = 0;
  std::uint64_t records_out = 0;
  std::uint64_t producer_deaths = 0;  ///< records skipped because their producer died
  std::uint64_t corruptions = 0;      ///< times the consumer found garbage and healed the ring
  std::uint64_t doorbells = 0;        ///< doorbell rings by producers (coalescing shows here)
  std::uint64_t stalled = 0;          ///< records skipped because a live producer kept them reserved too long
  std::uint64_t truncations = 0;      ///< times the consumer found the header zeroed (object truncated)
};

/// Test hook: called by ack_resolve between its reading of a slot and its compare-and-swap, so
/// that a test can force another sender's release and reclaim into that window.
inline void (*ack_resolve_hook)(std::uint32_t slot) = nullptr;

/// One mapped ring, seen from one process. Not thread-safe; use from one strand.
class ring {
 public:
  /// Bytes a mapping needs for the given record area and ack slots.
  static std::size_t mapping_bytes(std::size_t data_bytes, std::uint32_t ack_slots);

  /// Initialises a zero-filled mapping as its owner (the consumer).
  void create(void* base, std::size_t size, std::size_t data_bytes, std::uint32_t ack_slots,
              std::size_t max_record_bytes, std::uint32_t owner_pid);
  /// Attaches as a producer; validates the header against the mapping size.
  void attach(void* base, std::size_t size, error_code& ec);

  const ring_identity& identity() const noexcept { return id_; }

  // Producer side -----------------------------------------------------------------------------
  /// Reserves room for `n` payload bytes, lets `fill` write them, commits. Returns true if the
  /// consumer was waiting and must be woken (the caller rings the doorbell).
  /// Errors: channel_full, record_too_large, channel_corrupted.
  bool push(std::size_t n, const std::function<void(std::span<std::byte>)>& fill, error_code& ec);
  /// For tests of producer death: reserves and returns without committing.
  void reserve_and_abandon(std::size_t n, error_code& ec);
  /// True if the header in shared memory still matches this process's copy.
  bool header_intact() const noexcept;

  // Consumer side -----------------------------------------------------------------------------
  enum class pop_result { record, empty, error, blocked };
  /// Pops the next record into `out`. `blocked` means the next record is being written by a live
  /// producer (or a heal waits for the lock). `error` reports in `ec` a skipped record of a dead
  /// (producer_died) or stalled (producer_stalled) producer, a healed corruption
  /// (channel_corrupted) or a zeroed, i.e. truncated, header (channel_truncated). Never waits.
  pop_result pop(std::vector<std::byte>& out, error_code& ec);
  /// Announces that the consumer is about to sleep. Returns false if records arrived meanwhile.
  bool prepare_wait() noexcept;
  void cancel_wait() noexcept;
  /// Rewrites the header from the private copy and empties the ring (after garbage was found).
  /// Never waits for the producer lock: if it is held, the heal stays pending (pop() retries it)
  /// and after a short grace goes ahead without the lock.
  void heal() noexcept;

  // Ack table ---------------------------------------------------------------------------------
  /// Producer: claims a free slot (or one whose owner died). Returns slot index or -1.
  std::int64_t ack_acquire(const ticket_id& id, std::uint32_t pid) noexcept;
  /// Producer: reads the slot's state (validating that it is still ours).
  ack_state ack_peek(std::uint32_t slot, const ticket_id& id) const noexcept;
  /// Producer: pending -> cancelled; returns the state that wins (cancelled, or the receiver's).
  ack_state ack_cancel(std::uint32_t slot, const ticket_id& id) noexcept;
  /// Producer: frees the slot after reading the final state.
  void ack_release(std::uint32_t slot) noexcept;
  /// Consumer: pending -> accepted/rejected. Returns false if the sender already gave up
  /// (timeout) or the slot does not belong to this ticket: the consumer must then not keep the
  /// connection.
  bool ack_resolve(std::uint32_t slot, const ticket_id& id, bool accept) noexcept;
  /// Consumer: true while the slot still waits for a verdict on ticket `id` (its sender has not
  /// given up). A transferred handle whose slot is no longer wanted will never be claimed.
  bool ack_wanted(std::uint32_t slot, const ticket_id& id) const noexcept;

  ring_counters counters() const noexcept;

  struct shared_header;
  struct record_header;
  struct ack_slot;

 private:
  shared_header* hdr() const noexcept;
  ack_slot* slot(std::uint32_t i) const noexcept;
  std::byte* data() const noexcept { return base_ + id_.data_offset; }
  bool lock(std::uint32_t pid) noexcept;
  void unlock(std::uint32_t pid) noexcept;
  std::size_t reserve(std::size_t n, std::uint64_t& pos, error_code& ec);
  bool try_lock_nowait(std::uint32_t pid) noexcept;
  void rewrite_header() noexcept;
  std::uint64_t hole_jump(std::uint64_t pos) const noexcept;
  bool hole_starts_at(std::uint64_t pos, std::uint64_t off) const noexcept;
  void quarantine(std::uint64_t pos, std::uint64_t off, std::uint64_t size, std::uint32_t pid) noexcept;
  void tend_holes() noexcept;
  bool consumer_words_intact() const noexcept;

  // A skipped record's area, kept away from producers while its stalled producer may still write
  // into it. `slot` indexes the shared table while active; afterwards the hole still applies to
  // positions reserved before `expire_at` (the tail when it was lifted).
  struct hole {
    std::uint64_t pos = 0;
    std::uint32_t off = 0, len = 0, pid = 0, slot = 0;
    bool active = true;
    std::uint64_t expire_at = ~std::uint64_t{0};
    std::chrono::steady_clock::time_point probed{};
  };

  std::byte* base_ = nullptr;
  std::size_t size_ = 0;
  ring_identity id_;
  std::uint64_t head_ = 0;  // consumer's private head
  bool owner_ = false;
  std::uint64_t corruptions_ = 0;
  std::uint64_t deaths_ = 0;
  std::uint64_t stalled_ = 0;
  std::uint64_t truncations_ = 0;
  std::vector<hole> holes_;
  bool heal_pending_ = false;
  std::chrono::steady_clock::time_point heal_since_{}, holes_tended_{}, lock_seen_since_{}, lock_probed_{};
  std::uint32_t lock_seen_ = 0;
  std::uint64_t out_ = 0;
  std::uint64_t blocked_at_ = ~std::uint64_t{0};
  std::uint64_t cached_head_ = 0;  // producer: last head seen
  std::uint64_t cached_tail_ = 0;  // consumer: last tail seen
  std::chrono::steady_clock::time_point blocked_since_{};
};

}  // namespace baton::detail
