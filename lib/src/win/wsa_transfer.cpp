// Windows transfer of sockets: WSADuplicateSocketW for the target's pid (default), or a
// DuplicateHandle push into the target. Detach with asio's release() (FileReplaceCompletion-
// Information, Windows 8.1+); where that is not implemented (older Windows, Wine) the source
// keeps its handle, still bound to its port, until the target's verdict, and the target runs
// the socket in emulated mode.
#include "detail/platform.hpp"
#include "detail/stream.hpp"
#include "win/emulated_socket.hpp"
#include "win/win_headers.hpp"

#include <cstdio>
#include <cstring>

namespace baton::detail {

namespace asio = boost::asio;
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
    // The target holds its own handle: closing ours does not close the connection.
    if (kept_stream_) kept_stream_->close();
    if (kept_listener_) kept_listener_->close();
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

// Fills the ticket's payload for `s` and `target_pid`.
void make_payload(SOCKET s, std::uint32_t target_pid, transfer_strategy how, ticket& t, error_code& ec) {
  ec.clear();
  if (how == transfer_strategy::automatic || how == transfer_strategy::wsa_duplicate) {
    WSAPROTOCOL_INFOW info{};
    if (::WSADuplicateSocketW(s, target_pid, &info) != 0) {
      ec = wsa_error(::WSAGetLastError());
      return;
    }
    t.method = transfer_method::wsa_duplicate;
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
SOCKET import_socket(const ticket& t, bool want_listener, error_code& ec) {
  ec.clear();
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
    ::closesocket(s);
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
                                              transfer_strategy how, const std::string&, ticket& t,
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
  make_payload(raw, target_pid, how, t, ec);
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

std::unique_ptr<stream_backend> import_stream(const asio::any_io_executor& ex, const ticket& t, const std::string&,
                                              error_code& ec) {
  SOCKET s = import_socket(t, false, ec);
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
                                                transfer_strategy how, const std::string&, ticket& t,
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
  make_payload(raw, target_pid, how, t, ec);
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
                                                  const std::string&, error_code& ec) {
  SOCKET s = import_socket(t, true, ec);
  if (ec) return nullptr;
  return adopt_listener(ex, static_cast<std::uintptr_t>(s), ec);
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
