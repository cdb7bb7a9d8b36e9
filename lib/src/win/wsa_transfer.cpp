// Windows transfer of sockets: WSADuplicateSocketW for the target's pid (default), or a
// DuplicateHandle push into the target. Detach with asio's release() (FileReplaceCompletion-
// Information, Windows 8.1+); where that is not implemented (older Windows, Wine) the source
// keeps its handle, still bound to its port, until the target's verdict, and the target runs
// the socket in emulated mode.
#include "detail/platform.hpp"
#include "detail/stream.hpp"
#include "win/emulated_socket.hpp"
#include "win/win_headers.hpp"

#include <boost/interprocess/mapped_region.hpp>

#include <atomic>
#include <utility>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

namespace baton::detail {

namespace asio = boost::asio;
namespace bip = boost::interprocess;
using asio::ip::tcp;

static_assert(sizeof(WSAPROTOCOL_INFOW) == 628, "the ticket format fixes the WSAPROTOCOL_INFOW size");

transfer_counters& counters() noexcept {
  static transfer_counters c;
  return c;
}

namespace {

error_code wsa_error(int e) { return {e, asio::error::get_system_category()}; }

tcp protocol_of(SOCKET s) {
  sockaddr_storage ss{};
  int len = sizeof ss;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&ss), &len);
  return ss.ss_family == AF_INET6 ? tcp::v6() : tcp::v4();
}

// Microsoft: DuplicateHandle is only safe for sockets of IFS base providers (no layered
// service provider in the chain).
bool ifs_base_provider(SOCKET s) {
  WSAPROTOCOL_INFOW pi{};
  int len = sizeof pi;
  if (::getsockopt(s, SOL_SOCKET, SO_PROTOCOL_INFOW, reinterpret_cast<char*>(&pi), &len) != 0) return false;
  return (pi.dwServiceFlags1 & XP1_IFS_HANDLES) != 0 && pi.ProtocolChain.ChainLen == BASE_PROTOCOL;
}

// --- The receiver's transfer table ----------------------------------------------------------
// WSADuplicateSocketW (and a DuplicateHandle push) make the target's handle at once, before the
// ticket that names it exists. So that a target can close a handle whose ticket never comes (the
// source rolled back, or died first), the source records what it made in the target's table,
// Local\baton.NAME.xfer, at the entry of the move's ack slot, before it duplicates: the method,
// the WSAPROTOCOL_INFOW and a checksum. The target clears the entry when it imports the ticket;
// collect_orphan_transfers redeems entries whose slot no longer wants them (WSASocketW from the
// info, then closesocket) and clears them. A source finding its entry still occupied (an orphan
// not collected yet) fails the move before duplicating, with errc::channel_full.

constexpr std::uint32_t xfer_magic = 0x58464258;  // "XBFX"
constexpr std::uint32_t entry_empty = 0, entry_published = 1, entry_writing = 2;

struct xfer_header {
  std::uint32_t magic;
  std::uint32_t slots;
  std::uint32_t owner_pid;
  std::uint32_t entry_bytes;
};

struct xfer_entry {
  std::uint32_t state;
  std::uint32_t sender;
  std::uint32_t method;
  std::uint32_t check;  // crc32c of the fields below
  std::uint8_t id[16];
  std::uint64_t handle;  // duplicate_handle: the handle's value in the target
  WSAPROTOCOL_INFOW info;
};

std::uint32_t entry_check(const xfer_entry& e) {
  const auto* p = reinterpret_cast<const std::byte*>(&e.id);
  return crc32c({p, sizeof(xfer_entry) - offsetof(xfer_entry, id)}) ^ e.sender ^ (e.method << 24);
}

template <class T>
std::atomic_ref<T> at(T& v) noexcept {
  return std::atomic_ref<T>(v);
}

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

std::mutex tables_mutex;
std::map<std::string, std::shared_ptr<xfer_table>>& own_tables() {  // receiver side, by channel
  static std::map<std::string, std::shared_ptr<xfer_table>> t;
  return t;
}
std::map<std::string, std::shared_ptr<xfer_table>>& peer_tables() {  // sender side, by channel
  static std::map<std::string, std::shared_ptr<xfer_table>> t;
  return t;
}

// Sender: the table of a channel, opened once and validated against its own header.
std::shared_ptr<xfer_table> peer_table(const std::string& channel_name, error_code& ec) {
  ec.clear();
  std::lock_guard lock(tables_mutex);
  auto& m = peer_tables();
  if (auto it = m.find(channel_name); it != m.end()) return it->second;
  auto t = std::make_shared<xfer_table>();
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
  if (m.size() >= 64) m.erase(m.begin());  // bounded: channels a process sends to
  m.emplace(channel_name, t);
  return t;
}

