// A channel: the receiver creates the ring, doorbell and transfer endpoint under one name;
// senders open it, push tickets (waiting for room per full_policy) and poll their ack slot for
// the verdict; the receiver pops tickets, sleeping on the doorbell with a 50 ms re-check, and
// closes orphaned transfers whenever its ring is empty.
#include "baton/channel.hpp"

#include "channel_impl.hpp"
#include "detail/fault.hpp"
#include "detail/ticket_codec.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/post.hpp>

#include <bit>
#include <cstring>
#include <thread>

namespace baton {

namespace asio = boost::asio;
using namespace std::chrono_literals;

channel::impl::~impl() {
  detail::unguard_region(region.get_address());
  if (receiver) {
    // The region goes last: while it holds the name, nobody else can create a channel of it, so
    // the names removed before it are certainly ours (see remove_stale_channel).
    xfer.reset();
    detail::doorbell::remove(bell_name);
    detail::remove_region(region_name);
  }
}

namespace {
// The owner pid of a ring header (0 unless the magic is right), at its fixed offset (ring.cpp).
std::uint32_t header_owner(const void* header, std::size_t bytes) {
  if (bytes < 40) return 0;
  std::uint32_t magic = 0, pid = 0;
  std::memcpy(&magic, header, 4);
  std::memcpy(&pid, static_cast<const char*>(header) + 36, 4);
  return magic == detail::ring_magic ? pid : 0;
}
}  // namespace

bool channel::valid_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > 64 || name.front() == '.') return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

channel::channel() noexcept = default;
channel::channel(channel&&) noexcept = default;
channel& channel::operator=(channel&& o) noexcept {
  if (this != &o) {
    close();
    impl_ = std::move(o.impl_);
  }
  return *this;
}
channel::~channel() { close(); }

channel channel::create(const executor_type& ex, std::string_view name, const channel_options& opts, error_code& ec) {
  ec.clear();
  channel c;
  if (!valid_name(name)) {
    ec = errc::invalid_name;
    return c;
  }
  const std::size_t max_record = opts.limits.max_ticket_bytes;
  std::size_t data_bytes = std::bit_ceil(std::max<std::size_t>({opts.ring_bytes, 4096}));
  if (max_record > data_bytes / 2 - detail::record_header_bytes) {
    // A ticket of the maximum size must fit; grow the ring rather than refuse.
    data_bytes = std::bit_ceil(2 * (max_record + detail::record_header_bytes));
  }
  auto im = std::make_shared<impl>(ex);
  im->name = std::string(name);
  im->opts = opts;
  im->region_name = detail::object_name(im->name, "ring", opts.global_namespace);
  im->bell_name = detail::object_name(im->name, "bell", opts.global_namespace);
  const std::uint32_t slots = std::max<std::uint32_t>(opts.ack_slots, 1);
  // The region claims the name, and other processes judge the channel by its header (owner pid),
  // so it is published with its header already written, before the other objects exist.
  im->region = detail::create_region(
      im->region_name, detail::ring::mapping_bytes(data_bytes, slots),
      [&](void* base, std::size_t size) {
        im->ring.create(base, size, data_bytes, slots, max_record, detail::current_pid());
      },
      ec);
  if (ec) return c;
  im->receiver = true;  // from here on the destructor removes what we created
  // A transfer endpoint or doorbell of this name is a leftover of a dead owner that did not clean
  // up: no live channel can have them while we hold the region's name. Remove it (only if it is
  // this user's) and try again once.
  im->xfer = detail::open_transfer_endpoint(im->name, slots, opts.global_namespace, true, ec);
  if (ec == errc::name_in_use) {
    detail::remove_transfer_endpoint(im->name);
    im->xfer = detail::open_transfer_endpoint(im->name, slots, opts.global_namespace, true, ec);
  }
  if (ec) return c;  // the impl's destructor removes what was created
  im->bell = detail::doorbell::create(ex, im->bell_name, ec);
  if (ec == errc::name_in_use) {
    detail::doorbell::remove(im->bell_name);
    im->bell = detail::doorbell::create(ex, im->bell_name, ec);
  }
  if (ec) return c;
  c.impl_ = std::move(im);
  return c;
}

