#include "ring.hpp"

#include "detail/platform.hpp"
#include "detail/shared_atomic.hpp"

#include <chrono>
#include <cstring>
#include <random>
#include <thread>

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

namespace {

constexpr std::uint32_t rec_reserved = 1, rec_committed = 2, rec_padding = 3;
// Set by the consumer when it skips a reserved record, and by the record's producer when it then
// finds its record skipped and stops writing into it.
constexpr std::uint32_t rec_skipped = 4, rec_abandoned = 5;
constexpr std::uint32_t ack_claiming = 5;

constexpr std::size_t align8(std::size_t n) { return (n + 7) & ~std::size_t{7}; }

std::uint32_t record_check(std::uint32_t len, std::uint32_t pid) { return (len * 2654435761u) ^ pid ^ ring_magic; }

}  // namespace

std::size_t ring::mapping_bytes(std::size_t data_bytes, std::uint32_t ack_slots) {
  std::size_t data_off = align8(ring_header_bytes + std::size_t{ack_slots} * ack_slot_bytes);
  data_off = (data_off + 4095) & ~std::size_t{4095};
  return data_off + data_bytes;
}

ring::shared_header* ring::hdr() const noexcept { return reinterpret_cast<shared_header*>(base_); }

ring::ack_slot* ring::slot(std::uint32_t i) const noexcept {
  return reinterpret_cast<ack_slot*>(base_ + ring_header_bytes) + i;
}

void ring::create(void* base, std::size_t size, std::size_t data_bytes, std::uint32_t ack_slots,
                  std::size_t max_record_bytes, std::uint32_t owner_pid) {
  base_ = static_cast<std::byte*>(base);
  size_ = size;
  owner_ = true;
  id_.total_bytes = size;
  id_.data_bytes = data_bytes;
  id_.data_offset = size - data_bytes;
  id_.ack_slots = ack_slots;
  id_.owner_pid = owner_pid;
  id_.max_record_bytes = max_record_bytes;
  std::random_device rd;
  for (auto& b : id_.token) b = static_cast<std::uint8_t>(rd());
  rewrite_header();  // nobody else has the mapping yet
}

void ring::heal() noexcept {
  // The header is rewritten under the producer lock so that no producer reserves from a half
  // written header. The consumer never waits for the lock, though: its thread is the receiver's
  // reactor, and a lock word can name a live process forever (garbage, a stopped producer). If
  // the lock is held, the heal stays pending and pop() retries it; after a short grace (a live
  // producer holds the lock for a few stores) it goes ahead without the lock. A producer that
  // was inside its critical section then may store a tail that does not fit the healed header;
  // the consumer validates every tail and record, so that shows up as one more corruption and
  // one more heal, never as a read outside the ring.
  const auto now = std::chrono::steady_clock::now();
  if (!heal_pending_) {
    heal_pending_ = true;
    heal_since_ = now;
  }
  const std::uint32_t me = current_pid();
  const bool locked = try_lock_nowait(me);
  if (!locked && now - heal_since_ < std::chrono::milliseconds(10)) return;
  rewrite_header();
  heal_pending_ = false;
  if (locked) unlock(me);
}

void ring::rewrite_header() noexcept {
  auto* h = hdr();
  h->magic = id_.magic;
  h->layout_version = id_.layout_version;
  h->header_bytes = id_.header_bytes;
  h->total_bytes = id_.total_bytes;
  h->data_offset = id_.data_offset;
  h->data_bytes = id_.data_bytes;
  h->ack_slots = id_.ack_slots;
  h->owner_pid = id_.owner_pid;
  std::memcpy(h->token, id_.token, sizeof id_.token);
  h->max_record_bytes = id_.max_record_bytes;
  // Lifted holes only matter for positions reserved before the heal; the ring restarts at head_,
  // so only the active ones (stalled producers that may still write) are kept, and the shared
  // table is rewritten from the private list.
  std::erase_if(holes_, [](const hole& x) { return !x.active; });
  for (std::size_t i = 0; i < ring_max_holes; ++i) {
    at(h->hole_len[i]).store(0, std::memory_order_relaxed);
    h->hole_off[i] = 0;
  }
  for (const auto& x : holes_) {
    h->hole_off[x.slot] = x.off;
    at(h->hole_len[x.slot]).store(x.len, std::memory_order_release);
  }
  at(h->head).store(head_, std::memory_order_release);
  at(h->tail).store(head_, std::memory_order_release);
  at(h->waiting).store(0, std::memory_order_release);
  cached_tail_ = head_;
  blocked_at_ = ~std::uint64_t{0};  // positions from head_ on are reserved anew
}