// Sender: claims the entry of the move's slot before anything is duplicated.
xfer_entry* claim_entry(xfer_table& t, std::uint32_t slot, error_code& ec) {
  ec.clear();
  auto* e = t.entry(slot);
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

void publish_entry(xfer_entry* e, const ticket& t, std::uint64_t handle, const WSAPROTOCOL_INFOW* info) {
  e->sender = ::GetCurrentProcessId();
  e->method = static_cast<std::uint32_t>(t.method);
  std::memcpy(e->id, t.id.bytes.data(), 16);
  e->handle = handle;
  if (info) std::memcpy(&e->info, info, sizeof *info);
  else std::memset(&e->info, 0, sizeof e->info);
  e->check = entry_check(*e);
  at(e->state).store(entry_published, std::memory_order_release);
}

// Receiver: the ticket has been read; its entry is no longer an orphan candidate.
void clear_entry(const std::string& channel_name, const ticket& t) {
  std::lock_guard lock(tables_mutex);
  auto it = own_tables().find(channel_name);
  if (it == own_tables().end()) return;
  auto* e = it->second->entry(t.ack_slot);
  if (!e || at(e->state).load(std::memory_order_acquire) != entry_published) return;
  if (std::memcmp(e->id, t.id.bytes.data(), 16) != 0) return;
  at(e->state).store(entry_empty, std::memory_order_release);
}

class win_export final : public pending_export {
 public:
  // Either `kept` (a backend that still owns the socket: not released, or emulated) or `raw`
  // (released from the port, owned here).
  win_export(std::unique_ptr<stream_backend> ks, std::unique_ptr<listener_backend> kl, SOCKET raw, tcp proto)
      : kept_stream_(std::move(ks)), kept_listener_(std::move(kl)), raw_(raw), proto_(proto) {}
  ~win_export() override {
    if (raw_ != INVALID_SOCKET) ::closesocket(raw_);
  }
  void commit() override {
    // The target holds its own handle: closing ours does not close the connection (and must
    // not shut it down, whatever an earlier rolled-back move asked of this backend).
    if (kept_stream_) {
      kept_stream_->set_shutdown_on_close(false);
      kept_stream_->close();
    }
    if (kept_listener_) {
      kept_listener_->set_shutdown_on_close(false);
      kept_listener_->close();
    }
    if (raw_ != INVALID_SOCKET) ::closesocket(raw_);
    raw_ = INVALID_SOCKET;
  }
  std::unique_ptr<stream_backend> rollback_stream(const asio::any_io_executor& ex, error_code& ec) override {
    ec.clear();
    if (kept_stream_) return std::move(kept_stream_);
    tcp::socket s(ex);
    s.assign(proto_, raw_, ec);
    if (ec) return nullptr;
    raw_ = INVALID_SOCKET;
    return make_native_stream(std::move(s));
  }
  std::unique_ptr<listener_backend> rollback_listener(const asio::any_io_executor& ex, error_code& ec) override {
    ec.clear();
    if (kept_listener_) return std::move(kept_listener_);
    tcp::acceptor a(ex);
    a.assign(proto_, raw_, ec);
    if (ec) return nullptr;
    raw_ = INVALID_SOCKET;
    return make_native_listener(std::move(a));
  }

 private:
  std::unique_ptr<stream_backend> kept_stream_;
  std::unique_ptr<listener_backend> kept_listener_;
  SOCKET raw_;
  tcp proto_;
};

// Fills the ticket's payload for `s` and `target_pid`; a handle made in the target is recorded
// in its transfer table first (see above).
void make_payload(SOCKET s, std::uint32_t target_pid, transfer_strategy how, const std::string& channel_name,
                  ticket& t, error_code& ec) {
  ec.clear();
  const bool makes_copy = how == transfer_strategy::automatic || how == transfer_strategy::wsa_duplicate ||
                          how == transfer_strategy::duplicate_handle;
  std::shared_ptr<xfer_table> table;
  xfer_entry* entry = nullptr;
  if (makes_copy) {
    table = peer_table(channel_name, ec);
    if (ec) return;
    entry = claim_entry(*table, t.ack_slot, ec);
    if (ec) return;
  }
  struct unclaim {
    xfer_entry*& e;
    ~unclaim() {
      if (e) at(e->state).store(entry_empty, std::memory_order_release);
    }
  } guard{entry};
  if (how == transfer_strategy::automatic || how == transfer_strategy::wsa_duplicate) {
    WSAPROTOCOL_INFOW info{};
    t.method = transfer_method::wsa_duplicate;
    if (::WSADuplicateSocketW(s, target_pid, &info) != 0) {
      ec = wsa_error(::WSAGetLastError());
      return;
    }
    publish_entry(std::exchange(entry, nullptr), t, 0, &info);
    t.payload.resize(sizeof info);
    std::memcpy(t.payload.data(), &info, sizeof info);
    return;
  }
  if (how == transfer_strategy::duplicate_handle) {
    if (!ifs_base_provider(s)) {
      ec = errc::non_ifs_provider;
      return;
    }
    HANDLE target = ::OpenProcess(PROCESS_DUP_HANDLE, FALSE, target_pid);
    if (!target) {
      ec = {static_cast<int>(::GetLastError()), boost::system::system_category()};
      return;
    }
    HANDLE out = nullptr;
    const BOOL ok = ::DuplicateHandle(::GetCurrentProcess(), reinterpret_cast<HANDLE>(s), target, &out, 0, FALSE,
                                      DUPLICATE_SAME_ACCESS);
    const DWORD err = ::GetLastError();
    ::CloseHandle(target);
    if (!ok) {
      ec = {static_cast<int>(err), boost::system::system_category()};
      return;
    }
    const std::uint64_t v = reinterpret_cast<std::uintptr_t>(out);
    t.method = transfer_method::duplicate_handle;
    publish_entry(std::exchange(entry, nullptr), t, v, nullptr);
    t.payload.resize(8);
    std::memcpy(t.payload.data(), &v, 8);
    return;
  }
  if (how == transfer_strategy::inherit) {
    // The child inherited the handle under the same value (spawn_with_handles).
    const std::uint64_t v = static_cast<std::uint64_t>(s);
    t.method = transfer_method::inherit;
    t.payload.resize(8);
    std::memcpy(t.payload.data(), &v, 8);
    return;
  }
  ec = errc::strategy_unavailable;
}

SOCKET adopt_pushed_handle(SOCKET s);

// Re-creates the socket named by a ticket in this process.
SOCKET import_socket(const ticket& t, const std::string& channel_name, bool want_listener, error_code& ec) {
  ec.clear();
  // From here on the handle is this import's to adopt or close, not an orphan to collect.
  if (t.method == transfer_method::wsa_duplicate || t.method == transfer_method::duplicate_handle)
    clear_entry(channel_name, t);
  SOCKET s = INVALID_SOCKET;
  bool owned = true;
  if (t.method == transfer_method::wsa_duplicate) {
    WSAPROTOCOL_INFOW info{};
    std::memcpy(&info, t.payload.data(), sizeof info);
    s = ::WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &info, 0, WSA_FLAG_OVERLAPPED);
    if (s == INVALID_SOCKET) {
      ec = wsa_error(::WSAGetLastError());
      return s;
    }
  } else if (t.method == transfer_method::duplicate_handle || t.method == transfer_method::inherit) {
    std::uint64_t v = 0;
    std::memcpy(&v, t.payload.data(), 8);
    s = static_cast<SOCKET>(v);
    owned = false;  // until it proves to be a socket, it is not ours to close
    s = adopt_pushed_handle(s);
  } else {
    ec = errc::strategy_unavailable;
    return INVALID_SOCKET;
  }
  int type = 0, len = sizeof type;
  BOOL listening = FALSE;
  int llen = sizeof listening;
  if (::getsockopt(s, SOL_SOCKET, SO_TYPE, reinterpret_cast<char*>(&type), &len) != 0 || type != SOCK_STREAM) {
    if (owned) ::closesocket(s);
    ec = errc::not_a_socket;
    return INVALID_SOCKET;
  }
  ::getsockopt(s, SOL_SOCKET, SO_ACCEPTCONN, reinterpret_cast<char*>(&listening), &llen);
  if ((listening != FALSE) != want_listener) {
    // A pushed or inherited handle value that is not the promised socket may name one of our own.
    if (owned) ::closesocket(s);
    ec = errc::not_a_socket;
    return INVALID_SOCKET;
  }
  return s;
}

