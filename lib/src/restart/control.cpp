// Hot restart: the restart channels, the report as a message and as text, the status text, and
// the control client that batonctl uses (see service_impl.hpp).
#include "restart/service_impl.hpp"

#include "channel_impl.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>
#include <cstdio>
#include <random>
#include <sstream>

namespace baton {
namespace detail {

using namespace std::chrono_literals;

std::int64_t micros(clock_type::duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

channel_options restart_channel_options() {
  channel_options o;
  o.ring_bytes = 64u << 10;
  o.ack_slots = 64;
  o.limits.max_ticket_bytes = 16u << 10;
  o.send_timeout = 2s;
  return o;
}

error_code send_message(const asio::any_io_executor& ex, const std::string& to, const control_message& m) {
  if (to.empty()) return {};
  error_code ec;
  // The sender channel lives until the ticket is in the ring.
  auto ch = std::make_shared<channel>(channel::open(ex, to, restart_channel_options(), ec));
  if (ec) return ec;
  ch->async_send(m.to_ticket(), [ch](error_code) {});
  return {};
}

void put_report(control_message& m, const restart_report& r) {
  m.set("old_generation", r.old_generation).set("new_generation", r.new_generation);
  m.set("old_pid", std::uint64_t{r.old_pid}).set("new_pid", std::uint64_t{r.new_pid});
  m.set("listeners", r.listeners_moved).set("moved", r.connections_moved).set("not_moved", r.connections_not_moved);
  m.set("lost", r.connections_lost).set("closed_gracefully", r.connections_closed_gracefully);
  m.set("udp", r.udp_sockets_moved);
  if (r.stopped) m.set("stopped", std::uint64_t{1}).set("closed", r.connections_closed);
  m.set("ready_us", std::to_string(r.ready_time.count())).set("listeners_us", std::to_string(r.listeners_time.count()));
  m.set("handover_us", std::to_string(r.handover_time.count()));
  m.set("old_exit_us", std::to_string(r.old_exit_time.count()));
}

restart_report get_report(const control_message& m) {
  restart_report r;
  r.ec = m.error();
  r.old_generation = m.number("old_generation");
  r.new_generation = m.number("new_generation");
  r.old_pid = static_cast<std::uint32_t>(m.number("old_pid"));
  r.new_pid = static_cast<std::uint32_t>(m.number("new_pid"));
  r.listeners_moved = m.number("listeners");
  r.connections_moved = m.number("moved");
  r.connections_not_moved = m.number("not_moved");
  r.connections_lost = m.number("lost");
  r.udp_sockets_moved = m.number("udp");
  r.stopped = m.number("stopped") != 0;
  r.connections_closed = m.number("closed");
  r.connections_closed_gracefully = m.number("closed_gracefully");
  r.ready_time = std::chrono::microseconds(m.number("ready_us"));
  r.listeners_time = std::chrono::microseconds(m.number("listeners_us"));
  r.handover_time = std::chrono::microseconds(m.number("handover_us"));
  r.old_exit_time = std::chrono::microseconds(m.number("old_exit_us"));
  return r;
}

std::string service_impl::status_text() {
  const auto s = stats();
  const auto ms = get_move_stats();
  std::ostringstream o;
  static const char* names[] = {"created", "joining", "taking-over", "serving", "starting-next",
                                "handing-over", "retired", "closed", "stopping"};
  o << "service " << name << ";generation " << s.generation << ";pid " << s.pid << ";state "
    << names[static_cast<int>(ph)] << ";listeners " << s.listeners << ";udp_sockets " << s.udp_sockets
    << ";connections " << s.connections
    << ";accepted " << s.accepted << ";inherited " << s.inherited << ";moved_out " << s.moved_out
    << ";restarts_failed " << s.restarts_failed << ";restarts_refused " << s.restarts_refused
    << ";connections_lost " << s.connections_lost << ";closed_gracefully " << s.closed_gracefully
    << ";moves_sent " << ms.sent << ";moves_received " << ms.received << ";rollbacks " << ms.rollbacks;
  return o.str();
}

}  // namespace detail

std::string to_string(const restart_report& r, const std::string& service_name) {
  char buf[512];
  if (r.stopped && !r.ec) {
    std::snprintf(buf, sizeof buf,
                  "stopped %s: generation %llu, pid %u, %llu connections closed after their last response, in %.1f ms",
                  service_name.c_str(), static_cast<unsigned long long>(r.old_generation), r.old_pid,
                  static_cast<unsigned long long>(r.connections_closed), r.handover_time.count() / 1000.0);
    std::string s = buf;
    if (r.connections_closed_gracefully)
      s += "; " + std::to_string(r.connections_closed_gracefully) + " closed gracefully by the application";
    if (r.connections_not_moved)
      s += "; " + std::to_string(r.connections_not_moved) +
           " connections were still in a request at the drain deadline and were cut";
    return s;
  }
  if (r.ec) {
    std::snprintf(buf, sizeof buf, "restart of %s failed: %s", service_name.c_str(), r.ec.message().c_str());
    std::string s = r.detail.empty() ? std::string(buf) : std::string(buf) + " (" + r.detail + ")";
    if (r.connections_lost)
      s += "; " + std::to_string(r.connections_lost) + " connections had moved to the next generation and ended with it";
    return s;
  }
  std::snprintf(buf, sizeof buf,
                "restarted %s: generation %llu -> %llu, pid %u -> %u, %llu connections moved, hand-over %.1f ms, "
                "old generation exited after %.1f ms",
                service_name.c_str(), static_cast<unsigned long long>(r.old_generation),
                static_cast<unsigned long long>(r.new_generation), r.old_pid, r.new_pid,
                static_cast<unsigned long long>(r.connections_moved), r.handover_time.count() / 1000.0,
                r.old_exit_time.count() / 1000.0);
  std::string s = buf;
  if (r.connections_closed_gracefully)
    s += "; " + std::to_string(r.connections_closed_gracefully) + " closed gracefully by the application instead";
  if (r.udp_sockets_moved) s += "; " + std::to_string(r.udp_sockets_moved) + " UDP sockets moved with their queued datagrams";
  if (r.connections_not_moved)
    s += "; " + std::to_string(r.connections_not_moved) +
         " connections were NOT moved by the drain deadline and ended with the old generation";
  return s;
}

namespace {

// One request/answer exchange with a service's control channel, on a private io_context.
detail::control_message control_exchange(const std::string& service, detail::control_message req,
                                         const std::string& answer_op, std::chrono::milliseconds timeout,
                                         error_code& ec) {
  namespace asio = boost::asio;
  ec.clear();
  asio::io_context ioc;
  std::mt19937_64 rng(std::random_device{}());
  const std::string reply = "ctl-" + std::to_string(detail::current_pid()) + "-" + std::to_string(rng() % 1000000000);
  auto rx = channel::create(ioc.get_executor(), reply, detail::restart_channel_options(), ec);
  if (ec) return {};
  auto tx = channel::open(ioc.get_executor(), service, detail::restart_channel_options(), ec);
  if (ec == errc::channel_not_found || ec == errc::channel_owner_dead) ec = errc::service_not_found;
  if (ec) return {};
  req.set("reply", reply);
  detail::control_message answer;
  bool done = false;
  tx.async_send(req.to_ticket(), [&](error_code e) {
    if (e) {
      ec = e;
      done = true;
      ioc.stop();
      return;
    }
    // Let go of the service's control channel at once: on Windows an open handle keeps its
    // names alive, and the next generation must create them anew before it reports back to us.
    asio::post(ioc, [&] { tx = channel(); });
  });
  std::function<void()> receive = [&] {
    rx.async_receive([&](error_code e, ticket t) {
      if (e == asio::error::operation_aborted) return;
      if (!e && t.kind == ticket_kind::control) {
        error_code pe;
        auto m = detail::control_message::parse(t, pe);
        if (!pe && m.op() == answer_op) {
          answer = std::move(m);
          done = true;
          ioc.stop();
          return;
        }
      }
      receive();
    });
  };
  receive();
  ioc.run_for(timeout);
  if (!done) ec = errc::move_timeout;
  return answer;
}

}  // namespace

namespace {

// Sends `req` to the service and reads the report its "result" answer carries.
restart_report request_report(const std::string& service, const detail::control_message& req,
                              std::chrono::milliseconds timeout, error_code& ec) {
  auto m = control_exchange(service, req, "result", timeout, ec);
  if (ec) {
    restart_report r;
    r.ec = ec;
    return r;
  }
  auto r = detail::get_report(m);
  ec = r.ec;
  return r;
}

}  // namespace

restart_report request_restart(const std::string& service, const std::string& binary,
                               std::chrono::milliseconds timeout, error_code& ec) {
  detail::control_message req("restart");
  if (!binary.empty()) req.set("binary", binary);
  return request_report(service, req, timeout, ec);
}

restart_report request_stop(const std::string& service, std::chrono::milliseconds timeout, error_code& ec) {
  return request_report(service, detail::control_message("stop"), timeout, ec);
}

std::string request_status(const std::string& service, std::chrono::milliseconds timeout, error_code& ec) {
  auto text = control_exchange(service, detail::control_message("status"), "status-reply", timeout, ec).get("text");
  for (auto& ch : text)
    if (ch == ';') ch = '\n';
  return text;
}

namespace {

// control_exchange's reply channels: "ctl-<pid>-<number>".
bool reply_channel_name(const std::string& n) {
  const auto dash = n.find('-', 4);
  auto digits = [&](std::size_t from, std::size_t to) {
    return to > from && std::all_of(n.begin() + from, n.begin() + to, [](char c) { return c >= '0' && c <= '9'; });
  };
  return n.rfind("ctl-", 0) == 0 && dash != std::string::npos && digits(4, dash) && digits(dash + 1, n.size());
}

}  // namespace

std::vector<std::string> list_services(error_code& ec) {
  auto names = detail::list_channel_names(ec);
  std::vector<std::string> services;
  if (ec) return services;
  // Only a channel with the control channel's geometry and a live receiver is a service: a
  // status request must never reach another program's channel (baton-demo's workers, for one,
  // stop at any control ticket).
  const auto want = detail::restart_channel_options();
  boost::asio::io_context ioc;
  for (const auto& n : names) {
    if (!channel::valid_name(n) || reply_channel_name(n)) continue;
    error_code oec;
    auto ch = channel::open(ioc.get_executor(), n, want, oec);
    if (oec) continue;
    const auto& id = detail::channel_access::get(ch).ring.identity();
    if (id.ack_slots == want.ack_slots && id.data_bytes == want.ring_bytes &&
        id.max_record_bytes == want.limits.max_ticket_bytes)
      services.push_back(n);
  }
  std::sort(services.begin(), services.end());
  return services;
}

namespace {

// `n` is channel `service` or one of its inboxes, "<service>.<10 of [0-9a-z]>" (successor.cpp).
bool channel_of_service(const std::string& n, const std::string& service) {
  if (n == service) return true;
  if (n.size() != service.size() + 11 || n.compare(0, service.size(), service) != 0 || n[service.size()] != '.')
    return false;
  return std::all_of(n.begin() + static_cast<std::ptrdiff_t>(service.size()) + 1, n.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z'); });
}

}  // namespace

std::vector<std::string> remove_dead_channels(const std::string& service, error_code& ec) {
  auto names = detail::list_channel_names(ec);
  std::vector<std::string> removed;
  if (ec) return removed;
  for (const auto& n : names) {
    if (!channel::valid_name(n) || (!service.empty() && !channel_of_service(n, service))) continue;
    // A live owner's channel fails with name_in_use and stays; so does one too young to have
    // its header, and another user's (not_owner).
    error_code rec;
    channel::remove_stale(n, rec);
    if (!rec) removed.push_back(n);
  }
  std::sort(removed.begin(), removed.end());
  return removed;
}

}  // namespace baton