bool ring::try_lock_nowait(std::uint32_t pid) noexcept {
  auto lk = at(hdr()->lock);
  std::uint32_t expected = 0;
  if (lk.compare_exchange_strong(expected, pid, std::memory_order_acquire)) return true;
  // Held: remember by whom and since when, and break it on a later call (never by waiting here)
  // under the producers' rule: at once if the holder is dead, after the bound if it lives.
  const auto now = std::chrono::steady_clock::now();
  if (expected != lock_seen_) {
    lock_seen_ = expected;
    lock_seen_since_ = now;
    return false;
  }
  bool stale = now - lock_seen_since_ >= ring_stall_bound;
  if (!stale && now - lock_probed_ >= std::chrono::milliseconds(10)) {
    lock_probed_ = now;
    stale = !process_alive(expected);
  }
  return stale && lk.compare_exchange_strong(expected, pid, std::memory_order_acquire);
}

void ring::attach(void* base, std::size_t size, error_code& ec) {
  ec.clear();
  base_ = static_cast<std::byte*>(base);
  size_ = size;
  owner_ = false;
  if (size < ring_header_bytes) {
    ec = errc::bad_channel_header;
    return;
  }
  const auto* h = hdr();
  ring_identity id;
  id.magic = h->magic;
  id.layout_version = h->layout_version;
  id.header_bytes = h->header_bytes;
  id.total_bytes = h->total_bytes;
  id.data_offset = h->data_offset;
  id.data_bytes = h->data_bytes;
  id.ack_slots = h->ack_slots;
  id.owner_pid = h->owner_pid;
  std::memcpy(id.token, h->token, sizeof id.token);
  id.max_record_bytes = h->max_record_bytes;
  bool token_set = false;
  for (auto b : id.token) token_set |= b != 0;
  const bool pow2 = id.data_bytes >= 4096 && (id.data_bytes & (id.data_bytes - 1)) == 0;
  if (id.magic != ring_magic || id.layout_version != ring_layout_version || id.header_bytes != ring_header_bytes ||
      id.total_bytes != size || !pow2 || id.data_bytes > size || id.data_offset != size - id.data_bytes ||
      id.ack_slots == 0 || ring_header_bytes + std::uint64_t{id.ack_slots} * ack_slot_bytes > id.data_offset ||
      id.max_record_bytes == 0 || id.max_record_bytes > id.data_bytes / 2 - record_header_bytes || !token_set ||
      id.owner_pid == 0) {
    ec = errc::bad_channel_header;
    return;
  }
  id_ = id;
}

bool ring::header_intact() const noexcept {
  // Every process works from its private copy of the sizes, so garbage elsewhere in the identity
  // cannot mislead it; magic, owner and token are what tell an overwritten header.
  const auto* h = hdr();
  return h->magic == id_.magic && h->owner_pid == id_.owner_pid &&
         std::memcmp(h->token, id_.token, sizeof id_.token) == 0;
}

bool ring::lock(std::uint32_t pid) noexcept {
  auto lk = at(hdr()->lock);
  std::chrono::steady_clock::time_point start{};
  for (std::uint32_t i = 0;; ++i) {
    std::uint32_t expected = 0;
    if (lk.compare_exchange_weak(expected, pid, std::memory_order_acquire)) return true;
    // The holder keeps the lock for a few stores: spin, then yield. A lock still held after
    // 4096 tries (and 4 liveness probes) belongs to a stopped process or to garbage: then sleep
    // a millisecond between tries and probe every 16, instead of burning a core and flooding
    // the system with probes for the 2 s below (under Wine a probe is three wineserver calls,
    // and the receiver's reactor waits on the same wineserver).
    const bool sleeping = i >= 4096;
    if (sleeping) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    else if (i > 64) std::this_thread::yield();
    if (i == 1023) start = std::chrono::steady_clock::now();  // contended: start the clock
    if (sleeping ? (i % 16 == 0) : ((i & 1023) == 1023)) {
      // The lock is held for a few stores only. A holder that is dead is broken at once. A live
      // holder is waited for up to 2 s: longer than any scheduling delay, so only a stopped
      // process or garbage in the lock word that happens to name a live pid gets its lock
      // broken (the consumer then detects and heals any damage).
      const bool stale = std::chrono::steady_clock::now() - start > std::chrono::seconds(2);
      if (expected != 0 && (stale || !process_alive(expected))) {
        if (lk.compare_exchange_strong(expected, pid, std::memory_order_acquire)) return true;
      }
    }
  }
}

