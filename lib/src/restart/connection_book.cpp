// Hot restart: the connections a generation owns (see service_impl.hpp). They are counted (a
// hand-over ends when none is left), queued for the application, parked while the application
// waits at a safe point, and moved to the next generation once its listeners are there.
#include "restart/service_impl.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>
#include <array>

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
  if (s_.hand.forwarding()) {
    outbound_.push_back(std::move(c));
    return pump();
  }
  if (accept_waiter_) return post_accept({}, std::move(c));
  ready_.push_back(std::move(c));
}

void connection_book::accept(accept_handler h) {
  if (accept_waiter_) {
    asio::post(s_.ex, asio::append(std::move(h), make_error_code(errc::operation_in_progress), connection()));
    return;
  }
  accept_waiter_.emplace(std::move(h));
  if (s_.ph == service_phase::retired || s_.ph == service_phase::closed || s_.ph == service_phase::stopping)
    return abort_accept();
  if (!ready_.empty()) {
    auto c = std::move(ready_.front());
    ready_.pop_front();
    post_accept({}, std::move(c));
    s_.listeners.resume_accepting();
  }
}

// ---- moving to the next generation, a window at a time ---------------------------------------

std::size_t connection_book::window_bound() const {
  const std::size_t slots = s_.next ? s_.next->ack_slots() : 0;
  return std::max<std::size_t>(1, std::min<std::size_t>(s_.opts.max_moves_in_flight, slots));
}

std::size_t connection_book::window() const { return std::min(window_bound(), congestion_window_); }

// A next generation slower than the window (a loaded machine, a sanitizer build, Wine's emulated
// sockets) acknowledges the last moves of a full window after the move timeout: each of those is
// time lost (the source waits out the timeout, rolls back, and tries again 100 ms later). So the
// window adapts as TCP's does: a timed-out move halves it (once per window of moves: those sent
// before the cut do not cut it again), and each window of verdicts in time widens it by one, up
// to window_bound(). (400 moves to a target taking 25 ms each: 15.3 s, 17.0 s with a fixed window.)
void connection_book::on_verdict(std::uint64_t seq, const error_code& ec) {
  if (ec == errc::move_timeout) {
    if (seq <= cut_at_seq_) return;
    const std::size_t before = std::min(window(), moves_in_flight_ + 1);
    congestion_window_ = std::max<std::size_t>(1, before / 2);
    cut_at_seq_ = sent_seq_;
    verdicts_in_time_ = 0;
    s_.note("baton: service " + s_.name + ": moves to the next generation time out; at most " +
            std::to_string(congestion_window_) + " in flight from now");
    return;
  }
  if (ec || congestion_window_ >= window_bound()) return;
  if (++verdicts_in_time_ >= congestion_window_) {
    ++congestion_window_;
    verdicts_in_time_ = 0;
  }
}

void connection_book::move_all() {
  congestion_window_ = SIZE_MAX;  // each hand-over starts with the full window
  cut_at_seq_ = sent_seq_;
  verdicts_in_time_ = 0;
  while (!ready_.empty()) {
    outbound_.push_back(std::move(ready_.front()));
    ready_.pop_front();
  }
  for (auto& p : parked_) queue_parked(p);
  pump();
}

void connection_book::queue_parked(const std::shared_ptr<parked>& p) {
  if (p->queued || p->finished || p->reader.taken() || p->move_requested) return;
  p->queued = true;
  to_move_.push_back(p);
}

void connection_book::pump() {
  if (!s_.hand.forwarding() || !s_.next) return;
  const std::size_t w = window();
  while (moves_in_flight_ < w) {
    if (!outbound_.empty()) {
      auto c = std::move(outbound_.front());
      outbound_.pop_front();
      if (c.is_open()) move_ready(std::move(c));
      continue;
    }
    if (to_move_.empty()) break;
    auto p = std::move(to_move_.front());
    to_move_.pop_front();
    p->queued = false;
    // Parked connections whose client spoke meanwhile went back to the application; it parks
    // them again at their next safe point.
    if (!p->finished && !p->reader.taken() && !p->move_requested && p->c->is_open()) move_parked(p);
    else if (p->pushed && !p->finished && !p->c->is_open())
      finish_parked(p, error_code(asio::error::bad_descriptor), false);
  }
}

void connection_book::retry_refused() {
  while (!refused_.empty()) {
    outbound_.push_back(std::move(refused_.front()));
    refused_.pop_front();
  }
  if (parked_refused_) {
    parked_refused_ = false;
    for (auto& p : parked_) queue_parked(p);
  }
  pump();
}

void connection_book::abandon_moves() {
  for (auto* q : {&refused_, &outbound_})
    while (!q->empty()) {
      ready_.push_back(std::move(q->front()));
      q->pop_front();
    }
  for (auto& p : to_move_) p->queued = false;
  to_move_.clear();
  parked_refused_ = false;
  // Connections the application handed over itself go back to it (their writers go on); a
  // pushed connection in the middle of its move hears from its verdict.
  finish_pushed({});
  while (accept_waiter_ && !ready_.empty()) {
    auto c = std::move(ready_.front());
    ready_.pop_front();
    post_accept({}, std::move(c));
  }
}

