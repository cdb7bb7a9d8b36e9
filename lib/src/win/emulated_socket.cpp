#include "win/emulated_socket.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/windows/object_handle.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>

namespace baton::detail {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

error_code emulated_error(int e) {
  if (e == WSA_OPERATION_ABORTED || e == ERROR_OPERATION_ABORTED) return asio::error::operation_aborted;
  return {e, asio::error::get_system_category()};
}

HANDLE new_event() { return ::CreateEventW(nullptr, TRUE, FALSE, nullptr); }

// The low bit tells the kernel not to queue a completion packet for this operation.
HANDLE no_port(HANDLE ev) { return reinterpret_cast<HANDLE>(reinterpret_cast<ULONG_PTR>(ev) | 1); }

// Readies `ov` for one overlapped operation signalled on `ev`, never on a completion port.
void prepare(OVERLAPPED& ov, HANDLE ev) {
  std::memset(&ov, 0, sizeof ov);
  ::ResetEvent(ev);
  ov.hEvent = no_port(ev);
}

// The local or peer address of a raw socket.
tcp::endpoint endpoint_of(SOCKET s, bool peer, error_code& ec) {
  sockaddr_storage ss{};
  int len = sizeof ss;
  const int rc = peer ? ::getpeername(s, reinterpret_cast<sockaddr*>(&ss), &len)
                      : ::getsockname(s, reinterpret_cast<sockaddr*>(&ss), &len);
  if (rc != 0) {
    ec = emulated_error(::WSAGetLastError());
    return {};
  }
  ec.clear();
  tcp::endpoint ep;
  if (len > 0 && static_cast<std::size_t>(len) <= ep.capacity()) {
    std::memcpy(ep.data(), &ss, static_cast<std::size_t>(len));
    ep.resize(static_cast<std::size_t>(len));
  }
  return ep;
}

// Shared with every operation in flight, so a closed connection's late completions are safe.
struct emu_state {
  SOCKET s = INVALID_SOCKET;
  tcp proto = tcp::v4();
  HANDLE rev = nullptr, wev = nullptr;
  asio::windows::object_handle rwait, wwait;
  OVERLAPPED rov{}, wov{};
  bool closed = false;

  emu_state(const asio::any_io_executor& ex, SOCKET sock, tcp p)
      : s(sock), proto(p), rev(new_event()), wev(new_event()), rwait(ex, rev), wwait(ex, wev) {}
  ~emu_state() {
    if (s != INVALID_SOCKET) ::closesocket(s);
  }
};

// After issuing an overlapped operation: true, with its error, if it failed at once (pending or
// done, its event fires either way).
bool failed_at_once(int rc, error_code& ec) {
  if (rc != SOCKET_ERROR) return false;
  const int e = ::WSAGetLastError();
  if (e == WSA_IO_PENDING) return false;
  ec = emulated_error(e);
  return true;
}

// The outcome of `st`'s overlapped operation `ov` once its event fired: the bytes moved, or the
// error (operation_aborted once the socket was closed).
std::size_t overlapped_result(const emu_state& st, OVERLAPPED& ov, error_code& ec) {
  DWORD n = 0, flags = 0;
  ec.clear();
  if (::WSAGetOverlappedResult(st.s, &ov, &n, FALSE, &flags)) return n;
  const int e = ::WSAGetLastError();
  ec = st.closed ? error_code(asio::error::operation_aborted) : emulated_error(e);
  return 0;
}

// Completes `h` once the send issued on `st->wov` is done.
template <class State>
void wait_written(const std::shared_ptr<State>& st, io_handler h) {
  st->wwait.async_wait([st, h = std::move(h)](error_code) mutable {
    error_code ec;
    const std::size_t n = overlapped_result(*st, st->wov, ec);
    std::move(h)(ec, n);
  });
}

// What the emulated backends share: a raw socket in a state shared with the operations in flight.
template <class Base, class State>
class emulated_socket : public Base {
 public:
  emulated_socket(const asio::any_io_executor& ex, SOCKET s, tcp proto)
      : ex_(ex), st_(std::make_shared<State>(ex, s, proto)) {}
  bool is_open() const override { return !st_->closed; }
  attach_mode mode() const override { return attach_mode::emulated; }
  asio::any_io_executor get_executor() override { return ex_; }
  tcp::endpoint local_endpoint(error_code& ec) const override { return endpoint_of(st_->s, false, ec); }
  std::uintptr_t native_handle() const override { return static_cast<std::uintptr_t>(st_->s); }