void ring::unlock(std::uint32_t pid) noexcept {
  std::uint32_t expected = pid;
  at(hdr()->lock).compare_exchange_strong(expected, 0, std::memory_order_release);
}

std::size_t ring::reserve(std::size_t n, std::uint64_t& pos, error_code& ec) {
  const std::uint64_t D = id_.data_bytes;
  if (n > id_.max_record_bytes) {
    ec = errc::record_too_large;
    return 0;
  }
  if (!header_intact()) {
    ec = errc::channel_corrupted;
    return 0;
  }
  const std::uint32_t me = current_pid();
  const std::size_t size = align8(record_header_bytes + n);
  auto* h = hdr();
  lock(me);
  const std::uint64_t tail = at(h->tail).load(std::memory_order_relaxed);
  // The consumer's head lives on its own cache line; a stale copy only under-estimates the
  // room, so it is re-read only when the copy says the record does not fit. The holes are read
  // after the head: a hole the consumer made is published before the head that passes it, and a
  // record placed within a lap of an older head cannot reach the hole's next lap.
  std::uint64_t head = cached_head_;
  std::uint64_t t = tail;
  std::uint64_t pads[2 * ring_max_holes + 2][2];
  std::size_t np = 0;
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (attempt == 1) {
      head = at(h->head).load(std::memory_order_acquire);
      cached_head_ = head;
    }
    if (attempt == 0 && (tail < head || tail - head > D)) continue;  // a stale copy of the head
    std::uint32_t ho[ring_max_holes], hl[ring_max_holes];
    bool bad = tail < head || tail - head > D || (tail & 7) != 0;
    for (std::size_t i = 0; i < ring_max_holes; ++i) {
      hl[i] = at(h->hole_len[i]).load(std::memory_order_acquire);
      ho[i] = h->hole_off[i];
      if (hl[i] != 0)
        bad |= (ho[i] & 7) != 0 || (hl[i] & 7) != 0 || hl[i] < record_header_bytes || std::uint64_t{ho[i]} + hl[i] > D;
    }
    // Place the record: skip each quarantined area (with a padding record before it if there
    // is room for one; the consumer knows the areas and skips a gap too small for a header),
    // and pad to the end of the area where the record would not fit before it.
    t = tail;
    np = 0;
    for (int guard = 0; !bad; ++guard) {
      const std::uint64_t off = t & (D - 1);
      std::uint64_t gap = D, len = 0;
      for (std::size_t i = 0; i < ring_max_holes; ++i) {
        if (hl[i] == 0) continue;
        if (ho[i] < off && off < std::uint64_t{ho[i]} + hl[i]) bad = true;  // the tail inside a hole
        if (ho[i] >= off && ho[i] - off < gap) {
          gap = ho[i] - off;
          len = hl[i];
        }
      }
      if (bad || guard > static_cast<int>(2 * ring_max_holes + 1)) {
        bad = true;
        break;
      }
      if (len != 0 && gap < size) {
        if (gap >= record_header_bytes) {
          pads[np][0] = off;
          pads[np++][1] = gap;
        }
        t += gap + len;
        continue;
      }
      if (off + size > D) {
        if (D - off >= record_header_bytes) {
          pads[np][0] = off;
          pads[np++][1] = D - off;
        }
        t += D - off;
        continue;
      }
      break;
    }
    if (bad) {
      unlock(me);
      ec = errc::channel_corrupted;
      return 0;
    }
    if (t + size - head <= D) break;
    if (attempt == 1) {
      unlock(me);
      ec = errc::channel_full;
      return 0;
    }
  }
  for (std::size_t i = 0; i < np; ++i) {
    auto* ph = reinterpret_cast<record_header*>(data() + pads[i][0]);
    ph->length = static_cast<std::uint32_t>(pads[i][1]);
    ph->pid = me;
    ph->check = record_check(ph->length, me);
    at(ph->state).store(rec_padding, std::memory_order_release);
  }
  const std::uint64_t off = t & (D - 1);
  auto* rh = reinterpret_cast<record_header*>(data() + off);
  rh->length = static_cast<std::uint32_t>(n);
  rh->pid = me;
  rh->check = record_check(rh->length, me);
  at(rh->state).store(rec_reserved, std::memory_order_release);
  // The header is complete before the tail covers it, so a producer dying here leaves either no
  // trace (tail not moved) or a reserved record the consumer can skip.
  at(h->tail).store(t + size, std::memory_order_release);
  unlock(me);
  pos = off;
  return size;
}