void connection_book::move_ready(connection c) {
  auto nx = s_.next;
  ++moves_in_flight_;
  const auto seq = ++sent_seq_;
  baton::async_send(*nx, std::move(c), s_.opts.move, [self = s_.shared_from_this(), nx, seq](error_code ec, connection back) {
    auto& book = self->conns;
    if (book.on_sent(seq, ec)) return book.pump();
    if (back.is_open()) {
      if (book.accept_waiter_) book.post_accept({}, std::move(back));
      else if (self->hand.forwarding()) book.refused_.push_back(std::move(back));
      else book.ready_.push_back(std::move(back));
    }
    book.pump();
  });
}

// A move left the window. The last one may have been the hand-over's last: the hand-over looks
// now rather than at its next tick (up to 20 ms later: 18 of the 18 ms a hand-over of 1,000
// idle connections took).
void connection_book::move_ended() {
  --moves_in_flight_;
  if (moves_in_flight_ == 0) s_.hand.moves_settled();
}

// A move's verdict came back: the window has room again and learns from it
// (on_verdict). A move that succeeded is counted; a failed one notes the time. True on success.
bool connection_book::on_sent(std::uint64_t seq, const error_code& ec) {
  move_ended();
  on_verdict(seq, ec);
  if (ec) {
    last_move_failure_ = clock_type::now();
    return false;
  }
  ++s_.report.connections_moved;
  ++s_.st.moved_out;
  return true;
}

// ---- connections parked at a safe point -----------------------------------------------------------

void connection_book::safe_point(connection& c, safe_point_handler h) {
  if (!c.is_open()) {
    asio::post(s_.ex, asio::append(std::move(h), error_code(asio::error::bad_descriptor), false));
    return;
  }
  if (s_.ph == service_phase::stopping) {
    ++closed_at_stop_;
    asio::post(s_.ex, asio::append(std::move(h), make_error_code(errc::service_stopping), false));
    return;
  }
  auto p = std::make_shared<parked>();
  p->c = &c;
  p->h.emplace(std::move(h));
  parked_.push_front(p);
  p->self = parked_.begin();
  read_parked(p);
  if (s_.hand.forwarding()) {
    queue_parked(p);
    pump();
  }
}

// Waits for the client's next bytes; they are put back for the application to read.
void connection_book::read_parked(const std::shared_ptr<parked>& p) {
  p->reader.async_wait(*p->c, p, [self = s_.shared_from_this(), p](error_code ec) {
    auto& book = self->conns;
    if (p->move_requested) {
      // The move cancelled this read and waited for it to end: bytes it had read are back in
      // the connection's unread bytes, and travel with it.
      p->move_requested = false;
      if (!ec || ec == asio::error::operation_aborted) return book.send_parked(p);
      book.move_ended();  // the client is gone: nothing to move
      book.finish_parked(p, ec, false);
      return book.pump();
    }
    if (ec == asio::error::operation_aborted && p->stopping) {
      ++book.closed_at_stop_;
      ec = make_error_code(errc::service_stopping);
    }
    book.finish_parked(p, ec, false);
  });
}

// A parked connection has a read pending (the wait for the client's next bytes). A read that has
// completed but whose handler has not run yet holds bytes taken from the socket: moving the
// connection now would lose them. So the move cancels the read first and starts once it has ended
// (send_parked, from read_parked's handler), counted in the window from now.
void connection_book::move_parked(const std::shared_ptr<parked>& p) {
  ++moves_in_flight_;
  if (p->reader.waiting()) {
    p->move_requested = true;
    p->c->cancel();
    return;
  }
  send_parked(p);
}

void connection_book::send_parked(const std::shared_ptr<parked>& p) {
  if (p->finished || !p->c->is_open()) {
    move_ended();
    return pump();
  }
  if (!s_.hand.forwarding() || !s_.next) {  // the hand-over was abandoned meanwhile: park again
    move_ended();
    if (p->pushed) return finish_parked(p, {}, false);
    return read_parked(p);
  }
  p->reader.set_taken(true);
  auto nx = s_.next;
  const auto seq = ++sent_seq_;
  baton::async_send(*nx, std::move(*p->c), s_.opts.move,
                    [self = s_.shared_from_this(), p, nx, seq](error_code ec, connection back) {
                      auto& book = self->conns;
                      if (book.on_sent(seq, ec)) {
                        book.finish_parked(p, {}, true);
                        return book.pump();
                      }
                      *p->c = std::move(back);
                      p->reader.set_taken(false);
                      if (p->pushed && !self->hand.forwarding()) return book.finish_parked(p, {}, false);
                      book.parked_refused_ = true;
                      if (!p->pushed) book.read_parked(p);  // keep waiting; the drain retries the move
                      book.pump();
                    });
}