 protected:
  void post(io_handler h, error_code ec) { asio::post(ex_, asio::append(std::move(h), ec, std::size_t{0})); }
  // Cancelled operations complete with WSA_OPERATION_ABORTED and signal their events; the
  // object_handle waits are left alone so that the OVERLAPPEDs stay valid until then.
  void cancel_io() {
    if (!st_->closed) ::CancelIoEx(reinterpret_cast<HANDLE>(st_->s), nullptr);
  }
  void close_socket(bool shutdown_first) {
    if (st_->closed) return;
    st_->closed = true;
    ::CancelIoEx(reinterpret_cast<HANDLE>(st_->s), nullptr);
    if (shutdown_first) ::shutdown(st_->s, SD_BOTH);
    ::closesocket(st_->s);
    st_->s = INVALID_SOCKET;
  }

  asio::any_io_executor ex_;
  std::shared_ptr<State> st_;
};

class emulated_stream final : public emulated_socket<stream_backend, emu_state> {
 public:
  using emulated_socket::emulated_socket;
  ~emulated_stream() override { close(); }

  void read(asio::mutable_buffer b, io_handler h) override {
    auto st = st_;
    if (st->closed) return post(std::move(h), asio::error::bad_descriptor);
    prepare(st->rov, st->rev);
    WSABUF wb{static_cast<ULONG>(b.size()), static_cast<char*>(b.data())};
    DWORD n = 0, flags = 0;
    error_code ec;
    if (failed_at_once(::WSARecv(st->s, &wb, 1, &n, &flags, &st->rov, nullptr), ec)) return post(std::move(h), ec);
    const bool want = b.size() > 0;
    st->rwait.async_wait([st, want, h = std::move(h)](error_code) mutable {
      error_code ec;
      const std::size_t n = overlapped_result(*st, st->rov, ec);
      if (!ec && n == 0 && want) ec = asio::error::eof;
      std::move(h)(ec, n);
    });
  }

  void write(asio::const_buffer b, io_handler h) override {
    auto st = st_;
    if (st->closed) return post(std::move(h), asio::error::bad_descriptor);
    prepare(st->wov, st->wev);
    WSABUF wb{static_cast<ULONG>(b.size()), const_cast<char*>(static_cast<const char*>(b.data()))};
    DWORD n = 0;
    error_code ec;
    if (failed_at_once(::WSASend(st->s, &wb, 1, &n, 0, &st->wov, nullptr), ec)) return post(std::move(h), ec);
    wait_written(st, std::move(h));
  }

  void cancel() override { cancel_io(); }
  void close() override { close_socket(shutdown_on_close_); }
  tcp::endpoint remote_endpoint(error_code& ec) const override { return endpoint_of(st_->s, true, ec); }
  void shutdown_send(error_code& ec) override {
    ec.clear();
    if (::shutdown(st_->s, SD_SEND) != 0) ec = emulated_error(::WSAGetLastError());
  }
  void set_shutdown_on_close(bool on) override { shutdown_on_close_ = on; }

 private:
  bool shutdown_on_close_ = false;
};

// A UDP socket still bound to another port: WSARecvFrom / WSASendTo with low-bit events. The
// sender's address lands in the state (alive as long as the operation), and is copied out.
struct emu_datagram_state : emu_state {
  sockaddr_storage from{};
  INT from_len = 0;
  sockaddr_storage to{};
  using emu_state::emu_state;
};

class emulated_datagram final : public emulated_socket<datagram_backend, emu_datagram_state> {
 public:
  using emulated_socket::emulated_socket;
  ~emulated_datagram() override { close(); }