// Wine's ws2_32 recognises only sockets it created or imported itself (a per-process list), so a
// handle pushed in with DuplicateHandle is "not a socket" to it although the kernel object is.
// Wine's own WSADuplicateSocketW transports the handle in a WSAPROTOCOL_INFOW marked with
// dwServiceFlags4 == 0xff00ff00 and dwServiceFlags3 == handle, which WSASocketW then adopts; we
// use that path to register the pushed handle. Real Windows needs (and takes) no such step.
bool running_on_wine() {
  static const bool wine = ::GetProcAddress(::GetModuleHandleW(L"ntdll.dll"), "wine_get_version") != nullptr;
  return wine;
}

SOCKET adopt_pushed_handle(SOCKET s) {
  int type = 0, len = sizeof type;
  if (::getsockopt(s, SOL_SOCKET, SO_TYPE, reinterpret_cast<char*>(&type), &len) == 0) return s;
  if (::WSAGetLastError() != WSAENOTSOCK || !running_on_wine()) return s;
  WSAPROTOCOL_INFOW info{};
  info.iAddressFamily = AF_INET;
  info.iSocketType = SOCK_STREAM;
  info.iProtocol = IPPROTO_TCP;
  info.dwServiceFlags4 = 0xff00ff00;
  info.dwServiceFlags3 = static_cast<DWORD>(s);
  SOCKET adopted = ::WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &info, 0, WSA_FLAG_OVERLAPPED);
  return adopted == INVALID_SOCKET ? s : adopted;
}