bool ring::push(std::size_t n, const std::function<void(std::span<std::byte>)>& fill, error_code& ec) {
  ec.clear();
  std::uint64_t off = 0;
  if (!reserve(n, off, ec)) return false;
  auto* rh = reinterpret_cast<record_header*>(data() + off);
  fill({data() + off + record_header_bytes, n});
  // A compare-exchange, not a store: if this process was stopped (or very slow) between reserve
  // and here for longer than ring_stall_bound, the consumer has skipped the record (reserved ->
  // skipped). The area is quarantined until we say we are done with it, so the late fill above
  // wrote into nothing that anyone reads; say so and report the skip to the sender.
  std::uint32_t expected = rec_reserved;
  if (!at(rh->state).compare_exchange_strong(expected, rec_committed, std::memory_order_acq_rel)) {
    if (expected == rec_skipped) at(rh->state).store(rec_abandoned, std::memory_order_release);
    ec = errc::record_skipped;
    return false;
  }
  auto* h = hdr();
  at(h->records_in).fetch_add(1, std::memory_order_relaxed);
  // Pairs with the fence in prepare_wait(): either the consumer sees this record, or we see its
  // waiting flag and ring.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (at(h->waiting).load(std::memory_order_relaxed) != 0 && at(h->waiting).exchange(0) != 0) {
    at(h->doorbells).fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  return false;
}

void ring::reserve_and_abandon(std::size_t n, error_code& ec) {
  ec.clear();
  std::uint64_t off = 0;
  reserve(n, off, ec);
}

// Stalled producers. A record that stays reserved while its producer lives (stopped by SIGSTOP
// or a debugger, or a recycled pid, or garbage naming a live pid such as 1) is skipped after
// ring_stall_bound, so that it holds up neither the receiver nor the other producers for longer.
// But a producer that was only stopped may resume at any moment and write the rest of its
// payload, and its commit, into the record's area: nothing can stop a process from writing into
// a mapping it holds. So the skipped record's area becomes a hole that producers place no record
// in (they jump it, with a padding record before it where one fits, and the consumer jumps it
// at the same places) until its producer is done with it: the producer, whose commit is a
// compare-exchange that fails on a skipped record, marks it abandoned (and reports
// errc::record_skipped to its sender), or it dies. Only then is the hole lifted, under the lock,
// at a known tail: positions reserved before that tail were placed around the hole, later ones
// not, and the consumer applies the hole by the same rule. The choice: a hole costs the ring at
// most one record's room per stalled producer for as long as the stall lasts, where the
// alternative (holding the head at the record) would fill the ring within one lap. With more
// than ring_max_holes stalled producers at once, further records are skipped without a hole:
// a late write could then damage a later record, which the consumer's validation and the
// ticket checksum turn into a reported error, never into a crash.

std::uint64_t ring::hole_jump(std::uint64_t pos) const noexcept {
  const std::uint64_t off = pos & (id_.data_bytes - 1);
  for (const auto& x : holes_) {
    if (!x.active && pos >= x.expire_at) continue;
    if (x.off < off) continue;
    const std::uint64_t gap = x.off - off;
    if (gap == 0) return x.len;
    if (gap < record_header_bytes) return gap + x.len;  // no room for a padding record
  }
  return 0;
}

bool ring::hole_starts_at(std::uint64_t pos, std::uint64_t off) const noexcept {
  for (const auto& x : holes_)
    if (x.off == off && (x.active || pos < x.expire_at)) return true;
  return false;
}