channel channel::create(const executor_type& ex, std::string_view name, const channel_options& opts) {
  error_code ec;
  auto c = create(ex, name, opts, ec);
  if (ec) throw system_error(ec, "baton::channel::create");
  return c;
}

channel channel::open(const executor_type& ex, std::string_view name, const channel_options& opts, error_code& ec) {
  ec.clear();
  channel c;
  if (!valid_name(name)) {
    ec = errc::invalid_name;
    return c;
  }
  auto im = std::make_shared<impl>(ex);
  im->name = std::string(name);
  im->opts = opts;
  im->region_name = detail::object_name(im->name, "ring", opts.global_namespace);
  im->bell_name = detail::object_name(im->name, "bell", opts.global_namespace);
  // A channel being created may show a zero header for a moment (Windows, where a mapping's name
  // is visible from its creation), or not have its doorbell yet: wait for it, briefly.
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    const auto waited = std::chrono::steady_clock::now() - start;
    detail::unguard_region(im->region.get_address());  // a previous attempt's mapping
    im->region = detail::open_region(im->region_name, ec);
    if (!ec) im->ring.attach(im->region.get_address(), im->region.get_size(), ec);
    if (ec == errc::bad_channel_header && waited < 500ms) {
      std::this_thread::sleep_for(1ms);
      continue;
    }
    if (ec) return c;
    im->owner = detail::process_watch(im->ring.identity().owner_pid);
    if (!im->owner.alive()) {
      ec = errc::channel_owner_dead;
      return c;
    }
    im->bell = detail::doorbell::open(im->bell_name, ec);
    if (ec == errc::channel_not_found && waited < 2s) {
      std::this_thread::sleep_for(1ms);
      continue;
    }
    if (ec) return c;
    break;
  }
  im->xfer = detail::open_transfer_endpoint(im->name, 0, opts.global_namespace, false, ec);
  if (ec) return c;
  // The receiver's limit bounds what it will accept; never send more than that.
  im->opts.limits.max_ticket_bytes =
      std::min<std::size_t>(opts.limits.max_ticket_bytes, im->ring.identity().max_record_bytes);
  c.impl_ = std::move(im);
  return c;
}

channel channel::open(const executor_type& ex, std::string_view name, const channel_options& opts) {
  error_code ec;
  auto c = open(ex, name, opts, ec);
  if (ec) throw system_error(ec, "baton::channel::open");
  return c;
}

void channel::remove_stale(std::string_view name, error_code& ec) {
  ec.clear();
  if (!valid_name(name)) {
    ec = errc::invalid_name;
    return;
  }
  detail::remove_stale_channel(std::string(name), &header_owner, ec);
}

std::string channel::describe_foreign_objects(std::string_view name) {
  if (!valid_name(name)) return {};
  return detail::describe_foreign_objects(std::string(name));
}

channel::executor_type channel::get_executor() const { return impl_->ex; }
bool channel::is_open() const noexcept { return impl_ != nullptr; }
bool channel::is_receiver() const noexcept { return impl_ && impl_->receiver; }
const std::string& channel::name() const noexcept {
  static const std::string empty;
  return impl_ ? impl_->name : empty;
}
std::uint32_t channel::owner_pid() const noexcept { return impl_ ? impl_->ring.identity().owner_pid : 0; }

channel_stats channel::stats() const {
  if (!impl_) return {};
  channel_stats s = impl_->stats;
  auto rc = impl_->ring.counters();
  s.producer_deaths = rc.producer_deaths;
  s.corruptions = rc.corruptions;
  s.doorbells_rung = rc.doorbells;
  s.stalled_records = rc.stalled;
  // The receiver sees a truncation as a zeroed header; a sender only through its region guard.
  s.truncations = impl_->receiver ? rc.truncations : detail::region_faults(impl_->region.get_address());
  return s;
}

void channel::close() {
  if (!impl_) return;
  impl_->closed = true;
  impl_->bell.cancel();
  impl_->wait_timer.cancel();
}