// ERROR_INVALID_PARAMETER from CreateIoCompletionPort: the socket's file object is still bound
// to the source's port.
bool bound_elsewhere(const error_code& ec) {
  return ec.value() == ERROR_INVALID_PARAMETER || ec.value() == WSAEINVAL;
}

}  // namespace

std::unique_ptr<pending_export> export_stream(std::unique_ptr<stream_backend>& s, std::uint32_t target_pid,
                                              transfer_strategy how, const std::string& channel_name, ticket& t,
                                              error_code& ec) {
  ec.clear();
  SOCKET raw = INVALID_SOCKET;
  bool released = false;
  if (auto* sock = s->socket()) {
    error_code rel;
    SOCKET r = sock->release(rel);
    if (!rel) {
      raw = r;
      released = true;
    } else {
      raw = sock->native_handle();  // Wine / pre-8.1: stays with asio, bound to our port
    }
  } else {
    raw = static_cast<SOCKET>(s->native_handle());
  }
  const tcp proto = protocol_of(raw);
  make_payload(raw, target_pid, how, channel_name, t, ec);
  if (ec) {
    if (released) {
      error_code ignored;
      tcp::socket back(s->socket()->get_executor());
      back.assign(proto, raw, ignored);
      s = make_native_stream(std::move(back));
    }
    return nullptr;
  }
  if (released) {
    s.reset();
    return std::make_unique<win_export>(nullptr, nullptr, raw, proto);
  }
  return std::make_unique<win_export>(std::move(s), nullptr, INVALID_SOCKET, proto);
}

std::unique_ptr<stream_backend> import_stream(const asio::any_io_executor& ex, const ticket& t,
                                              const std::string& channel_name, error_code& ec) {
  SOCKET s = import_socket(t, channel_name, false, ec);
  if (ec) return nullptr;
  const tcp proto = protocol_of(s);
  tcp::socket sock(ex);
  error_code aec;
  sock.assign(proto, s, aec);
  if (!aec) return make_native_stream(std::move(sock));
  if (!bound_elsewhere(aec)) {
    ::closesocket(s);
    ec = aec;
    return nullptr;
  }
  return make_emulated_stream(ex, s, proto);
}

std::unique_ptr<pending_export> export_listener(std::unique_ptr<listener_backend>& l, std::uint32_t target_pid,
                                                transfer_strategy how, const std::string& channel_name, ticket& t,
                                                error_code& ec) {
  ec.clear();
  SOCKET raw = INVALID_SOCKET;
  bool released = false;
  if (auto* a = l->acceptor()) {
    error_code rel;
    SOCKET r = a->release(rel);
    if (!rel) {
      raw = r;
      released = true;
    } else {
      raw = a->native_handle();
    }
  } else {
    raw = static_cast<SOCKET>(l->native_handle());
  }
  const tcp proto = protocol_of(raw);
  make_payload(raw, target_pid, how, channel_name, t, ec);
  if (ec) {
    if (released) {
      error_code ignored;
      tcp::acceptor back(l->acceptor()->get_executor());
      back.assign(proto, raw, ignored);
      l = make_native_listener(std::move(back));
    }
    return nullptr;
  }
  if (released) {
    l.reset();
    return std::make_unique<win_export>(nullptr, nullptr, raw, proto);
  }
  return std::make_unique<win_export>(nullptr, std::move(l), INVALID_SOCKET, proto);
}

