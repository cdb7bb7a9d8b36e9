// The HTTP/1.1 keep-alive server behind baton-http: Beast sessions that wait at the service's
// safe point between two requests, so a restart can move a connection with its unread bytes and
// its per-connection request count.
#include "http_server.hpp"

#include "cli.hpp"

#include <baton/metrics.hpp>
#include <baton/spawn.hpp>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <cstdio>
#include <cstring>
#include <vector>

namespace baton_samples {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;

constexpr auto tuple_aw = asio::as_tuple(asio::use_awaitable);

// Travels with each connection from generation to generation.
struct conn_state {
  std::uint64_t requests = 0;
};

struct server {
  baton::service& svc;
  std::uint64_t requests = 0;

  http::response<http::string_body> answer(const http::request<http::string_body>& req, conn_state& st) {
    http::response<http::string_body> res{http::status::ok, req.version()};
    res.set(http::field::server, "baton-http");
    res.set("X-Baton-Generation", std::to_string(svc.generation()));
    res.set("X-Baton-Pid", std::to_string(baton::current_process_id()));
    res.set("X-Baton-Requests", std::to_string(st.requests));
    const auto target = std::string(req.target());
    if (req.method() == http::verb::get && target == "/metrics") {
      res.set(http::field::content_type, "text/plain; version=0.0.4");
      res.body() = baton::prometheus_metrics(&svc) + "# TYPE baton_http_requests_total counter\nbaton_http_requests_total " +
                   std::to_string(requests) + "\n";
    } else if (req.method() == http::verb::get && (target == "/" || target.rfind("/slow", 0) == 0)) {
      res.set(http::field::content_type, "text/plain");
      res.body() = "ok\n";
    } else if (req.method() == http::verb::post && (target == "/upload" || target == "/")) {
      const auto& b = req.body();
      const auto crc = baton::crc32c({reinterpret_cast<const std::byte*>(b.data()), b.size()});
      res.body() = std::to_string(b.size()) + " " + std::to_string(crc) + "\n";
    } else {
      res.result(http::status::not_found);
      res.body() = "not found\n";
    }
    res.keep_alive(req.keep_alive());
    res.prepare_payload();
    return res;
  }

  asio::awaitable<void> session(baton::connection c) {
    conn_state st;
    if (c.state().size() == sizeof st) std::memcpy(&st, c.state().data(), sizeof st);
    beast::flat_buffer buf;
    for (;;) {
      // Between two requests: the safe point. Bytes of a pipelined next request go back into the
      // connection first, so that they travel with it if it moves.
      if (buf.size() > 0) {
        c.push_front_unread(buf.data().data(), buf.size());
        buf.consume(buf.size());
      }
      c.state().resize(sizeof st);
      std::memcpy(c.state().data(), &st, sizeof st);
      auto [sec, moved] = co_await svc.async_safe_point(c, tuple_aw);
      if (sec || moved) co_return;

      http::request_parser<http::string_body> parser;
      parser.body_limit(64u << 20);
      auto [ec, n] = co_await http::async_read(c, buf, parser, tuple_aw);
      if (ec) co_return;
      auto req = parser.release();
      ++st.requests;
      ++requests;
      const auto target = std::string(req.target());
      if (target.rfind("/slow?ms=", 0) == 0) {
        asio::steady_timer t(c.get_executor(), std::chrono::milliseconds(std::atoi(target.c_str() + 9)));
        co_await t.async_wait(tuple_aw);
      }
      auto res = answer(req, st);
      auto [wec, wn] = co_await http::async_write(c, res, tuple_aw);
      if (wec) co_return;
      if (!res.keep_alive()) {
        baton::error_code ignored;
        c.shutdown_send(ignored);
        co_return;
      }
    }
  }
};

}  // namespace

bool parse_endpoint(const std::string& s, tcp::endpoint& ep) {
  const auto colon = s.rfind(':');
  if (colon == std::string::npos) return false;
  baton::error_code ec;
  auto host = s.substr(0, colon);
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  const auto addr = asio::ip::make_address(host, ec);
  if (ec) return false;
  std::uint64_t port = 0;
  if (!baton_cli::parse_uint(s.substr(colon + 1), 0, 65535, port)) return false;
  ep = tcp::endpoint(addr, static_cast<unsigned short>(port));
  return true;
}

void listen_if_none(baton::service& svc, const tcp::endpoint& ep) {
  if (svc.listener_count() != 0) return;
  tcp::acceptor a(svc.get_executor());
  a.open(ep.protocol());
  a.set_option(tcp::acceptor::reuse_address(true));
  a.bind(ep);
  a.listen(asio::socket_base::max_listen_connections);
  svc.add_listener(baton::listener(std::move(a)));
}

std::function<void(std::exception_ptr)> exit_on_exception(const char* program, int& status, asio::io_context& ioc) {
  return [program, &status, &ioc](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      std::fprintf(stderr, "%s: %s\n", program, x.what());
    }
    status = 1;
    ioc.stop();
  };
}

void stop_when_retired(baton::service& svc, asio::io_context& ioc,
                       std::function<void(const baton::restart_report&)> say) {
  svc.async_wait_retired([&ioc, say = std::move(say)](baton::error_code ec, baton::restart_report r) {
    if (ec) return;
    say(r);
    std::fflush(stdout);
    ioc.stop();
  });
}

int run_http_service(const http_service_options& o) {
  asio::io_context ioc(1);
  auto ro = o.restart;
  // The library reports and never prints; a server writes what its service reports to stderr.
  if (!ro.log) ro.log = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  baton::service svc(ioc.get_executor(), o.name, ro);
  server srv{svc};
  int status = 0;
  const std::string& name = o.name;
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    auto [ec] = co_await svc.async_start(tuple_aw);
    if (ec) {
      const auto detail = svc.last_report().detail;
      std::fprintf(stderr, "baton-http: cannot join service %s: %s%s%s\n", name.c_str(), ec.message().c_str(),
                   detail.empty() ? "" : ": ", detail.c_str());
      status = 1;
      ioc.stop();
      co_return;
    }
    if (o.on_started) o.on_started(svc);
    listen_if_none(svc, o.listen);
    for (auto& [e, socket_name] : svc.listeners()) {
      std::printf("baton-http: service %s generation %llu pid %u listening on %s:%u%s\n", name.c_str(),
                  static_cast<unsigned long long>(svc.generation()), baton::current_process_id(),
                  e.address().to_string().c_str(), e.port(), socket_name.empty() ? "" : (" (socket " + socket_name + ")").c_str());
      if (o.on_listening) o.on_listening(e);
    }
    std::fflush(stdout);
    for (;;) {
      auto [aec, c] = co_await svc.async_accept(tuple_aw);
      if (aec) co_return;
      if (auto* s = c.socket()) s->set_option(tcp::no_delay(true), aec);
      if (o.on_connection) o.on_connection(svc);
      asio::co_spawn(ioc, srv.session(std::move(c)), asio::detached);
    }
  }, exit_on_exception("baton-http", status, ioc));
  stop_when_retired(svc, ioc, [&](const baton::restart_report& r) {
    if (r.stopped)
      std::printf("baton-http: %s\n", baton::to_string(r, name).c_str());
    else
      std::printf("baton-http: generation %llu retired: %s\n", static_cast<unsigned long long>(svc.generation()),
                  baton::to_string(r, name).c_str());
  });
  ioc.run();
  return status;
}

}  // namespace baton_samples
