// Balancing: the workers a dispatcher knows (see balance_impl.hpp). A worker joins through the
// dispatcher's control channel; its exit is watched, and judged as leaving (it said "left") or
// dying (a worker this dispatcher started is started again). Rebalancing and draining are
// requests to workers, which move idle connections at their safe points.
#include "balance/balance_impl.hpp"

#include "baton/spawn.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>

namespace baton::balance::detail {

worker_ptr worker_pool::by_pid(std::uint32_t pid, bool even_dead) {
  for (auto& w : workers)
    if (w->info.pid == pid && (even_dead || !w->dead)) return w;
  return nullptr;
}

worker_ptr worker_pool::by_id(std::uint32_t id) {
  for (auto& w : workers)
    if (w->info.id == id) return w;
  return nullptr;
}

void worker_pool::on_join(std::uint32_t pid, const control_message& m) {
  auto w = std::make_shared<worker_rec>();
  w->info.id = next_id_++;
  w->info.index = static_cast<std::uint32_t>(m.number("index"));
  w->info.pid = pid;
  w->info.channel = m.get("channel");
  channel_options copts;
  copts.on_full = full_policy::fail;  // a full worker is skipped, not waited for
  copts.ack_spin = d_.o.ack_spin;
  copts.ack_poll_first = copts.ack_poll_max = d_.o.ack_poll;
  error_code ec;
  w->ch = channel::open(d_.ex, w->info.channel, copts, ec);
  if (ec) return;  // gone already, or not a channel of ours: ignore the join
  w->exit = baton::detail::process_exit_wait(d_.ex, pid, children_.count(pid) != 0, ec);
  if (ec) return;
  w->exit.async_wait([self = d_.shared_from_this(), w](error_code e) {
    if (!e) self->pool.on_exit(w);
  });
  if (m.has("held")) {
    // A worker of an earlier dispatcher, with the connections it serves: its report totals cover
    // its whole life, so what it held when it rejoined is carried beside them.
    w->peer_in = m.number("peer");
    w->departed = m.number("out");
    const std::uint64_t with_out = m.number("held") + w->departed;
    w->carried = with_out > w->peer_in ? with_out - w->peer_in : 0;
    ++d_.st.rejoined;
  }
  // A slot waiting to be adopted has its worker now (and is started again if it dies).
  adopting_.erase(w->info.index);
  workers.push_back(w);
  ++d_.st.worker_joins;
  notify_waiters();
  send_drains();
  d_.pump();
}

void worker_pool::on_exit(const worker_ptr& w) {
  if (w->removed) return;
  w->dead = true;
  children_.erase(w->info.pid);
  // A worker that left wrote its "left" ticket before exiting, but the exit may be seen before
  // the ticket: read what is in the control ring now, then tell leaving from dying.
  ticket t;
  error_code ec;
  while (d_.ctl.try_receive(t, ec))
    if (!ec && is_balance_ticket(t)) d_.on_control(t);
  w->judged = true;
  if (!w->left && !d_.stopped) on_death(w);
  maybe_erase(w);
  send_drains();
  d_.pump();
}

void worker_pool::on_death(const worker_ptr& w) {
  ++d_.st.worker_deaths;
  // Only workers this dispatcher started can be started again: it knows their command.
  auto it = slots_.find(w->info.index);
  if (!d_.o.restart_dead_workers || w->info.leaving || it == slots_.end()) return;
  error_code ec;
  if (start_process(w->info.index, it->second, ec)) ++d_.st.restarts;
}

void worker_pool::maybe_erase(const worker_ptr& w) {
  if (!w->dead || !w->judged || w->info.in_flight != 0 || w->removed) return;
  w->removed = true;
  w->exit.cancel();
  w->ch.close();
  // A worker that was killed could not remove its channel's names; its owner is dead now, so
  // remove_stale may (it refuses while an owner lives).
  error_code ignored;
  channel::remove_stale(w->info.channel, ignored);
  workers.erase(std::remove(workers.begin(), workers.end(), w), workers.end());
}

void worker_pool::send_drains() {
  for (auto& w : workers) {
    if (!w->info.leaving || w->dead || w->left) continue;
    std::vector<std::string> to;
    for (auto& x : workers)
      if (x != w && x->live()) to.push_back(x->info.channel);
    send_control(w->ch, control_message("drain").set("to", to));
  }
}

void worker_pool::notify_waiters() {
  const auto live = static_cast<std::size_t>(
      std::count_if(workers.begin(), workers.end(), [](const worker_ptr& w) { return w->live(); }));
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    if (it->first <= live) {
      handler_type h(std::move(it->second));
      it = waiters_.erase(it);
      asio::post(d_.ex, asio::append(std::move(h), error_code()));
    } else {
      ++it;
    }
  }
}