std::unique_ptr<listener_backend> import_listener(const asio::any_io_executor& ex, const ticket& t,
                                                  const std::string& channel_name, error_code& ec) {
  SOCKET s = import_socket(t, channel_name, true, ec);
  if (ec) return nullptr;
  return adopt_listener(ex, static_cast<std::uintptr_t>(s), ec);
}

std::size_t largest_transfer_payload() noexcept { return sizeof(WSAPROTOCOL_INFOW); }

void open_transfer_endpoint(const std::string& channel_name, std::uint32_t ack_slots, bool global_namespace,
                            error_code& ec) {
  ec.clear();
  auto t = std::make_shared<xfer_table>();
  const std::size_t size = sizeof(xfer_header) + std::size_t{ack_slots} * sizeof(xfer_entry);
  t->region = create_region(object_name(channel_name, "xfer", global_namespace), size, ec);
  if (ec) return;
  t->slots = ack_slots;
  t->sender_dead.assign(ack_slots, ticket_id{});
  const xfer_header h{xfer_magic, ack_slots, ::GetCurrentProcessId(), sizeof(xfer_entry)};
  std::memcpy(t->region.get_address(), &h, sizeof h);
  std::lock_guard lock(tables_mutex);
  own_tables()[channel_name] = std::move(t);
}

void close_transfer_endpoint(const std::string& channel_name) noexcept {
  std::lock_guard lock(tables_mutex);
  own_tables().erase(channel_name);
  peer_tables().erase(channel_name);
}

void collect_orphan_transfers(const std::string& channel_name, const transfer_wanted& wanted) noexcept {
  std::shared_ptr<xfer_table> t;
  {
    std::lock_guard lock(tables_mutex);
    auto it = own_tables().find(channel_name);
    if (it == own_tables().end()) return;
    t = it->second;
  }
  for (std::uint32_t i = 0; i < t->slots; ++i) {
    auto* e = t->entry(i);
    if (at(e->state).load(std::memory_order_acquire) != entry_published) continue;
    xfer_entry copy;
    std::memcpy(&copy, e, sizeof copy);
    ticket_id id;
    std::memcpy(id.bytes.data(), copy.id, 16);
    // A sender seen dead by the previous collection died before the ring was last seen empty:
    // any ticket it committed has been read (and its entry cleared) since.
    const bool dead_before = t->sender_dead[i] == id;
    if (wanted(i, id) && !dead_before) {
      t->sender_dead[i] = process_alive(copy.sender) ? ticket_id{} : id;
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
    t->sender_dead[i] = ticket_id{};
    at(e->state).store(entry_empty, std::memory_order_release);
  }
}

std::uintptr_t duplicate_socket_handle(std::uintptr_t h, error_code& ec) {
  ec.clear();
  // WSADuplicateSocketW for our own pid: a new handle that ws2_32 (and Wine's) knows as a socket.
  WSAPROTOCOL_INFOW info{};
  if (::WSADuplicateSocketW(static_cast<SOCKET>(h), ::GetCurrentProcessId(), &info) != 0) {
    ec = wsa_error(::WSAGetLastError());
    return ~std::uintptr_t{0};
  }
  SOCKET s = ::WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &info, 0, WSA_FLAG_OVERLAPPED);
  if (s == INVALID_SOCKET) {
    ec = wsa_error(::WSAGetLastError());
    return ~std::uintptr_t{0};
  }
  ::SetHandleInformation(reinterpret_cast<HANDLE>(s), HANDLE_FLAG_INHERIT, 0);
  return static_cast<std::uintptr_t>(s);
}

void close_socket_handle(std::uintptr_t h) noexcept { ::closesocket(static_cast<SOCKET>(h)); }

std::unique_ptr<listener_backend> adopt_listener(const asio::any_io_executor& ex, std::uintptr_t h, error_code& ec) {
  ec.clear();
  const SOCKET s = static_cast<SOCKET>(h);
  const tcp proto = protocol_of(s);
  tcp::acceptor a(ex);
  error_code aec;
  a.assign(proto, s, aec);
  if (!aec) return make_native_listener(std::move(a));
  if (!bound_elsewhere(aec)) {
    ::closesocket(s);
    ec = aec;
    return nullptr;
  }
  return make_emulated_listener(ex, s, proto, ec);
}

}  // namespace baton::detail
