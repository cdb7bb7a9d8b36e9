#pragma once
/// Moving live connections, listening sockets and bound UDP sockets between processes over a
/// channel.
///
/// Source:  baton::async_send(channel, std::move(conn), options, token)
///          completes with void(error_code, connection): on success the target owns the
///          connection (the returned object is empty); on failure the connection comes back
///          intact — still open, unread bytes and state included — with the reason
///          (errc::move_rejected, errc::move_timeout, errc::target_died, ...).
/// Target:  baton::async_receive(channel, token) completes with void(error_code, arrival).
///
/// A move is a transaction: until the target acknowledges, the source owns the connection.

#include <baton/channel.hpp>
#include <baton/connection.hpp>
#include <baton/listener.hpp>
#include <baton/transfer_strategy.hpp>
#include <baton/udp_socket.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace baton {

struct move_options {
  std::chrono::milliseconds timeout{5000};  ///< how long the source waits for the target's verdict
  transfer_strategy strategy = transfer_strategy::automatic;
};

/// What a receive yields: a connection, a listener, a UDP socket, or a control ticket.
struct arrival {
  ticket_kind kind = ticket_kind::control;
  connection conn;   ///< kind == connection
  listener lst;      ///< kind == listener
  udp_socket udp;    ///< kind == udp_socket (its queued datagrams are read first)
  ticket control;    ///< kind == control: the ticket itself
  std::uint32_t sender_pid = 0;  ///< the process that sent it
};

/// Upper bounds (microseconds) of the move latency histogram's buckets; the last bucket counts
/// the moves above the last bound.
inline constexpr std::array<std::uint32_t, 11> move_latency_bounds_us{50,   100,   250,   500,    1000,   2500,
                                                                      5000, 10000, 25000, 100000, 1000000};

/// What async_send_batch gives back, index for index with the connections it was given.
struct batch_result {
  std::vector<error_code> errors;       ///< success where the target took the connection
  std::vector<connection> connections;  ///< empty where it moved; otherwise the connection, back and intact
  std::size_t moved = 0;                ///< how many the target took
};

/// Counters of the move machinery in this process (get_move_stats). Thread-safe reads (relaxed).
struct move_stats {
  std::uint64_t sent = 0, received = 0, rollbacks = 0, rejected_tickets = 0, strategy_fallbacks = 0;
  std::uint64_t refused_pushes = 0;  ///< Linux: descriptors pushed by another uid, dropped
  /// Receiver: socket handles made for this process whose tickets never came (the sender rolled
  /// the move back, or died first), closed so that such a connection ends with its owner.
  std::uint64_t orphans_closed = 0;
  /// Linux, source side: descriptors pushed with SCM_RIGHTS (transfer_strategy::scm_rights, or
  /// the fallback), and the datagrams that carried them (up to 253 each: a turn's pushes share).
  std::uint64_t pushed = 0, push_datagrams = 0;
  /// Source side, successful moves: time from async_send to the target's acknowledgement.
  std::array<std::uint64_t, move_latency_bounds_us.size() + 1> latency_buckets{};
  std::uint64_t latency_sum_us = 0;
};
move_stats get_move_stats() noexcept;

namespace detail {
void start_send(channel& ch, connection&& c, const move_options& o,
                boost::asio::any_completion_handler<void(error_code, connection)> h);
void start_send(channel& ch, listener&& l, const move_options& o,
                boost::asio::any_completion_handler<void(error_code, listener)> h);
void start_send(channel& ch, udp_socket&& u, const move_options& o,
                boost::asio::any_completion_handler<void(error_code, udp_socket)> h);
void start_send_batch(channel& ch, std::vector<connection> conns, const move_options& o,
                      boost::asio::any_completion_handler<void(error_code, batch_result)> h);
void start_receive(channel& ch, boost::asio::any_completion_handler<void(error_code, arrival)> h);
/// How many arrivals Baton's own receivers (the restart successor, the balancer's workers) take
/// per async_receive_some completion.
inline constexpr std::size_t receive_batch = 64;
void start_receive_some(channel& ch, std::size_t max,
                        boost::asio::any_completion_handler<void(error_code, std::vector<arrival>)> h);
/// What async_send moves: a connection, a listener or a UDP socket, as an rvalue.
template <class T>
concept movable_socket = !std::is_lvalue_reference_v<T> && (std::is_same_v<T, connection> ||
                                                            std::is_same_v<T, listener> || std::is_same_v<T, udp_socket>);
}  // namespace detail

