// baton-ws: a WebSocket server that only ever talks (a feed, a push channel) and restarts without
// a gap in any client's stream. Its connections never come to a safe point on their own (the
// clients send nothing after the handshake), so each writer watches for the hand-over itself:
// at its next message boundary it puts its sequence number in the connection's state and hands
// the connection over (service::async_handover); the next generation carries on from that number.
//
//   baton-ws --name NAME [--listen HOST:PORT] [--interval-ms N] [--drain-deadline-ms N]
//
//   GET /feed           upgraded to a WebSocket: a text message "<seq> <generation>" every
//                       interval, seq 1, 2, 3 ... per connection, across generations
//   GET /feed?pinned    the same, but this connection is never moved: at a restart (or a stop) it
//                       gets a close frame (1001, going away) and is counted as closed gracefully
//
// A graceful stop (`batonctl stop NAME`, SIGTERM) closes every feed with a close frame.
#include "cli.hpp"
#include "http_server.hpp"
#include "service_main.hpp"

#include <baton/restart.hpp>
#include <baton/spawn.hpp>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

// What Beast's WebSocket stream needs of its lowest layer beyond reading and writing, for a
// baton::connection (found by argument-dependent lookup): closing it when a timeout expires, and
// the TCP teardown after a close handshake.
namespace baton {

void beast_close_socket(connection& c) { c.close(); }

void teardown(boost::beast::role_type, connection& c, error_code& ec) {
  c.shutdown_send(ec);
  c.close();
}

template <class TeardownHandler>
void async_teardown(boost::beast::role_type role, connection& c, TeardownHandler&& handler) {
  error_code ec;
  teardown(role, c, ec);
  boost::asio::post(c.get_executor(), boost::asio::append(std::forward<TeardownHandler>(handler), ec));
}

}  // namespace baton

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;

constexpr auto tuple_aw = asio::as_tuple(asio::use_awaitable);

// Travels with each connection from generation to generation: what it still has to send.
struct feed_state {
  std::uint64_t next_seq = 1;
  std::uint8_t pinned = 0;
};

// A server-to-client WebSocket frame (never masked, RFC 6455 5.1) holding one whole message.
std::string frame(std::uint8_t opcode, const std::string& payload) {
  std::string f(1, static_cast<char>(0x80 | opcode));  // FIN + opcode
  if (payload.size() < 126) {
    f += static_cast<char>(payload.size());
  } else {
    f += static_cast<char>(126);
    f += static_cast<char>((payload.size() >> 8) & 0xff);
    f += static_cast<char>(payload.size() & 0xff);
  }
  return f + payload;
}

// Close frame, status 1001 (going away).
const std::string going_away = frame(0x8, std::string("\x03\xe9", 2) + "restart");

struct feed_server {
  baton::service& svc;
  std::chrono::milliseconds interval;
  bool stopping = false;  // a graceful stop began: every feed says goodbye

  // The upgrade, with Beast: the request is read and answered (101) on the connection itself.
  asio::awaitable<bool> handshake(baton::connection& c, feed_state& st) {
    beast::flat_buffer buf;
    http::request<http::empty_body> req;
    auto [ec, n] = co_await http::async_read(c, buf, req, tuple_aw);
    if (ec) co_return false;
    if (!websocket::is_upgrade(req) || req.target().substr(0, 5) != "/feed") {
      http::response<http::string_body> res{http::status::bad_request, req.version()};
      res.body() = "baton-ws serves WebSocket feeds only: GET /feed with Upgrade: websocket\n";
      res.prepare_payload();
      res.keep_alive(false);
      co_await http::async_write(c, res, tuple_aw);
      co_return false;
    }
    st.pinned = req.target().find("pinned") != beast::string_view::npos ? 1 : 0;
    websocket::stream<baton::connection&> ws(c);
    auto [aec] = co_await ws.async_accept(req, tuple_aw);
    // The client waits for our 101 before it sends anything: nothing read past the request.
    if (!aec && buf.size() > 0) c.push_front_unread(buf.data().data(), buf.size());
    co_return !aec;
  }

