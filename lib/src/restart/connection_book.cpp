// Hot restart: the connections a generation owns (see service_impl.hpp). They are counted (a
// hand-over ends when none is left), queued for the application, parked while the application
// waits at a safe point, and moved to the next generation once its listeners are there.
#include "restart/service_impl.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>

namespace baton::detail {

std::size_t connection_book::owned_count() {
  std::erase_if(owned_, [](const connection_watch& w) { return !w.open(); });
  owned_live_hint_ = owned_.size();
  return owned_live_hint_;
}

void connection_book::track(connection& c) {
  owned_.emplace_back(c);
  if (owned_.size() > 2 * owned_live_hint_ + 256) owned_count();  // prune now and then
}

bool connection_book::ready_full() const { return ready_.size() >= std::max<std::size_t>(s_.opts.max_ready, 1); }

void connection_book::post_accept(error_code ec, connection c) {
  auto h = std::move(*accept_waiter_);
  accept_waiter_.reset();
  asio::post(s_.ex, asio::append(std::move(h), ec, std::move(c)));
}

void connection_book::abort_accept() {
  if (accept_waiter_) post_accept(make_error_code(asio::error::operation_aborted), connection());
}

void connection_book::deliver(connection c) {
  track(c);
  if (s_.hand.forwarding()) return move_ready(std::move(c));
  if (accept_waiter_) return post_accept({}, std::move(c));
  ready_.push_back(std::move(c));
}

void connection_book::accept(accept_handler h) {
  if (accept_waiter_) {
    asio::post(s_.ex, asio::append(std::move(h), make_error_code(errc::operation_in_progress), connection()));
    return;
  }
  accept_waiter_.emplace(std::move(h));
  if (s_.ph == service_phase::retired || s_.ph == service_phase::closed) return abort_accept();
  if (!ready_.empty()) {
    auto c = std::move(ready_.front());
    ready_.pop_front();
    post_accept({}, std::move(c));
    s_.listeners.resume_accepting();
  }
}

void connection_book::move_ready_all() {
  while (!ready_.empty()) {
    auto c = std::move(ready_.front());
    ready_.pop_front();
    move_ready(std::move(c));
  }
}

void connection_book::move_all() {
  for (auto& p : parked_)
    if (!p->reader.taken()) move_parked(p);
  move_ready_all();
}

void connection_book::move_ready(connection c) {
  auto nx = s_.next;
  ++moves_in_flight_;
  baton::async_send(*nx, std::move(c), s_.opts.move, [self = s_.shared_from_this(), nx](error_code ec, connection back) {
    auto& book = self->conns;
    --book.moves_in_flight_;
    if (!ec) {
      ++self->report.connections_moved;
      ++self->st.moved_out;
      return;
    }
    book.last_move_failure_ = clock_type::now();
    if (book.accept_waiter_) return book.post_accept({}, std::move(back));
    book.ready_.push_back(std::move(back));
  });
}

// ---- connections parked at a safe point -----------------------------------------------------------

void connection_book::safe_point(connection& c, safe_point_handler h) {
  if (!c.is_open()) {
    asio::post(s_.ex, asio::append(std::move(h), error_code(asio::error::bad_descriptor), false));
    return;
  }
  auto p = std::make_shared<parked>();
  p->c = &c;
  p->h.emplace(std::move(h));
  parked_.push_front(p);
  p->self = parked_.begin();
  if (s_.hand.forwarding()) move_parked(p);
  else read_parked(p);
}

// Waits for the client's next bytes; they are put back for the application to read.
void connection_book::read_parked(const std::shared_ptr<parked>& p) {
  p->reader.async_wait(*p->c, p, [self = s_.shared_from_this(), p](error_code ec) {
    self->conns.finish_parked(p, ec, false);
  });
}

void connection_book::move_parked(const std::shared_ptr<parked>& p) {
  p->reader.set_taken(true);
  auto nx = s_.next;
  ++moves_in_flight_;
  baton::async_send(*nx, std::move(*p->c), s_.opts.move,
                    [self = s_.shared_from_this(), p, nx](error_code ec, connection back) {
                      auto& book = self->conns;
                      --book.moves_in_flight_;
                      if (!ec) {
                        ++self->report.connections_moved;
                        ++self->st.moved_out;
                        return book.finish_parked(p, {}, true);
                      }
                      *p->c = std::move(back);
                      p->reader.set_taken(false);
                      book.last_move_failure_ = clock_type::now();
                      book.read_parked(p);  // keep waiting; the drain retries the move
                    });
}

void connection_book::finish_parked(const std::shared_ptr<parked>& p, error_code ec, bool moved) {
  parked_.erase(p->self);
  auto h = std::move(*p->h);
  p->h.reset();
  asio::post(s_.ex, asio::append(std::move(h), ec, moved));
}

void connection_book::cancel_parked() {
  for (auto& p : parked_)
    if (!p->reader.taken() && p->c->is_open()) p->c->cancel();
}

}  // namespace baton::detail
