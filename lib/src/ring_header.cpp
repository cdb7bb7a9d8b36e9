// The ring's shared header: written by its owner at creation, validated by every process that
// attaches, and rewritten (healed) by the receiver when garbage overwrote it.
#include "detail/platform.hpp"
#include "detail/shared_atomic.hpp"
#include "ring.hpp"
#include "ring_layout.hpp"

#include <chrono>
#include <cstring>
#include <random>

namespace baton::detail {

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

}  // namespace baton::detail
