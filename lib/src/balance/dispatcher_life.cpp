// Balancing, a dispatcher's life: its creation (taking the name of a restarted front over), its
// end (draining what it accepted, stopping) and the handle it shares with the worker (see
// balance_impl.hpp).
#include "balance/balance_impl.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>

namespace baton::balance::detail {

// ---- taking a restarted front's name over ---------------------------------------------------------

void dispatcher_impl::claim_name() {
  if (stopped) return;
  error_code ec;
  channel::remove_stale(o.name, ec);  // refuses while the earlier dispatcher lives
  ctl = channel::create(ex, o.name, {}, ec);
  if (!ec) return on_claimed();
  if (ec != errc::name_in_use || std::chrono::steady_clock::now() >= claim_until) {
    // Still held (or not creatable) after take_over: what waits for this dispatcher ends.
    stopped = true;
    finish_run(ec);
    pool.abort_waiters(ec);
    return;
  }
  claim_timer.expires_after(std::chrono::milliseconds(10));
  claim_timer.async_wait([self = shared_from_this()](error_code e) {
    if (!e) self->claim_name();
  });
}

void dispatcher_impl::on_claimed() {
  claimed = true;
  claimed_at = std::chrono::steady_clock::now();
  receive_control();
  pool.arm_adoption();
}

void dispatcher_impl::finish_run(error_code ec) {
  running = false;
  post_once(ex, run_handler, ec);
}

void dispatcher_impl::check_drained() {
  if (!drain_handler || stopped) return;
  const bool in_flight =
      std::any_of(pool.workers.begin(), pool.workers.end(), [](const worker_ptr& w) { return w->info.in_flight != 0; });
  if (!waiting.empty() || peeking != 0 || in_flight || accepting) return;
  auto h = std::move(drain_handler);
  drain_handler.reset();
  stop();
  post_once(ex, h, {});
}

void dispatcher_impl::stop() {
  if (stopped) return;
  stopped = true;
  if (acc) {
    error_code ignored;
    acc->cancel(ignored);
  }
  retry_timer.cancel();
  full_timer.cancel();
  rebalance_timer.cancel();
  claim_timer.cancel();
  adopt_timer.cancel();
  pool.cancel_exits();
  ctl.close();
  waiting.clear();  // connections no worker could take: closed
  finish_run(asio::error::operation_aborted);
  pool.abort_waiters(asio::error::operation_aborted);
  post_once(ex, drain_handler, asio::error::operation_aborted);
}

// ---- what dispatcher and worker share ---------------------------------------------------------------

template <class Impl>
handle<Impl>::handle(handle&&) noexcept = default;
template <class Impl>
handle<Impl>& handle<Impl>::operator=(handle&& o) noexcept {
  if (this != &o) {
    if (impl_) impl_->stop();
    impl_ = std::move(o.impl_);
  }
  return *this;
}
template <class Impl>
handle<Impl>::~handle() {
  if (impl_) impl_->stop();
}
template <class Impl>
typename handle<Impl>::executor_type handle<Impl>::get_executor() const {
  return impl_->ex;
}
template class handle<dispatcher_impl>;
template class handle<worker_impl>;

std::shared_ptr<dispatcher_impl> make_dispatcher(const asio::any_io_executor& ex, dispatcher_options opts,
                                                 error_code& ec) {
  auto d = std::make_shared<dispatcher_impl>(ex, std::move(opts));
  d->ctl = channel::create(ex, d->o.name, {}, ec);
  if (ec == errc::name_in_use) {
    // An earlier dispatcher's: a dead one's names go; a live one's are waited for (take_over).
    d->took_over = true;
    ec.clear();
    channel::remove_stale(d->o.name, ec);
    if (!ec) d->ctl = channel::create(ex, d->o.name, {}, ec);
    if (ec == errc::name_in_use && d->o.take_over.count() > 0) {
      ec.clear();
      d->claim_until = std::chrono::steady_clock::now() + d->o.take_over;
      d->claim_name();
      return d;
    }
  }
  if (ec) return nullptr;
  d->on_claimed();
  return d;
}

}  // namespace baton::balance::detail