void ring::quarantine(std::uint64_t pos, std::uint64_t off, std::uint64_t size, std::uint32_t pid) noexcept {
  bool used[ring_max_holes] = {};
  for (const auto& x : holes_)
    if (x.active) used[x.slot] = true;
  for (std::uint32_t i = 0; i < ring_max_holes; ++i) {
    if (used[i]) continue;
    hole x;
    x.pos = pos;
    x.off = static_cast<std::uint32_t>(off);
    x.len = static_cast<std::uint32_t>(size);
    x.pid = pid;
    x.slot = i;
    x.probed = std::chrono::steady_clock::now();
    holes_.push_back(x);
    // Published before the head that passes the record (release store in pop()).
    auto* h = hdr();
    h->hole_off[i] = x.off;
    at(h->hole_len[i]).store(x.len, std::memory_order_release);
    return;
  }
}

void ring::tend_holes() noexcept {
  const auto now = std::chrono::steady_clock::now();
  if (now - holes_tended_ < std::chrono::milliseconds(10)) return;
  holes_tended_ = now;
  std::erase_if(holes_, [&](const hole& x) { return !x.active && head_ >= x.expire_at; });
  bool locked = false;
  const std::uint32_t me = current_pid();
  auto* h = hdr();
  for (auto& x : holes_) {
    if (!x.active) continue;
    auto* rh = reinterpret_cast<record_header*>(data() + x.off);
    bool done = at(rh->state).load(std::memory_order_acquire) != rec_skipped;
    if (!done && now - x.probed >= std::chrono::milliseconds(50)) {
      x.probed = now;
      done = !process_alive(x.pid);
    }
    if (!done) continue;
    // Lifted under the lock, so that every reservation is placed either with the hole (before
    // `expire_at`) or without it (after). No lock now: try again later.
    if (!locked && !(locked = try_lock_nowait(me))) return;
    at(h->hole_len[x.slot]).store(0, std::memory_order_release);
    h->hole_off[x.slot] = 0;
    x.active = false;
    x.expire_at = at(h->tail).load(std::memory_order_acquire);
  }
  if (locked) unlock(me);
}

bool ring::consumer_words_intact() const noexcept {
  const auto* h = hdr();
  if (at(const_cast<std::uint64_t&>(h->head)).load(std::memory_order_relaxed) != head_) return false;
  std::uint32_t want_off[ring_max_holes] = {}, want_len[ring_max_holes] = {};
  for (const auto& x : holes_) {
    if (!x.active) continue;
    want_off[x.slot] = x.off;
    want_len[x.slot] = x.len;
  }
  for (std::size_t i = 0; i < ring_max_holes; ++i) {
    const std::uint32_t len = at(const_cast<std::uint32_t&>(h->hole_len[i])).load(std::memory_order_relaxed);
    if (len != want_len[i] || (len != 0 && h->hole_off[i] != want_off[i])) return false;
  }
  return true;
}