void connection_book::finish_parked(const std::shared_ptr<parked>& p, error_code ec, bool moved) {
  if (p->finished) return;
  p->finished = true;
  parked_.erase(p->self);
  auto h = std::move(*p->h);
  p->h.reset();
  asio::post(s_.ex, asio::append(std::move(h), ec, moved));
}

void connection_book::stop_all() {
  // Accepted, never handed to the application: nothing was asked of them yet.
  closed_at_stop_ += ready_.size();
  ready_.clear();
  abort_accept();
  // Parked at a safe point: their reads are cancelled, and each waiter hears service_stopping
  // (or, if the client's next request came first, gets it to serve as usual).
  for (auto& p : parked_) {
    if (p->pushed || p->reader.taken() || p->finished || p->move_requested) continue;
    p->stopping = true;
    if (p->c->is_open()) p->c->cancel();
  }
  // A graceful stop moves nothing: the connections the application handed over come back to it
  // with service_stopping (it closes them, gracefully), and so do the writers waiting for a notice.
  finish_pushed(make_error_code(errc::service_stopping));
  notify_handover(make_error_code(errc::service_stopping));
}

void connection_book::cancel_parked() {
  for (auto& p : parked_)
    if (!p->pushed && !p->reader.taken() && p->c->is_open()) p->c->cancel();
  finish_pushed(make_error_code(asio::error::operation_aborted));
  notify_handover(make_error_code(asio::error::operation_aborted));
}

// ---- connections the application hands over or closes itself -----------------------------------

void connection_book::handover_now(connection& c, safe_point_handler h) {
  if (!c.is_open()) {
    asio::post(s_.ex, asio::append(std::move(h), error_code(asio::error::bad_descriptor), false));
    return;
  }
  if (s_.ph == service_phase::stopping) {
    asio::post(s_.ex, asio::append(std::move(h), make_error_code(errc::service_stopping), false));
    return;
  }
  if (!s_.hand.forwarding()) {  // nothing is moving: the application goes on with it
    asio::post(s_.ex, asio::append(std::move(h), error_code(), false));
    return;
  }
  auto p = std::make_shared<parked>();
  p->c = &c;
  p->pushed = true;
  p->h.emplace(std::move(h));
  parked_.push_front(p);
  p->self = parked_.begin();
  queue_parked(p);
  pump();
}

namespace {

// A connection closing gracefully: its send side is shut, and what its client still sends is read
// and dropped until the client closes its side too (a WebSocket client answers a close frame, then
// closes), for at most a few seconds. Closed at once, a socket with the client's answer unread
// would be reset, and a reset can destroy the goodbye still waiting in the client's buffer.
struct closing_connection : std::enable_shared_from_this<closing_connection> {
  connection c;
  asio::steady_timer timer;
  std::array<char, 4096> sink;

  closing_connection(connection cc, const asio::any_io_executor& ex) : c(std::move(cc)), timer(ex) {}

  void start() {
    timer.expires_after(std::chrono::seconds(3));
    timer.async_wait([self = shared_from_this()](error_code ec) {
      if (!ec) self->c.close();
    });
    drain();
  }
  void drain() {
    c.async_read_some(asio::buffer(sink), [self = shared_from_this()](error_code ec, std::size_t) {
      if (!ec) return self->drain();
      self->timer.cancel();
      self->c.close();
    });
  }
};

}  // namespace

void connection_book::close_gracefully(connection& c) {
  if (!c.is_open()) return;
  ++s_.st.closed_gracefully;
  ++s_.report.connections_closed_gracefully;
  error_code ec;
  c.shutdown_send(ec);
  if (ec) return c.close();
  std::make_shared<closing_connection>(std::move(c), s_.ex)->start();
}

void connection_book::wait_handover(asio::any_completion_handler<void(error_code)> h) {
  error_code now;
  if (s_.hand.forwarding()) now = {};
  else if (s_.ph == service_phase::stopping) now = make_error_code(errc::service_stopping);
  else if (s_.ph == service_phase::retired || s_.ph == service_phase::closed)
    now = make_error_code(asio::error::operation_aborted);
  else return handover_waiters_.push_back(std::move(h));
  asio::post(s_.ex, asio::append(std::move(h), now));
}

void connection_book::notify_handover(error_code ec) {
  auto waiters = std::move(handover_waiters_);
  handover_waiters_.clear();
  for (auto& w : waiters) asio::post(s_.ex, asio::append(std::move(w), ec));
}

void connection_book::finish_pushed(error_code ec) {
  std::vector<std::shared_ptr<parked>> done;
  for (auto& p : parked_)
    if (p->pushed && !p->finished && !p->reader.taken()) done.push_back(p);
  for (auto& p : done) {
    if (p->queued) {
      p->queued = false;
      std::erase(to_move_, p);
    }
    finish_parked(p, ec, false);
  }
}

}  // namespace baton::detail