  void receive_from(asio::mutable_buffer b, asio::ip::udp::endpoint& from, io_handler h) override {
    auto st = st_;
    if (st->closed) return post(std::move(h), asio::error::bad_descriptor);
    prepare(st->rov, st->rev);
    st->from_len = sizeof st->from;
    WSABUF wb{static_cast<ULONG>(b.size()), static_cast<char*>(b.data())};
    DWORD n = 0, flags = 0;
    error_code ec;
    if (failed_at_once(::WSARecvFrom(st->s, &wb, 1, &n, &flags, reinterpret_cast<sockaddr*>(&st->from),
                                     &st->from_len, &st->rov, nullptr),
                       ec))
      return post(std::move(h), ec);
    st->rwait.async_wait([st, &from, h = std::move(h)](error_code) mutable {
      error_code ec;
      const std::size_t n = overlapped_result(*st, st->rov, ec);
      const auto len = static_cast<std::size_t>(st->from_len);
      if (!ec && len > 0 && len <= from.capacity()) {
        std::memcpy(from.data(), &st->from, len);
        from.resize(len);
      }
      std::move(h)(ec, n);
    });
  }

  void send_to(asio::const_buffer b, const asio::ip::udp::endpoint& to, io_handler h) override {
    auto st = st_;
    if (st->closed) return post(std::move(h), asio::error::bad_descriptor);
    prepare(st->wov, st->wev);
    std::memcpy(&st->to, to.data(), to.size());
    WSABUF wb{static_cast<ULONG>(b.size()), const_cast<char*>(static_cast<const char*>(b.data()))};
    DWORD n = 0;
    error_code ec;
    if (failed_at_once(::WSASendTo(st->s, &wb, 1, &n, 0, reinterpret_cast<const sockaddr*>(&st->to),
                                   static_cast<int>(to.size()), &st->wov, nullptr),
                       ec))
      return post(std::move(h), ec);
    wait_written(st, std::move(h));
  }

  void cancel() override { cancel_io(); }
  void close() override { close_socket(false); }
  // A UDP socket has no peer to tell.
  void set_shutdown_on_close(bool) override {}
};

// An imported listener still bound to another port: readiness through WSAEventSelect(FD_ACCEPT)
// awaited by the reactor, then a non-blocking accept(). Accepted sockets are new kernel objects,
// never bound to any port, so they attach natively.
//
// Windows re-enables the FD_ACCEPT notice on every accept() call; Wine (8.0) only on one that
// returns a connection. A notice whose connection was gone when accept() ran (Wine's server can
// post it after an accept already took that connection) therefore turns Wine's notices off for
// good: later connections wait in the backlog and no event ever says so (seen: a moved listener
// that accepted 2 connections and then none for two minutes, under CPU load). So whenever a
// notice found nothing, and at the start (a previous holder may have left the notice off), the
// listener looks for connections on a timer instead (5 ms, doubling to 100 ms) and goes back to
// the event after the next accept() that returns a connection, which turns the notices on again.
struct emu_listener_state {
  SOCKET s = INVALID_SOCKET;
  tcp proto = tcp::v4();
  HANDLE ev = nullptr;
  asio::windows::object_handle wait;
  asio::steady_timer probe;
  std::chrono::milliseconds probe_every{5};  // zero: notices are on, wait for the event
  // Counts cancel() calls. A wait whose completion was already queued when cancel() ran still
  // completes without an error; the accept it belongs to must end then, not try again.
  std::uint64_t cancels = 0;
  bool closed = false;
  emu_listener_state(const asio::any_io_executor& ex, SOCKET sock, tcp p)
      : s(sock), proto(p), ev(new_event()), wait(ex, ev), probe(ex) {}
  ~emu_listener_state() {
    if (s != INVALID_SOCKET) ::closesocket(s);
  }
};

class emulated_listener final : public emulated_socket<listener_backend, emu_listener_state> {
 public:
  emulated_listener(const asio::any_io_executor& ex, SOCKET s, tcp proto, error_code& ec)
      : emulated_socket(ex, s, proto) {
    ec.clear();
    if (::WSAEventSelect(s, st_->ev, FD_ACCEPT) != 0) ec = emulated_error(::WSAGetLastError());
  }
  ~emulated_listener() override { close(); }

