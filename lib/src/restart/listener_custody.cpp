// Hot restart: the service's listeners (see service_impl.hpp). During a hand-over each listener
// moves to the next generation while a duplicate of its handle stays here, so that a restart that
// fails, however late, gets every listener back with its backlog.
#include "restart/service_impl.hpp"

#include <boost/asio/steady_timer.hpp>

#include <algorithm>

namespace baton::detail {

using namespace std::chrono_literals;

void listener_custody::add(listener l, bool accepting) {
  auto e = std::make_shared<entry>();
  e->l = std::move(l);
  listeners_.push_back(e);
  s_.st.listeners = listeners_.size();
  if (accepting) accept_loop(e);
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
    e->kept = kept_listener::keep(e->l, ec);
    if (ec) return s_.hand.fail(ec);
    e->name = e->l.name();
    e->moving = true;
    auto nx = s_.next;
    baton::async_send(*nx, std::move(e->l), s_.opts.move,
                      [self = s_.shared_from_this(), e, nx](error_code ec, listener back) {
                        self->listeners.on_sent(e, ec, std::move(back));
                      });
  }
}

void listener_custody::on_sent(const entry_ptr& e, error_code ec, listener back) {
  const bool handing_over = s_.ph == service_phase::handing_over;
  e->moving = false;
  if (!ec) {
    e->gone = true;
    ++s_.report.listeners_moved;
    if (e->restore_on_success) restore(e);  // the restart failed meanwhile
  } else {
    e->l = std::move(back);
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
  s_.st.listeners = listeners_.size();
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
  s_.st.listeners = listeners_.size();
}

void listener_custody::restore(const entry_ptr& e) {
  e->gone = false;
  e->restore_on_success = false;
  if (!e->kept) return;
  error_code ec;
  e->l = e->kept.adopt(s_.ex, ec);
  e->l.set_name(e->name);
  if (ec) {
    s_.note("baton: service " + s_.name + " cannot take a listener back: " + ec.message());
    return;
  }
  accept_loop(e);
}

void listener_custody::close_kept() {
  for (auto& e : listeners_) e->kept.close();
  for (auto& e : handed_over_) e->kept.close();
  handed_over_.clear();
}

void listener_custody::close() {
  for (auto& e : listeners_) {
    e->kept.close();
    e->l.close();
  }
}

void listener_custody::discard() {
  for (auto& e : listeners_) e->l.close();
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
    error_code ec;
    auto ep = e->l.local_endpoint(ec);
    if (!ec) v.push_back({ep, e->l.name()});
  }
  return v;
}

}  // namespace baton::detail
