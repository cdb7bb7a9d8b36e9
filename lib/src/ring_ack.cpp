// The ring's ack slots: a sender claims one per transaction, the receiver resolves it with its
// verdict, and the sender reads (or cancels) it. See ring.hpp.
#include "detail/platform.hpp"
#include "detail/shared_atomic.hpp"
#include "ring.hpp"
#include "ring_layout.hpp"

#include <cstring>

namespace baton::detail {

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

}  // namespace baton::detail