  asio::awaitable<void> session(baton::connection c) {
    feed_state st;
    if (c.state().size() == sizeof st) {
      std::memcpy(&st, c.state().data(), sizeof st);  // moved in: carry on where it stopped
    } else if (!co_await handshake(c, st)) {
      co_return;
    }
    asio::steady_timer timer(c.get_executor());
    for (;;) {
      // A message boundary: the place to leave, if a hand-over or a stop has begun.
      if (stopping || (svc.handing_over() && st.pinned)) {
        co_await asio::async_write(c, asio::buffer(going_away), tuple_aw);
        svc.close_gracefully(c);
        co_return;
      }
      if (svc.handing_over()) {
        c.state().resize(sizeof st);
        std::memcpy(c.state().data(), &st, sizeof st);
        auto [ec, moved] = co_await svc.async_handover(c, tuple_aw);
        if (moved) co_return;  // the next generation sends st.next_seq on
        if (ec == baton::errc::service_stopping) continue;  // goodbye, above
        if (ec) co_return;
        // Not moved (the hand-over failed): this generation goes on.
      }
      const std::string msg = frame(0x1, std::to_string(st.next_seq) + " " + std::to_string(svc.generation()));
      auto [wec, wn] = co_await asio::async_write(c, asio::buffer(msg), tuple_aw);
      if (wec) co_return;  // the client is gone
      ++st.next_seq;
      timer.expires_after(interval);
      co_await timer.async_wait(tuple_aw);
    }
  }

  // Hears of a graceful stop (and of hand-overs, which the writers see at their next message).
  asio::awaitable<void> watch() {
    asio::steady_timer timer(svc.get_executor());
    for (;;) {
      auto [ec] = co_await svc.async_wait_handover(tuple_aw);
      if (ec == baton::errc::service_stopping) stopping = true;
      if (ec) co_return;
      // Connections are moving; wait for the hand-over to end (retired, or failed and back).
      while (svc.handing_over()) {
        timer.expires_after(interval);
        co_await timer.async_wait(tuple_aw);
      }
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  baton_cli::parser cli("baton-ws", "--name NAME [--listen HOST:PORT] [options]",
                        "A WebSocket feed server (GET /feed: a message \"<seq> <generation>\" every interval) that\n"
                        "restarts without a gap: `batonctl restart NAME` moves every feed, at a message boundary,\n"
                        "to the next generation, which carries on from the next sequence number. GET /feed?pinned\n"
                        "is never moved: at a restart it gets a close frame (1001) and counts as closed gracefully.");
  baton_cli::service_options(cli, "address to listen on (port 0: any free port, printed)", "127.0.0.1:8081");
  cli.integer("--interval-ms", 1, 3600000, "time between two messages of a feed").defaults("10");
  cli.integer("--drain-deadline-ms", 0, 86400000, "how long a restart waits for the feeds to move").defaults("30000");
  cli.epilog("exit status: 0 when this generation handed over to the next (or stopped), 1 if it could not\n"
             "start, 2 for a wrong command line.");
  if (auto rc = cli.parse(argc, argv)) return *rc;
  const std::string name = cli.str("--name");
  if (auto rc = baton_cli::check_service_name(cli, name)) return *rc;
  tcp::endpoint listen;
  if (!baton_samples::parse_endpoint(cli.str("--listen"), listen))
    return cli.fail("--listen: '" + cli.str("--listen") + "' is not HOST:PORT (e.g. 127.0.0.1:8081, [::1]:0)");

  asio::io_context ioc(1);
  auto ro = baton_cli::same_command_line(argc, argv);
  ro.drain_deadline = std::chrono::milliseconds(cli.num("--drain-deadline-ms"));
  baton::service svc(ioc.get_executor(), name, ro);
  feed_server srv{svc, std::chrono::milliseconds(cli.num("--interval-ms"))};
  int status = 0;
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    auto [ec] = co_await svc.async_start(tuple_aw);
    if (!baton_cli::joined("baton-ws", ec, name, status, ioc)) co_return;
    baton_samples::listen_if_none(svc, listen);
    for (const auto& e : svc.local_endpoints())
      std::printf("baton-ws: service %s generation %llu pid %u listening on %s:%u\n", name.c_str(),
                  static_cast<unsigned long long>(svc.generation()), baton::current_process_id(),
                  e.address().to_string().c_str(), e.port());
    std::fflush(stdout);
    asio::co_spawn(ioc, srv.watch(), asio::detached);
    for (;;) {
      auto [aec, c] = co_await svc.async_accept(tuple_aw);
      if (aec) co_return;
      if (auto* s = c.socket()) s->set_option(tcp::no_delay(true), aec);
      asio::co_spawn(ioc, srv.session(std::move(c)), asio::detached);
    }
  }, baton_samples::exit_on_exception("baton-ws", status, ioc));
  baton_samples::stop_when_retired(svc, ioc, [&](const baton::restart_report& r) {
    std::printf("baton-ws: generation %llu: %s\n", static_cast<unsigned long long>(svc.generation()),
                baton::to_string(r, name).c_str());
  });
  ioc.run();
  return status;
}