namespace {

// One send in progress: retries while the ring is full (policy wait), then, for a transaction,
// polls the ack slot with a growing interval until a verdict, the timeout, or the target's death.
struct send_op : std::enable_shared_from_this<send_op> {
  std::shared_ptr<channel::impl> ch;
  std::vector<std::byte> bytes;
  ticket_id id;
  std::uint32_t slot = no_ack_slot;
  bool with_ack = false;
  std::chrono::milliseconds ack_timeout{};
  std::chrono::steady_clock::time_point send_deadline, ack_deadline;
  asio::steady_timer timer;
  std::chrono::microseconds backoff{10};
  int spins = 0;
  std::chrono::steady_clock::time_point spin_until{};
  asio::any_completion_handler<void(error_code)> handler;

  // Boost 1.81's any_completion_handler move *assignment* recurses forever (it copies from a
  // named rvalue), so handlers are only ever move-constructed into place.
  send_op(std::shared_ptr<channel::impl> c, asio::any_completion_handler<void(error_code)> h)
      : ch(std::move(c)), timer(ch->ex), handler(std::move(h)) {}

  void finish(error_code ec) {
    if (with_ack && slot != no_ack_slot) ch->ring.ack_release(slot);
    std::move(handler)(ec);
  }

  void try_push() {
    error_code ec;
    if (ch->closed) return finish(asio::error::operation_aborted);
    if (!ch->owner_alive()) return finish(errc::channel_owner_dead);
    const bool wake = ch->ring.push(
        bytes.size(), [&](std::span<std::byte> out) { std::memcpy(out.data(), bytes.data(), bytes.size()); }, ec);
    if (!ec) {
      const bool bell_fails = detail::inject(detail::fault_step::doorbell, ch->owner.pid());
      if (wake && !bell_fails) ch->bell.ring();
      ++ch->stats.tickets_sent;
      if (!with_ack) return finish({});
      ack_deadline = std::chrono::steady_clock::now() + ack_timeout;
      backoff = ch->opts.ack_poll_first;
      return poll_ack();
    }
    if (ec == errc::channel_corrupted) ch->bell.ring();  // make the receiver heal the ring
    const bool retry = (ec == errc::channel_full || ec == errc::channel_corrupted) &&
                       ch->opts.on_full == full_policy::wait && std::chrono::steady_clock::now() < send_deadline;
    if (!retry) {
      if (with_ack) ch->ring.ack_release(slot);
      slot = no_ack_slot;
      return std::move(handler)(ec);
    }
    if (ec == errc::channel_full) ++ch->stats.full_waits;
    // A full ring drains at the receiver's pace: back off from 10 us to 1 ms.
    timer.expires_after(backoff);
    backoff = std::min<std::chrono::microseconds>(backoff * 2, std::chrono::milliseconds(1));
    timer.async_wait([self = shared_from_this()](error_code) { self->try_push(); });
  }

  void poll_ack() {
    auto st = ch->ring.ack_peek(slot, id);
    if (st == detail::ack_state::accepted) return finish({});
    if (st == detail::ack_state::rejected) return finish(errc::move_rejected);
    if (st != detail::ack_state::pending) return finish(errc::move_rejected);
    const bool dead = !ch->owner_alive();
    if (dead || ch->closed || std::chrono::steady_clock::now() >= ack_deadline) {
      // Void the ticket. If the receiver resolved it in the meantime, its verdict stands.
      auto final_state = ch->ring.ack_cancel(slot, id);
      if (final_state == detail::ack_state::accepted) return finish({});
      if (final_state == detail::ack_state::rejected) return finish(errc::move_rejected);
      if (ch->closed) return finish(asio::error::operation_aborted);
      return finish(dead ? errc::target_died : errc::move_timeout);
    }
    // The receiver usually answers within tens of microseconds, less than a timer's slack on
    // Linux (50 us): keep re-checking through the executor (other handlers still run between
    // checks) for up to 200 us, then sleep with a growing interval (capped at 500 us).
    if (spins++ == 0) spin_until = std::chrono::steady_clock::now() + ch->opts.ack_spin;
    if (std::chrono::steady_clock::now() < spin_until) {
      asio::post(ch->ex, [self = shared_from_this()] { self->poll_ack(); });
      return;
    }
    timer.expires_after(backoff);
    backoff = std::min<std::chrono::microseconds>(backoff * 2, ch->opts.ack_poll_max);
    timer.async_wait([self = shared_from_this()](error_code) { self->poll_ack(); });
  }
};

}  // namespace

