// Quarantine of stalled records: the holes a skipped record leaves, which producers and the
// consumer jump until the record's producer is done with it.
#include "detail/platform.hpp"
#include "detail/shared_atomic.hpp"
#include "ring.hpp"
#include "ring_layout.hpp"

#include <chrono>

namespace baton::detail {

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

}  // namespace baton::detail