ring::pop_result ring::pop(std::vector<std::byte>& out, error_code& ec) {
  ec.clear();
  const std::uint64_t D = id_.data_bytes;
  auto* h = hdr();
  if (heal_pending_) {
    heal();
    if (heal_pending_) return pop_result::blocked;
  }
  if (!holes_.empty()) tend_holes();
  auto garbage = [&] {
    ++corruptions_;
    heal();
    ec = errc::channel_corrupted;
    return pop_result::error;
  };
  for (;;) {
    if (!header_intact()) {
      // A header that reads as zeros is what a truncated object looks like once it is grown
      // back (by the region guard of any process that faulted on it, see platform_posix.cpp).
      if (h->magic == 0 && h->owner_pid == 0) {
        ++truncations_;
        heal();
        ec = errc::channel_truncated;
        return pop_result::error;
      }
      return garbage();
    }
    // Records below a tail already seen need no new look at the producers' cache line.
    std::uint64_t tail = cached_tail_;
    if (head_ >= tail) {
      tail = at(h->tail).load(std::memory_order_acquire);
      cached_tail_ = tail;
    }
    if (tail < head_ || tail - head_ > D || (tail & 7) != 0) return garbage();
    if (tail == head_) {
      // Nothing to read: a good moment to check the consumer's own words, which producers
      // trust (a sender that finds them broken rings the doorbell to get here).
      if (!consumer_words_intact()) return garbage();
      return pop_result::empty;
    }
    const std::uint64_t off = head_ & (D - 1);
    const std::uint64_t rem = D - off;
    if (rem < record_header_bytes) {
      head_ += rem;
      at(h->head).store(head_, std::memory_order_release);
      continue;
    }
    if (const std::uint64_t jump = holes_.empty() ? 0 : hole_jump(head_)) {
      if (head_ + jump > tail) return garbage();
      head_ += jump;
      at(h->head).store(head_, std::memory_order_release);
      continue;
    }
    auto* rh = reinterpret_cast<record_header*>(data() + off);
    const std::uint32_t st = at(rh->state).load(std::memory_order_acquire);
    const std::uint32_t len = rh->length;
    const std::uint32_t pid = rh->pid;
    const bool check_ok = rh->check == record_check(len, pid);
    if (st == rec_padding && check_ok && len >= record_header_bytes && len % 8 == 0 && len <= rem &&
        head_ + len <= tail && (len == rem || hole_starts_at(head_ + len, off + len))) {
      head_ += len;
      at(h->head).store(head_, std::memory_order_release);
      continue;
    }
    const std::uint64_t size = align8(record_header_bytes + std::uint64_t{len});
    if ((st != rec_reserved && st != rec_committed) || !check_ok || len > id_.max_record_bytes || size > rem ||
        head_ + size > tail)
      return garbage();
    if (st == rec_reserved) {
      // A live producer commits within microseconds: only a record that stays reserved for
      // a millisecond is worth a liveness probe (a system call).
      const auto now = std::chrono::steady_clock::now();
      if (blocked_at_ != head_) {
        blocked_at_ = head_;
        blocked_since_ = now;
        return pop_result::blocked;
      }
      const auto waited = now - blocked_since_;
      if (waited < std::chrono::milliseconds(1)) return pop_result::blocked;
      const bool alive = process_alive(pid);
      if (alive && waited < ring_stall_bound) return pop_result::blocked;
      // Take the record from its producer; if it committed just now, deliver it instead.
      std::uint32_t expected = rec_reserved;
      if (!at(rh->state).compare_exchange_strong(expected, rec_skipped, std::memory_order_acq_rel)) continue;
      if (alive) {
        quarantine(head_, off, size, pid);  // it may still write into the record (see above)
        ++stalled_;
        ec = errc::producer_stalled;
      } else {
        ++deaths_;
        ec = errc::producer_died;
      }
      head_ += size;
      at(h->head).store(head_, std::memory_order_release);
      return pop_result::error;
    }
    // Copy out before publishing the new head: producers may overwrite the area right after.
    const std::byte* src = data() + off + record_header_bytes;
    out.assign(src, src + len);
    head_ += size;
    ++out_;
    at(h->head).store(head_, std::memory_order_release);
    return pop_result::record;
  }
}