void worker_pool::add_waiter(std::size_t n, handler_type h) {
  waiters_.emplace_back(n, std::move(h));
  notify_waiters();
}

void worker_pool::abort_waiters(error_code ec) {
  for (auto& [n, h] : waiters_) asio::post(d_.ex, asio::append(std::move(h), ec));
  waiters_.clear();
}

void worker_pool::cancel_exits() {
  for (auto& w : workers) w->exit.cancel();
}

std::uint32_t worker_pool::spawn(const std::string& exe, const std::vector<std::string>& args, error_code& ec) {
  const std::uint32_t index = next_slot_++;
  spawn_slot s{exe, args};
  if (slot_serving(index)) {
    // An earlier dispatcher's worker of this slot still serves: it rejoins, or the slot is
    // started when adopt_within has passed (arm_adoption).
    slots_.emplace(index, std::move(s));
    if (!std::any_of(workers.begin(), workers.end(), [&](const worker_ptr& w) { return w->info.index == index && !w->dead; }))
      adopting_.insert(index);
    if (d_.claimed) arm_adoption();
    return index;
  }
  if (!start_process(index, s, ec)) return index;
  slots_.emplace(index, std::move(s));
  return index;
}

bool worker_pool::slot_serving(std::uint32_t index) {
  error_code ec;
  channel ch = channel::open(d_.ex, slot_channel(d_.o.name, index), {}, ec);
  return !ec && baton::detail::process_alive(ch.owner_pid());
}

void worker_pool::arm_adoption() {
  if (adoption_armed_ || adopting_.empty()) return;
  adoption_armed_ = true;
  d_.adopt_timer.expires_at(d_.claimed_at + d_.o.adopt_within);
  d_.adopt_timer.async_wait([self = d_.shared_from_this()](error_code ec) {
    auto& pool = self->pool;
    pool.adoption_armed_ = false;
    if (ec || self->stopped) return;
    const auto slots = std::move(pool.adopting_);
    pool.adopting_.clear();
    for (auto index : slots) {
      error_code e;
      if (auto it = pool.slots_.find(index); it != pool.slots_.end()) pool.start_process(index, it->second, e);
    }
  });
}

bool worker_pool::start_process(std::uint32_t index, const spawn_slot& s, error_code& ec) {
  std::vector<std::string> args = s.args;
  for (auto& a : args) {
    for (auto [key, value] : {std::pair<std::string, std::string>{"{index}", std::to_string(index)},
                              std::pair<std::string, std::string>{"{dispatcher}", d_.o.name}}) {
      for (auto pos = a.find(key); pos != std::string::npos; pos = a.find(key, pos + value.size()))
        a.replace(pos, key.size(), value);
    }
  }
  auto p = spawn_with_handles(s.exe, args, {}, ec);
  if (ec) return false;
  children_.insert(p.pid);
  return true;
}

std::size_t worker_pool::rebalance() {
  // Hand-offs in flight count, as for least-connections: while connections are being accepted, a
  // worker whose acks are late is not the lighter one (asking for a move then moved a connection
  // that least-connections had already made up for).
  auto load = [](const worker_ptr& w) { return w->active() + w->info.in_flight; };
  worker_ptr hi, lo;
  for (auto& w : workers) {
    if (!w->live()) continue;
    if (!hi || load(w) > load(hi)) hi = w;
    if (!lo || load(w) < load(lo)) lo = w;
  }
  if (!hi || hi == lo || load(hi) < load(lo) + 2) return 0;
  const std::size_t n = (load(hi) - load(lo)) / 2;
  // The estimates lag the workers' reports, so a request sent while the moves of the previous
  // one are still unreported would ask for them again and overshoot. But a move that one worker
  // has not reported yet is missing from the other's estimate too, so the sum of the two, and
  // the share `hi` should keep, are right even then: the worker stops at that share, whatever
  // `n` says.
  ask_move(hi, lo, n, load(hi) - n);
  return n;
}

void worker_pool::ask_move(const worker_ptr& from, const worker_ptr& to, std::size_t n, std::uint64_t keep) {
  d_.st.rebalance_moves += n;
  const auto until = std::chrono::steady_clock::now() + rebalance_request_life;
  from->moving_out = {n, from->departed, until};
  to->moving_in = {n, to->peer_in, until};
  send_control(from->ch,
               control_message("rebalance").set("n", std::uint64_t{n}).set("keep", keep).set("to", to->info.channel));
}

}  // namespace baton::balance::detail