void channel::do_send(ticket t, bool with_ack, std::chrono::milliseconds timeout,
                      asio::any_completion_handler<void(error_code)> h, bool slot_held) {
  if (!impl_) return std::move(h)(error_code(asio::error::bad_descriptor));
  auto fail = [&](error_code ec) { asio::post(impl_->ex, asio::append(std::move(h), ec)); };
  if (impl_->receiver) return fail(asio::error::operation_not_supported);
  auto op = std::make_shared<send_op>(impl_, std::move(h));
  auto fail_op = [&](error_code ec) { asio::post(impl_->ex, asio::append(std::move(op->handler), ec)); };
  t.sender_pid = detail::current_pid();
  t.target_pid = impl_->ring.identity().owner_pid;
  op->with_ack = with_ack;
  op->ack_timeout = timeout;
  op->id = t.id;
  if (with_ack && slot_held) {
    op->slot = t.ack_slot;
  } else if (with_ack) {
    auto s = impl_->ring.ack_acquire(t.id, t.sender_pid);
    if (s < 0) return fail_op(errc::no_free_ack_slot);
    op->slot = static_cast<std::uint32_t>(s);
  }
  t.ack_slot = op->slot;
  error_code ec = check_encodable(t, impl_->opts.limits);
  if (ec) {
    if (with_ack) impl_->ring.ack_release(op->slot);
    return fail_op(ec == errc::ticket_too_large ? make_error_code(errc::record_too_large) : ec);
  }
  op->send_deadline = std::chrono::steady_clock::now() + impl_->opts.send_timeout;
  // Fast path: encode straight into the ring. Only the completion is posted, so it never runs
  // inside this call.
  if (!impl_->closed && impl_->owner_alive()) {
    error_code push_ec;
    // One captured pointer keeps the std::function free of a heap allocation.
    const bool wake = impl_->ring.push(
        encoded_size(t), [tp = &t](std::span<std::byte> out) { detail::encode_checked(*tp, out); }, push_ec);
    if (!push_ec) {
      const bool bell_fails = detail::inject(detail::fault_step::doorbell, impl_->owner.pid());
      if (wake && !bell_fails) impl_->bell.ring();
      ++impl_->stats.tickets_sent;
      if (!with_ack) {
        asio::post(impl_->ex, asio::append(std::move(op->handler), error_code()));
        return;
      }
      op->ack_deadline = std::chrono::steady_clock::now() + timeout;
      op->backoff = impl_->opts.ack_poll_first;
      asio::post(impl_->ex, [op] { op->poll_ack(); });
      return;
    }
    if (push_ec != errc::channel_full && push_ec != errc::channel_corrupted) {
      if (with_ack) impl_->ring.ack_release(op->slot);
      op->slot = no_ack_slot;
      return fail_op(push_ec);
    }
  }
  // Slow path (full ring, healing, or a receiver to check): keep an encoded copy for retries.
  op->bytes.resize(encoded_size(t));
  detail::encode_checked(t, op->bytes);
  // Run the first attempt from the executor so that completion is never inline.
  asio::post(impl_->ex, [op] { op->try_push(); });
}

namespace {

struct receive_op : std::enable_shared_from_this<receive_op> {
  std::shared_ptr<channel::impl> ch;
  asio::any_completion_handler<void(error_code, ticket)> handler;
  receive_op(std::shared_ptr<channel::impl> c, asio::any_completion_handler<void(error_code, ticket)> h)
      : ch(std::move(c)), handler(std::move(h)) {}
  std::vector<std::byte> buf;