  void accept(asio::any_completion_handler<void(error_code, tcp::socket)> h) override {
    try_accept(ex_, st_, std::move(h), false, st_->cancels);
  }
  void cancel() override {
    ++st_->cancels;
    error_code ec;
    st_->wait.cancel(ec);
    st_->probe.cancel();
  }
  void close() override {
    if (st_->closed) return;
    st_->closed = true;
    cancel();
    // No WSAEventSelect(s, nullptr, 0) here: the selection belongs to the socket object, which
    // other processes may hold too (a listener just moved on), and clearing it would clear theirs.
    ::closesocket(st_->s);
    st_->s = INVALID_SOCKET;
  }
  // Windows cannot shut a listening socket down; a copy left with a stalled target is closed by
  // that target's orphan collection instead.
  void set_shutdown_on_close(bool) override {}

 private:
  // `notified`: the event announced a connection just before this attempt. `epoch`: the count
  // of cancel() calls when the accept began.
  static void try_accept(const asio::any_io_executor& ex, std::shared_ptr<emu_listener_state> st,
                         asio::any_completion_handler<void(error_code, tcp::socket)> h, bool notified,
                         std::uint64_t epoch) {
    if (st->closed || st->cancels != epoch) {
      asio::post(ex, asio::append(std::move(h), error_code(asio::error::operation_aborted), tcp::socket(ex)));
      return;
    }
    // Select before each accept attempt: the selection is the socket object's, and another
    // holder of it (a process this listener was moved to and back from) may have replaced it.
    // Selecting first, then accepting, leaves no window in which a connection goes unsignalled.
    if (::WSAEventSelect(st->s, st->ev, FD_ACCEPT) != 0) {
      asio::post(ex, asio::append(std::move(h), emulated_error(::WSAGetLastError()), tcp::socket(ex)));
      return;
    }
    SOCKET c = ::accept(st->s, nullptr, nullptr);
    if (c != INVALID_SOCKET) {
      st->probe_every = std::chrono::milliseconds(0);  // this accept turned the notices on
      // The accepted socket inherits the listener's event selection and non-blocking mode;
      // undo both before Asio takes it.
      ::WSAEventSelect(c, nullptr, 0);
      u_long blocking = 0;
      ::ioctlsocket(c, FIONBIO, &blocking);
      tcp::socket sock(ex);
      error_code ec;
      sock.assign(st->proto, c, ec);
      if (ec) ::closesocket(c);
      asio::post(ex, asio::append(std::move(h), ec, std::move(sock)));
      return;
    }
    const int e = ::WSAGetLastError();
    if (e != WSAEWOULDBLOCK) {
      asio::post(ex, asio::append(std::move(h), emulated_error(e), tcp::socket(ex)));
      return;
    }
    if (notified || st->probe_every.count() > 0) {
      using std::chrono::milliseconds;
      const auto every = st->probe_every.count() == 0 ? milliseconds(5) : st->probe_every;
      st->probe_every = std::min(every * 2, milliseconds(100));
      st->probe.expires_after(every);
      st->probe.async_wait([ex, st, h = std::move(h), epoch](error_code ec) mutable {
        if (ec) return std::move(h)(ec, tcp::socket(ex));
        try_accept(ex, st, std::move(h), false, epoch);
      });
      return;
    }
    st->wait.async_wait([ex, st, h = std::move(h), epoch](error_code ec) mutable {
      if (ec) return std::move(h)(ec, tcp::socket(ex));
      WSANETWORKEVENTS ne{};
      if (!st->closed) ::WSAEnumNetworkEvents(st->s, st->ev, &ne);  // also resets the event
      try_accept(ex, st, std::move(h), (ne.lNetworkEvents & FD_ACCEPT) != 0, epoch);
    });
  }
};

}  // namespace

std::unique_ptr<stream_backend> make_emulated_stream(const asio::any_io_executor& ex, SOCKET s, tcp proto) {
  return std::make_unique<emulated_stream>(ex, s, proto);
}

std::unique_ptr<datagram_backend> make_emulated_datagram(const asio::any_io_executor& ex, SOCKET s, tcp proto) {
  return std::make_unique<emulated_datagram>(ex, s, proto);
}

std::unique_ptr<listener_backend> make_emulated_listener(const asio::any_io_executor& ex, SOCKET s, tcp proto,
                                                         error_code& ec) {
  auto l = std::make_unique<emulated_listener>(ex, s, proto, ec);
  if (ec) return nullptr;
  return l;
}

}  // namespace baton::detail