/// Moves a connection, a listening socket or a UDP socket to the channel's owner; completes with
/// void(error_code, Object). The channel must be a sending end (channel::open).
/// A connection: pending reads are cancelled (bytes they had already taken from the kernel are
/// kept and travel as unread bytes); pending writes are allowed to finish first.
/// A listener: connections waiting in its backlog stay there and are accepted by the target; no
/// connection attempt is refused during the move.
/// A UDP socket: pending sends finish first; the pending receive is cancelled (a datagram it had
/// already taken travels in the ticket, with its sender's address, and is read first in the
/// target); datagrams queued in the kernel stay there for the target. The receive itself waits
/// for the verdict (udp_socket.hpp).
template <class Object, class Token>
  requires detail::movable_socket<Object>
auto async_send(channel& ch, Object&& obj, const move_options& o, Token&& token) {
  return boost::asio::async_initiate<Token, void(error_code, Object)>(
      [&ch, o](auto h, Object obj) { detail::start_send(ch, std::move(obj), o, std::move(h)); }, token,
      std::move(obj));
}
template <class Object, class Token>
  requires detail::movable_socket<Object>
auto async_send(channel& ch, Object&& obj, Token&& token) {
  return async_send(ch, std::move(obj), move_options{}, std::forward<Token>(token));
}

/// Moves many connections at once: each is its own transaction (quiesced, exported, taken or
/// refused and rolled back whole on its own), and the tickets published in the same turn of the
/// event loop share ring records, one reservation and one doorbell (channel_stats::batches_sent).
/// The target takes them with async_receive or, a batch at a time, async_receive_some.
/// Completes with void(error_code, batch_result) once every connection has its verdict; the
/// error_code is the first failure in the order given (success if all moved), batch_result says
/// which connection moved and gives back the others.
template <class Token>
auto async_send_batch(channel& ch, std::vector<connection> conns, const move_options& o, Token&& token) {
  return boost::asio::async_initiate<Token, void(error_code, batch_result)>(
      [&ch, o](auto h, std::vector<connection> cs) { detail::start_send_batch(ch, std::move(cs), o, std::move(h)); },
      token, std::move(conns));
}
template <class Token>
auto async_send_batch(channel& ch, std::vector<connection> conns, Token&& token) {
  return async_send_batch(ch, std::move(conns), move_options{}, std::forward<Token>(token));
}

/// Receives the next moved connection, listener, UDP socket or control ticket on a receiving channel.
/// A ticket that fails validation or whose socket cannot be re-created completes with that
/// error (and is refused, so its source takes the connection back); call again for the next.
template <class Token>
auto async_receive(channel& ch, Token&& token) {
  return boost::asio::async_initiate<Token, void(error_code, arrival)>(
      [&ch](auto h) { detail::start_receive(ch, std::move(h)); }, token);
}

/// Like async_receive, for many at a time: waits for the first arrival, then takes the tickets
/// already queued behind it without waiting, up to `max` arrivals or up to and including a
/// control ticket (which may change what to do with the ones behind it), each re-created and
/// acknowledged as async_receive does. One completion for all of them: a receiver that also
/// serves traffic takes a hand-over's connections a batch per turn of its event loop, not one.
/// Completes with void(error_code, std::vector<arrival>). A ticket that fails ends the batch:
/// the error is its error, and the vector holds the arrivals taken before it (they are yours);
/// call again for the next.
template <class Token>
auto async_receive_some(channel& ch, std::size_t max, Token&& token) {
  return boost::asio::async_initiate<Token, void(error_code, std::vector<arrival>)>(
      [&ch, max](auto h) { detail::start_receive_some(ch, max, std::move(h)); }, token);
}

}  // namespace baton