  void complete(error_code ec, ticket t) {
    ch->receiving = false;
    std::move(handler)(ec, std::move(t));
  }

  void step() {
    if (ch->closed) return complete(asio::error::operation_aborted, {});
    if (detail::region_lost(ch->region.get_address())) return complete(errc::channel_truncated, {});
    for (;;) {
      error_code ec;
      auto r = ch->ring.pop(ch->rx_buf, ec);
      if (r == detail::ring::pop_result::record) {
        ticket t = decode(ch->rx_buf, ec, ch->opts.limits);
        if (ec) {
          ++ch->stats.bad_tickets;
          return complete(ec, {});
        }
        ++ch->stats.tickets_received;
        return complete({}, std::move(t));
      }
      if (r == detail::ring::pop_result::error) return complete(ec, {});
      if (r == detail::ring::pop_result::empty) ch->collect_orphans();
      if (ch->ring.prepare_wait()) break;
    }
    // Sleep until a sender rings. A periodic wake-up also re-checks the ring for a record whose
    // sender died mid-write and for garbage, which ring no bell.
    const auto gen = ++ch->wait_gen;
    ch->wait_timer.expires_after(std::chrono::milliseconds(50));
    ch->wait_timer.async_wait([c = ch, gen](error_code ec) {
      if (!ec && c->wait_gen == gen) c->bell.cancel();
    });
    ch->bell.async_wait([self = shared_from_this(), gen](error_code) {
      if (self->ch->wait_gen == gen) self->ch->wait_timer.cancel();
      self->ch->ring.cancel_wait();
      self->step();
    });
  }
};

}  // namespace

void channel::do_receive(asio::any_completion_handler<void(error_code, ticket)> h) {
  if (!impl_) {
    // No executor to post to: a closed or default-constructed channel is a programming error.
    std::move(h)(error_code(asio::error::bad_descriptor), ticket{});
    return;
  }
  if (!impl_->receiver) {
    asio::post(impl_->ex, asio::append(std::move(h), error_code(asio::error::operation_not_supported), ticket{}));
    return;
  }
  if (impl_->receiving) {
    asio::post(impl_->ex, asio::append(std::move(h), make_error_code(errc::operation_in_progress), ticket{}));
    return;
  }
  impl_->receiving = true;
  auto op = std::make_shared<receive_op>(impl_, std::move(h));
  asio::post(impl_->ex, [op] { op->step(); });
}

bool channel::try_receive(ticket& out, error_code& ec) {
  ec.clear();
  if (!impl_ || !impl_->receiver) {
    ec = asio::error::operation_not_supported;
    return false;
  }
  if (detail::region_lost(impl_->region.get_address())) {
    ec = errc::channel_truncated;
    return true;
  }
  auto& buf = impl_->rx_buf;
  auto r = impl_->ring.pop(buf, ec);
  if (r == detail::ring::pop_result::record) {
    out = decode(buf, ec, impl_->opts.limits);
    if (ec) ++impl_->stats.bad_tickets;
    else ++impl_->stats.tickets_received;
    return true;
  }
  return r == detail::ring::pop_result::error;
}

namespace detail {

std::uint32_t acquire_ack_slot(channel& ch, const ticket_id& id) {
  auto& im = channel_access::get(ch);
  const auto s = im.ring.ack_acquire(id, current_pid());
  return s < 0 ? no_ack_slot : static_cast<std::uint32_t>(s);
}

void release_ack_slot(channel& ch, std::uint32_t slot) noexcept {
  if (slot != no_ack_slot) channel_access::get(ch).ring.ack_release(slot);
}

void transact_with_slot(channel& ch, ticket t, std::chrono::milliseconds timeout,
                        asio::any_completion_handler<void(error_code)> h) {
  channel_access::do_send(ch, std::move(t), timeout, std::move(h));
}

}  // namespace detail

bool channel::acknowledge(const ticket& t, bool accept) noexcept {
  if (!impl_ || !impl_->receiver) return false;
  if (t.ack_slot == no_ack_slot) return true;
  return impl_->ring.ack_resolve(t.ack_slot, t.id, accept);
}

}  // namespace baton
