// Windows transfer of sockets: WSADuplicateSocketW for the target's pid (default), or a
// DuplicateHandle push into the target. Detach with asio's release() (FileReplaceCompletion-
// Information, Windows 8.1+); where that is not implemented (older Windows, Wine) the source
// keeps its handle, still bound to its port, until the target's verdict, and the target runs
// the socket in emulated mode. A handle made in the target is recorded in its transfer table
// first (win/wsa_transfer_table.cpp).
#include "detail/stream.hpp"
#include "win/emulated_socket.hpp"
#include "win/win_headers.hpp"
#include "win/wsa_transfer_table.hpp"

#include <cstring>
#include <utility>

namespace baton::detail {

namespace asio = boost::asio;
using asio::ip::tcp;

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

class win_export final : public pending_export {
 public:
  // Either `kept` (a backend that still owns the socket: not released, or emulated) or `raw`
  // (released from the port, owned here).
  win_export(std::unique_ptr<socket_backend> kept, socket_kind kind, SOCKET raw, tcp proto)
      : kept_(std::move(kept)), kind_(kind), raw_(raw), proto_(proto) {}
  ~win_export() override {
    if (raw_ != INVALID_SOCKET) ::closesocket(raw_);
  }
  void commit() override {
    // The target holds its own handle: closing ours does not close the connection (and must
    // not shut it down, whatever an earlier rolled-back move asked of this backend).
    if (kept_) {
      kept_->set_shutdown_on_close(false);
      kept_->close();
      kept_.reset();
    }
    if (raw_ != INVALID_SOCKET) ::closesocket(raw_);
    raw_ = INVALID_SOCKET;
  }
  std::unique_ptr<socket_backend> rollback(const asio::any_io_executor& ex, error_code& ec) override {
    ec.clear();
    if (kept_) return std::move(kept_);
    auto b = make_native_socket(kind_, ex, proto_, static_cast<std::uintptr_t>(raw_), ec);
    if (b) raw_ = INVALID_SOCKET;
    return b;
  }

