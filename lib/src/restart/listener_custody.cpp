// Hot restart: the service's listeners and UDP sockets (see service_impl.hpp). During a hand-over
// each moves to the next generation while a duplicate of its handle stays here, so that a restart
// that fails, however late, gets every listener back with its backlog and every UDP socket with
// the datagrams the kernel still holds.
#include "restart/service_impl.hpp"

#include <boost/asio/steady_timer.hpp>

#include <algorithm>

namespace baton::detail {

using namespace std::chrono_literals;

void listener_custody::add(listener l, bool accepting) {
  auto e = std::make_shared<entry>();
  e->l = std::move(l);
  listeners_.push_back(e);
  s_.st.listeners = count();
  if (accepting) accept_loop(e);
}

void listener_custody::add_udp(udp_socket u) {
  auto e = std::make_shared<entry>();
  e->u = std::move(u);
  e->udp = true;
  hold_moves(e->u);
  listeners_.push_back(e);
}

std::size_t listener_custody::udp_count() const noexcept {
  return static_cast<std::size_t>(
      std::count_if(listeners_.begin(), listeners_.end(), [](const entry_ptr& e) { return e->udp; }));
}

std::vector<udp_socket> listener_custody::udp_handles() {
  std::vector<udp_socket> v;
  for (auto& e : listeners_)
    if (e->udp) v.push_back(share_held(e->u));
  return v;
}

void listener_custody::start_all() {
  for (auto& e : listeners_) accept_loop(e);
}

void listener_custody::accept_loop(const entry_ptr& e) {
  e->paused = false;
  if (!e->l.is_open()) return;
  e->l.async_accept([self = s_.shared_from_this(), e](error_code ec, asio::ip::tcp::socket sock) {
    if (!ec) {
      ++self->st.accepted;
      self->conns.deliver(connection(std::move(sock)));
    }
    if (e->moving || e->gone || self->ph == service_phase::closed || self->ph == service_phase::retired) return;
    if (ec == asio::error::operation_aborted || !e->l.is_open()) return;
    if (self->conns.ready_full()) {
      // The application is behind: leave further connections in the kernel's backlog, where
      // they cost this process no descriptor, until it takes some of these.
      e->paused = true;
      return;
    }
    if (ec) {
      // Out of descriptors and the like: do not spin; the backlog holds the connections.
      auto t = std::make_shared<asio::steady_timer>(self->ex, 20ms);
      t->async_wait([self, e, t](error_code) { self->listeners.accept_loop(e); });
      return;
    }
    self->listeners.accept_loop(e);
  });
}

void listener_custody::resume_accepting() {
  if (s_.conns.ready_full()) return;
  const auto ph = s_.ph;
  for (auto& e : listeners_) {
    if (!e->paused) continue;
    e->paused = false;
    if (!e->moving && !e->gone && ph != service_phase::closed && ph != service_phase::retired &&
        ph != service_phase::joining)
      accept_loop(e);
  }
}

void listener_custody::send_all() {
  moves_pending_ = listeners_.size();
  if (moves_pending_ == 0) return all_sent();
  for (auto& e : listeners_) {
    error_code ec;
    e->kept = e->udp ? kept_socket::keep(e->u, ec) : kept_socket::keep(e->l, ec);
    if (ec) return s_.hand.fail(ec);
    e->moving = true;
    auto nx = s_.next;
    auto self = s_.shared_from_this();
    if (e->udp) {
      // A second handle goes: the entry's stays, to take the socket back or settle its move.
      baton::async_send(*nx, share_held(e->u), s_.opts.move,
                        [self, e, nx](error_code ec, udp_socket) { self->listeners.on_sent(e, ec); });
      continue;
    }
    e->name = e->l.name();
    baton::async_send(*nx, std::move(e->l), s_.opts.move, [self, e, nx](error_code ec, listener back) {
      if (ec) e->l = std::move(back);
      self->listeners.on_sent(e, ec);
    });
  }
}

void listener_custody::on_sent(const entry_ptr& e, error_code ec) {
  const bool handing_over = s_.ph == service_phase::handing_over;
  e->moving = false;
  if (!ec) {
    e->gone = true;
    ++(e->udp ? s_.report.udp_sockets_moved : s_.report.listeners_moved);
    if (e->restore_on_success) restore(e);  // the restart failed meanwhile
  } else {
    e->kept.close();
    if (e->restore_on_success || !handing_over) {
      e->restore_on_success = false;
      accept_loop(e);
    }
    if (handing_over) s_.hand.fail(ec);
  }
  if (s_.ph == service_phase::handing_over && --moves_pending_ == 0) all_sent();
}

void listener_custody::all_sent() {
  for (auto& e : listeners_)
    if (e->gone) handed_over_.push_back(e);
  std::erase_if(listeners_, [](const entry_ptr& e) { return e->gone; });
  s_.st.listeners = count();
  s_.hand.listeners_sent();
}

void listener_custody::take_back() {
  // Listeners already with the next generation come back from the duplicates we kept.
  for (auto& e : handed_over_) {
    listeners_.push_back(e);
    restore(e);
  }
  handed_over_.clear();
  for (auto& e : listeners_) {
    if (e->gone) restore(e);
    else if (e->moving) e->restore_on_success = true;
  }
  s_.st.listeners = count();
}

void listener_custody::restore(const entry_ptr& e) {
  e->gone = false;
  e->restore_on_success = false;
  if (!e->kept) return;
  error_code ec;
  if (e->udp) {
    e->kept.restore(e->u, ec);
  } else {
    e->l = e->kept.adopt(s_.ex, ec);
    e->l.set_name(e->name);
  }
  if (ec) {
    s_.note("baton: service " + s_.name + " cannot take a " + (e->udp ? "UDP socket" : "listener") +
            " back: " + ec.message());
    return;
  }
  accept_loop(e);
}

void listener_custody::close_kept() {
  for (auto& e : listeners_) e->kept.close();
  for (auto& e : handed_over_) {
    e->kept.close();
    if (e->udp) settle_move(e->u);  // the application's receive on it ends now
  }
  handed_over_.clear();
}

void listener_custody::close() {
  for (auto& e : listeners_) {
    e->kept.close();
    e->l.close();
    e->u.close();
  }
  // Closed in the middle of a hand-over: what went is the next generation's, and a receive of the
  // application waiting on it ends.
  close_kept();
}

void listener_custody::discard() {
  close();
  listeners_.clear();
}

std::vector<asio::ip::tcp::endpoint> listener_custody::local_endpoints() const {
  std::vector<asio::ip::tcp::endpoint> v;
  for (auto& i : info()) v.push_back(i.endpoint);
  return v;
}

std::vector<listener_info> listener_custody::info() const {
  std::vector<listener_info> v;
  for (auto& e : listeners_) {
    if (e->udp) continue;
    error_code ec;
    auto ep = e->l.local_endpoint(ec);
    if (!ec) v.push_back({ep, e->l.name()});
  }
  return v;
}

}  // namespace baton::detail