bool ring::prepare_wait() noexcept {
  auto* h = hdr();
  // A pending heal is retried by the periodic wake-up of the receiver.
  if (heal_pending_) return true;
  at(h->waiting).store(1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const std::uint64_t tail = at(h->tail).load(std::memory_order_acquire);
  if (tail == head_) return true;
  // A record is present: sleep only if it is still being written by its producer, which will
  // see the flag when it commits.
  const std::uint64_t D = id_.data_bytes;
  const std::uint64_t off = head_ & (D - 1);
  if (tail > head_ && tail - head_ <= D && D - off >= record_header_bytes && (holes_.empty() || hole_jump(head_) == 0)) {
    auto* rh = reinterpret_cast<record_header*>(data() + off);
    if (at(rh->state).load(std::memory_order_acquire) == rec_reserved) return true;
  }
  at(h->waiting).store(0, std::memory_order_relaxed);
  return false;
}

void ring::cancel_wait() noexcept { at(hdr()->waiting).store(0, std::memory_order_relaxed); }

namespace {

constexpr std::uint64_t make_word(std::uint32_t gen, std::uint32_t state) {
  return (std::uint64_t{gen} << 32) | state;
}
constexpr std::uint32_t word_state(std::uint64_t w) { return static_cast<std::uint32_t>(w); }
constexpr std::uint32_t word_gen(std::uint64_t w) { return static_cast<std::uint32_t>(w >> 32); }
constexpr std::uint32_t st(ack_state a) { return static_cast<std::uint32_t>(a); }

}  // namespace

std::int64_t ring::ack_acquire(const ticket_id& id, std::uint32_t pid) noexcept {
  static thread_local std::uint32_t cursor = static_cast<std::uint32_t>(pid * 7919u);
  const std::uint32_t A = id_.ack_slots;
  for (std::uint32_t k = 0; k < A; ++k) {
    const std::uint32_t i = (cursor + k) % A;
    auto* s = slot(i);
    auto w = at(s->word);
    std::uint64_t cur = w.load(std::memory_order_acquire);
    const std::uint32_t cs = word_state(cur);
    // A free slot, or one whose sender died without releasing it, is taken; the new generation
    // voids any verdict still aimed at the previous owner.
    const bool candidate = cs == st(ack_state::free) || (cs != ack_claiming && !process_alive(s->pid));
    if (!candidate) continue;
    const std::uint32_t gen = word_gen(cur) + 1;
    if (!w.compare_exchange_strong(cur, make_word(gen, ack_claiming), std::memory_order_acq_rel)) continue;
    s->pid = pid;
    std::memcpy(s->id, id.bytes.data(), 16);
    w.store(make_word(gen, st(ack_state::pending)), std::memory_order_release);
    cursor = i + 1;
    return i;
  }
  return -1;
}

ack_state ring::ack_peek(std::uint32_t i, const ticket_id& id) const noexcept {
  if (i >= id_.ack_slots) return ack_state::cancelled;
  auto* s = slot(i);
  const auto state = word_state(at(s->word).load(std::memory_order_acquire));
  if (std::memcmp(s->id, id.bytes.data(), 16) != 0) return ack_state::cancelled;
  if (state > st(ack_state::cancelled)) return ack_state::pending;
  return static_cast<ack_state>(state);
}

ack_state ring::ack_cancel(std::uint32_t i, const ticket_id& id) noexcept {
  if (i >= id_.ack_slots) return ack_state::cancelled;
  auto* s = slot(i);
  auto w = at(s->word);
  std::uint64_t cur = w.load(std::memory_order_acquire);
  if (std::memcmp(s->id, id.bytes.data(), 16) != 0) return ack_state::cancelled;
  if (word_state(cur) == st(ack_state::pending) &&
      w.compare_exchange_strong(cur, make_word(word_gen(cur), st(ack_state::cancelled)), std::memory_order_acq_rel))
    return ack_state::cancelled;
  const auto state = word_state(cur);
  return state <= st(ack_state::cancelled) ? static_cast<ack_state>(state) : ack_state::cancelled;
}

void ring::ack_release(std::uint32_t i) noexcept {
  if (i >= id_.ack_slots) return;
  auto w = at(slot(i)->word);
  const std::uint64_t cur = w.load(std::memory_order_acquire);
  w.store(make_word(word_gen(cur), st(ack_state::free)), std::memory_order_release);
}

bool ring::ack_resolve(std::uint32_t i, const ticket_id& id, bool accept) noexcept {
  if (i >= id_.ack_slots) return false;
  auto* s = slot(i);
  auto w = at(s->word);
  // Read the word first, then the id: a slot reclaimed in between carries a new generation, so
  // the CAS below fails instead of resolving somebody else's move.
  std::uint64_t cur = w.load(std::memory_order_acquire);
  if (word_state(cur) != st(ack_state::pending)) return false;
  if (std::memcmp(s->id, id.bytes.data(), 16) != 0) return false;
  if (ack_resolve_hook) ack_resolve_hook(i);
  const auto to = accept ? ack_state::accepted : ack_state::rejected;
  return w.compare_exchange_strong(cur, make_word(word_gen(cur), st(to)), std::memory_order_acq_rel);
}

bool ring::ack_wanted(std::uint32_t i, const ticket_id& id) const noexcept {
  if (i >= id_.ack_slots) return false;
  auto* s = slot(i);
  const std::uint64_t cur = at(s->word).load(std::memory_order_acquire);
  return word_state(cur) == st(ack_state::pending) && std::memcmp(s->id, id.bytes.data(), 16) == 0;
}

ring_counters ring::counters() const noexcept {
  ring_counters c;
  auto* h = hdr();
  c.records_in = at(h->records_in).load(std::memory_order_relaxed);
  c.doorbells = at(h->doorbells).load(std::memory_order_relaxed);
  c.records_out = out_;
  c.producer_deaths = deaths_;
  c.corruptions = corruptions_;
  c.stalled = stalled_;
  c.truncations = truncations_;
  return c;
}

}  // namespace baton::detail