 private:
  std::unique_ptr<socket_backend> kept_;
  socket_kind kind_;
  SOCKET raw_;
  tcp proto_;
};

// Fills the ticket's payload for `s` and `target_pid`; a handle made in the target is recorded
// in its transfer table first.
void make_payload(SOCKET s, std::uint32_t target_pid, transfer_strategy how, xfer_endpoint& ep, ticket& t,
                  error_code& ec) {
  ec.clear();
  const bool makes_copy = how == transfer_strategy::automatic || how == transfer_strategy::wsa_duplicate ||
                          how == transfer_strategy::duplicate_handle;
  xfer_entry* entry = nullptr;
  if (makes_copy) {
    entry = ep.claim(t.ack_slot, ec);
    if (ec) return;
  }
  struct unclaim {
    xfer_entry*& e;
    ~unclaim() { xfer_endpoint::unclaim(e); }
  } guard{entry};
  if (how == transfer_strategy::automatic || how == transfer_strategy::wsa_duplicate) {
    WSAPROTOCOL_INFOW info{};
    t.method = transfer_method::wsa_duplicate;
    if (::WSADuplicateSocketW(s, target_pid, &info) != 0) {
      ec = wsa_error(::WSAGetLastError());
      return;
    }
    xfer_endpoint::publish(std::exchange(entry, nullptr), t, 0, &info);
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
    xfer_endpoint::publish(std::exchange(entry, nullptr), t, v, nullptr);
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

SOCKET adopt_pushed_handle(SOCKET s, socket_kind kind);

// Re-creates the socket named by a ticket in this process.
SOCKET import_handle(const ticket& t, xfer_endpoint& ep, socket_kind kind, error_code& ec) {
  ec.clear();
  // From here on the handle is this import's to adopt or close, not an orphan to collect.
  if (t.method == transfer_method::wsa_duplicate || t.method == transfer_method::duplicate_handle)
    ep.clear(t);
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
    s = adopt_pushed_handle(s, kind);
  } else {
    ec = errc::strategy_unavailable;
    return INVALID_SOCKET;
  }
  // The promised type, and an IP socket: an AF_UNIX stream socket is no TCP connection.
  WSAPROTOCOL_INFOW pi{};
  int len = sizeof pi;
  BOOL listening = FALSE;
  int llen = sizeof listening;
  const int want_type = kind == socket_kind::datagram ? SOCK_DGRAM : SOCK_STREAM;
  if (::getsockopt(s, SOL_SOCKET, SO_PROTOCOL_INFOW, reinterpret_cast<char*>(&pi), &len) != 0 ||
      pi.iSocketType != want_type || (pi.iAddressFamily != AF_INET && pi.iAddressFamily != AF_INET6)) {
    if (owned) ::closesocket(s);
    ec = errc::not_a_socket;
    return INVALID_SOCKET;
  }
  if (kind != socket_kind::datagram)
    ::getsockopt(s, SOL_SOCKET, SO_ACCEPTCONN, reinterpret_cast<char*>(&listening), &llen);
  if ((listening != FALSE) != (kind == socket_kind::listener)) {
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

SOCKET adopt_pushed_handle(SOCKET s, socket_kind kind) {
  int type = 0, len = sizeof type;
  if (::getsockopt(s, SOL_SOCKET, SO_TYPE, reinterpret_cast<char*>(&type), &len) == 0) return s;
  if (::WSAGetLastError() != WSAENOTSOCK || !running_on_wine()) return s;
  WSAPROTOCOL_INFOW info{};
  info.iAddressFamily = AF_INET;
  // The protocol info Wine adopts must name the socket's own type: a UDP socket is SOCK_DGRAM.
  const bool dgram = kind == socket_kind::datagram;
  info.iSocketType = dgram ? SOCK_DGRAM : SOCK_STREAM;
  info.iProtocol = dgram ? IPPROTO_UDP : IPPROTO_TCP;
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

std::unique_ptr<pending_export> export_socket(std::unique_ptr<socket_backend>& b, transfer_endpoint& ep,
                                              std::uint32_t target_pid, transfer_strategy how, ticket& t,
                                              error_code& ec) {
  ec.clear();
  const socket_kind kind = b->kind();
  // Wine / pre-8.1 cannot release a socket from its port, and an emulated backend has no port to
  // release from: the backend keeps the handle then, bound where it is.
  error_code rel;
  SOCKET raw = static_cast<SOCKET>(b->release(rel));
  const bool released = !rel;
  if (!released) raw = static_cast<SOCKET>(b->native_handle());
  const tcp proto = protocol_of(raw);
  make_payload(raw, target_pid, how, static_cast<xfer_endpoint&>(ep), t, ec);
  if (ec) {
    // Nothing was made for the target: the socket goes back to the caller as it was.
    if (released) {
      error_code ignored;
      b = make_native_socket(kind, b->get_executor(), proto, static_cast<std::uintptr_t>(raw), ignored);
      if (!b) ::closesocket(raw);
    }
    return nullptr;
  }
  if (!released) return std::make_unique<win_export>(std::move(b), kind, INVALID_SOCKET, proto);
  b.reset();
  return std::make_unique<win_export>(nullptr, kind, raw, proto);
}

std::unique_ptr<socket_backend> import_socket(socket_kind kind, transfer_endpoint& ep, const asio::any_io_executor& ex,
                                              const ticket& t, error_code& ec) {
  const SOCKET s = import_handle(t, static_cast<xfer_endpoint&>(ep), kind, ec);
  if (ec) return nullptr;
  return attach_socket(kind, ex, static_cast<std::uintptr_t>(s), ec);
}

std::unique_ptr<socket_backend> attach_socket(socket_kind kind, const asio::any_io_executor& ex, std::uintptr_t h,
                                              error_code& ec) {
  ec.clear();
  const SOCKET s = static_cast<SOCKET>(h);
  const tcp proto = protocol_of(s);
  error_code aec;
  if (auto b = make_native_socket(kind, ex, proto, h, aec)) return b;
  if (!bound_elsewhere(aec)) {
    ::closesocket(s);
    ec = aec;
    return nullptr;
  }
  if (kind == socket_kind::connection) return make_emulated_stream(ex, s, proto);
  if (kind == socket_kind::datagram) return make_emulated_datagram(ex, s, proto);
  return make_emulated_listener(ex, s, proto, ec);
}

std::size_t largest_transfer_payload() noexcept { return sizeof(WSAPROTOCOL_INFOW); }

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

// AcceptEx gives sockets already bound to the completion port: a dispatcher accepts through Asio.
bool can_accept_detached() noexcept { return false; }
std::uintptr_t accept_detached(tcp::acceptor&, error_code& ec) {
  ec = boost::asio::error::operation_not_supported;
  return ~std::uintptr_t{0};
}

}  // namespace baton::detail
