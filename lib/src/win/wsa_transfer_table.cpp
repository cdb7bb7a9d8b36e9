// The receiver's transfer table (Windows). WSADuplicateSocketW (and a DuplicateHandle push) make
// the target's handle at once, before the ticket that names it exists. So that a target can close
// a handle whose ticket never comes (the source rolled back, or died first), the source records
// what it made in the target's table, Local\baton.NAME.xfer, at the entry of the move's ack slot,
// before it duplicates: the method, the WSAPROTOCOL_INFOW and a checksum. The target clears the
// entry when it imports the ticket; its orphan collection redeems entries whose slot no longer
// wants them (WSASocketW from the info, then closesocket) and clears them. A source finding its
// entry still occupied (an orphan not collected yet) fails the move before duplicating, with
// errc::channel_full.
#include "win/wsa_transfer_table.hpp"

#include "detail/shared_atomic.hpp"
#include "detail/stream.hpp"

#include <boost/interprocess/mapped_region.hpp>

#include <cstddef>
#include <cstring>
#include <vector>

namespace baton::detail {

namespace bip = boost::interprocess;

static_assert(sizeof(WSAPROTOCOL_INFOW) == 628, "the ticket format fixes the WSAPROTOCOL_INFOW size");

namespace {

constexpr std::uint32_t xfer_magic = 0x58464258;  // "XBFX"
constexpr std::uint32_t entry_empty = 0, entry_published = 1, entry_writing = 2;

struct xfer_header {
  std::uint32_t magic;
  std::uint32_t slots;
  std::uint32_t owner_pid;
  std::uint32_t entry_bytes;
};

}  // namespace

struct xfer_entry {
  std::uint32_t state;
  std::uint32_t sender;
  std::uint32_t method;
  std::uint32_t check;  // crc32c of the fields below
  std::uint8_t id[16];
  std::uint64_t handle;  // duplicate_handle: the handle's value in the target
  WSAPROTOCOL_INFOW info;
};

struct xfer_table {
  bip::mapped_region region;
  std::uint32_t slots = 0;
  // Receiver: the entries whose sender the previous collection saw dead (by ticket id, so that a
  // later entry at the same slot is not taken for them).
  std::vector<ticket_id> sender_dead;
  xfer_entry* entry(std::uint32_t i) {
    if (i >= slots) return nullptr;
    return reinterpret_cast<xfer_entry*>(static_cast<char*>(region.get_address()) + sizeof(xfer_header)) + i;
  }
};

namespace {

std::uint32_t entry_check(const xfer_entry& e) {
  const auto* p = reinterpret_cast<const std::byte*>(&e.id);
  return crc32c({p, sizeof(xfer_entry) - offsetof(xfer_entry, id)}) ^ e.sender ^ (e.method << 24);
}

// Sender: the receiver's table, validated against its own header.
std::unique_ptr<xfer_table> open_table(const std::string& channel_name, error_code& ec) {
  auto t = std::make_unique<xfer_table>();
  t->region = open_region(object_name(channel_name, "xfer", false), ec);
  if (ec == errc::channel_not_found) t->region = open_region(object_name(channel_name, "xfer", true), ec);
  if (ec) return nullptr;
  const auto size = t->region.get_size();
  xfer_header h{};
  if (size >= sizeof h) std::memcpy(&h, t->region.get_address(), sizeof h);
  if (size < sizeof h || h.magic != xfer_magic || h.entry_bytes != sizeof(xfer_entry) || h.slots == 0 ||
      size < sizeof h + std::uint64_t{h.slots} * sizeof(xfer_entry)) {
    ec = errc::bad_channel_header;
    return nullptr;
  }
  t->slots = h.slots;
  return t;
}

}  // namespace

xfer_endpoint::xfer_endpoint(const std::string& channel_name, std::uint32_t ack_slots, bool global_namespace,
                             error_code& ec)
    : name_(channel_name), table_(std::make_unique<xfer_table>()), receiver_(true) {
  ec.clear();
  const std::size_t size = sizeof(xfer_header) + std::size_t{ack_slots} * sizeof(xfer_entry);
  table_->region = create_region(object_name(channel_name, "xfer", global_namespace), size, ec);
  if (ec) return;
  table_->slots = ack_slots;
  table_->sender_dead.assign(ack_slots, ticket_id{});
  const xfer_header h{xfer_magic, ack_slots, ::GetCurrentProcessId(), sizeof(xfer_entry)};
  std::memcpy(table_->region.get_address(), &h, sizeof h);
}

xfer_endpoint::xfer_endpoint(std::string channel_name) : name_(std::move(channel_name)) {}

xfer_endpoint::~xfer_endpoint() = default;

xfer_entry* xfer_endpoint::claim(std::uint32_t slot, error_code& ec) {
  ec.clear();
  if (!table_) table_ = open_table(name_, ec);
  if (ec) return nullptr;
  auto* e = table_->entry(slot);
  if (!e) {
    ec = errc::channel_corrupted;
    return nullptr;
  }
  std::uint32_t expected = entry_empty;
  if (!at(e->state).compare_exchange_strong(expected, entry_writing, std::memory_order_acq_rel)) {
    ec = errc::channel_full;  // an earlier rolled-back handle at this slot is not collected yet
    return nullptr;
  }
  return e;
}

void xfer_endpoint::unclaim(xfer_entry* e) noexcept {
  if (e) at(e->state).store(entry_empty, std::memory_order_release);
}

void xfer_endpoint::publish(xfer_entry* e, const ticket& t, std::uint64_t handle,
                            const WSAPROTOCOL_INFOW* info) noexcept {
  e->sender = ::GetCurrentProcessId();
  e->method = static_cast<std::uint32_t>(t.method);
  std::memcpy(e->id, t.id.bytes.data(), 16);
  e->handle = handle;
  if (info) std::memcpy(&e->info, info, sizeof *info);
  else std::memset(&e->info, 0, sizeof e->info);
  e->check = entry_check(*e);
  at(e->state).store(entry_published, std::memory_order_release);
}

void xfer_endpoint::clear(const ticket& t) noexcept {
  if (!receiver_) return;
  auto* e = table_->entry(t.ack_slot);
  if (!e || at(e->state).load(std::memory_order_acquire) != entry_published) return;
  if (std::memcmp(e->id, t.id.bytes.data(), 16) != 0) return;
  at(e->state).store(entry_empty, std::memory_order_release);
}

void xfer_endpoint::collect_orphans(const transfer_wanted& wanted) noexcept {
  if (!receiver_) return;
  auto& t = *table_;
  for (std::uint32_t i = 0; i < t.slots; ++i) {
    auto* e = t.entry(i);
    if (at(e->state).load(std::memory_order_acquire) != entry_published) continue;
    xfer_entry copy;
    std::memcpy(&copy, e, sizeof copy);
    ticket_id id;
    std::memcpy(id.bytes.data(), copy.id, 16);
    // A sender seen dead by the previous collection died before the ring was last seen empty:
    // any ticket it committed has been read (and its entry cleared) since.
    const bool dead_before = t.sender_dead[i] == id;
    if (wanted(i, id) && !dead_before) {
      t.sender_dead[i] = process_alive(copy.sender) ? ticket_id{} : id;
      continue;
    }
    // Redeem and close. Only a WSAPROTOCOL_INFOW is redeemed: WSASocketW makes a new handle from
    // it, so garbage fails instead of naming one of our own handles. An orphan of the opt-in
    // DuplicateHandle push is a bare handle value, which we cannot tell from one of ours.
    if (copy.check == entry_check(copy) && copy.method == static_cast<std::uint32_t>(transfer_method::wsa_duplicate)) {
      SOCKET s = ::WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &copy.info, 0,
                              WSA_FLAG_OVERLAPPED);
      if (s != INVALID_SOCKET) {
        ::closesocket(s);
        counters().orphans_closed++;
      }
    }
    t.sender_dead[i] = ticket_id{};
    at(e->state).store(entry_empty, std::memory_order_release);
  }
}

std::unique_ptr<transfer_endpoint> open_transfer_endpoint(const std::string& channel_name, std::uint32_t ack_slots,
                                                          bool global_namespace, bool receiver, error_code& ec) {
  ec.clear();
  if (!receiver) return std::make_unique<xfer_endpoint>(channel_name);
  auto ep = std::make_unique<xfer_endpoint>(channel_name, ack_slots, global_namespace, ec);
  if (ec) return nullptr;
  return ep;
}

void remove_transfer_endpoint(const std::string&) noexcept {}

}  // namespace baton::detail
