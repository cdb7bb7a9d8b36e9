// The ring of tickets in shared memory: producers reserve and commit records under the producer
// lock, the consumer pops them, skipping dead or stalled producers' records and healing garbage.
// The header is ring_header.cpp, the ack slots ring_ack.cpp, the stalled-record holes
// ring_quarantine.cpp; the layout ring_layout.hpp.
#include "ring.hpp"
#include "ring_layout.hpp"

#include "detail/platform.hpp"
#include "detail/shared_atomic.hpp"

#include <chrono>
#include <cstring>
#include <random>
#include <thread>

namespace baton::detail {

namespace {

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
