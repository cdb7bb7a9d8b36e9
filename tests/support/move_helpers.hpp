#pragma once
// Single-process moves for unit tests: a loopback TCP pair, and a move from a channel's sending
// end to its receiving end in this same process (a real transfer: pidfd_getfd / SCM_RIGHTS /
// WSADuplicateSocket to ourselves).
#include "net_helpers.hpp"
#include "test_support.hpp"

#include <baton/move.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <cstring>
#include <cstdint>
#include <string>

namespace baton::test {

/// `tx`, opened on the receiving end `name` once that exists (a peer process may create it after
/// we start): retries every 5 ms. For helpers that hand connections back and forth.
inline channel& open_when_ready(channel& tx, const boost::asio::any_io_executor& ex, const std::string& name) {
  while (!tx.is_open()) {
    error_code ec;
    tx = channel::open(ex, name, {}, ec);
    if (ec) nap(std::chrono::milliseconds(5));
  }
  return tx;
}

/// The strategy named on a helper's command line ("pidfd_getfd", "scm_rights", "wsa_duplicate",
/// "duplicate_handle"); anything else is automatic.
/// The number after "key=" in a child's report line ("received=3 rollbacks=0 ..."), or ~0 when
/// the key is missing.
inline std::uint64_t report_field(const std::string& text, const std::string& key) {
  const auto p = text.find(key + "=");
  return p == std::string::npos ? ~0ull : std::stoull(text.substr(p + key.size() + 1));
}

inline transfer_strategy strategy_from_name(const std::string& s) {
  if (s == "wsa_duplicate") return transfer_strategy::wsa_duplicate;
  if (s == "duplicate_handle") return transfer_strategy::duplicate_handle;
  if (s == "pidfd_getfd") return transfer_strategy::pidfd_getfd;
  if (s == "scm_rights") return transfer_strategy::scm_rights;
  return transfer_strategy::automatic;
}

/// A trivially copyable State kept in a connection's application state (a default one if the
/// connection carries none of that size).
template <class State>
State load_state(const connection& c) {
  State s{};
  if (c.state().size() == sizeof s) std::memcpy(&s, c.state().data(), sizeof s);
  return s;
}
template <class State>
void save_state(connection& c, const State& s) {
  c.state().resize(sizeof s);
  std::memcpy(c.state().data(), &s, sizeof s);
}

/// A connected loopback pair: `client` is a plain socket, `server` the accepted end.
struct loopback_pair {
  boost::asio::ip::tcp::socket client;
  boost::asio::ip::tcp::socket server;
};
inline loopback_pair make_loopback_pair(boost::asio::io_context& ioc) {
  boost::asio::ip::tcp::acceptor acc(ioc, {boost::asio::ip::address_v4::loopback(), 0});
  auto client = connect_loopback(ioc, acc.local_endpoint().port());
  auto server = acc.accept();
  return {std::move(client), std::move(server)};
}

/// Both ends of a fresh channel in this process, on one io_context.
struct channel_pair {
  boost::asio::io_context ioc;
  name_guard guard;
  channel rx, tx;
  explicit channel_pair(const std::string& tag)
      : guard(unique_name(tag)),
        rx(channel::create(ioc.get_executor(), guard.name)),
        tx(channel::open(ioc.get_executor(), guard.name)) {}
};

/// What a move reported on both ends.
struct self_move {
  error_code sent, received;
  connection back;   ///< the source's connection after a failed move
  arrival arrived;   ///< what the receiver got
};

/// Moves `c` through `tx` to `rx` (both in this process) and runs `ioc` until both ends have a
/// verdict or `deadline` passes. With `receive` false nobody takes the ticket (a timeout).
inline self_move move_to_self(boost::asio::io_context& ioc, channel& tx, channel& rx, connection c,
                              const move_options& o, bool receive = true,
                              std::chrono::milliseconds deadline = std::chrono::seconds(20)) {
  self_move r;
  const error_code pending = boost::asio::error::would_block;
  r.sent = pending;
  r.received = receive ? pending : error_code();
  if (receive)
    async_receive(rx, [&](error_code ec, arrival a) {
      r.received = ec;
      r.arrived = std::move(a);
    });
  async_send(tx, std::move(c), o, [&](error_code ec, connection back) {
    r.sent = ec;
    r.back = std::move(back);
  });
  const auto until = std::chrono::steady_clock::now() + deadline;
  while ((r.sent == pending || r.received == pending) && std::chrono::steady_clock::now() < until) {
    ioc.run_for(std::chrono::milliseconds(10));
    if (ioc.stopped()) ioc.restart();
  }
  return r;
}

}  // namespace baton::test
