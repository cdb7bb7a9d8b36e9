// A channel: the receiver creates the ring, doorbell and transfer endpoint under one name;
// senders open it, push tickets (waiting for room per full_policy) and poll their ack slot for
// the verdict; the receiver pops tickets, sleeping on the doorbell with a 50 ms re-check, and
// closes orphaned transfers whenever its ring is empty. The sending side is channel_send.cpp.
#include "baton/channel.hpp"

#include "channel_impl.hpp"
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

std::shared_ptr<channel::impl> channel::impl::make(const executor_type& ex, std::string_view name,
                                                   const channel_options& opts, error_code& ec) {
  ec.clear();
  if (!valid_name(name)) {
    ec = errc::invalid_name;
    return nullptr;
  }
  auto im = std::make_shared<impl>(ex);
  im->name = std::string(name);
  im->opts = opts;
  im->region_name = detail::object_name(im->name, "ring", opts.global_namespace);
  im->bell_name = detail::object_name(im->name, "bell", opts.global_namespace);
  return im;
}

namespace {

// A throwing overload: `f` is the error_code one.
template <class F>
channel or_throw(const char* what, F&& f) {
  error_code ec;
  auto c = f(ec);
  if (ec) throw system_error(ec, what);
  return c;
}

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
  if (this == &o) return *this;
  channel old(std::move(*this));  // closed on the way out
  impl_ = std::move(o.impl_);
  return *this;
}
channel::~channel() { close(); }

channel channel::create(const executor_type& ex, std::string_view name, const channel_options& opts, error_code& ec) {
  channel c;
  auto im = impl::make(ex, name, opts, ec);
  if (ec) return c;
  const std::size_t max_record = opts.limits.max_ticket_bytes;
  std::size_t data_bytes = std::bit_ceil(std::max<std::size_t>({opts.ring_bytes, 4096}));
  if (max_record > data_bytes / 2 - detail::record_header_bytes) {
    // A ticket of the maximum size must fit; grow the ring rather than refuse.
    data_bytes = std::bit_ceil(2 * (max_record + detail::record_header_bytes));
  }
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
  return or_throw("baton::channel::create", [&](error_code& ec) { return create(ex, name, opts, ec); });
}

channel channel::open(const executor_type& ex, std::string_view name, const channel_options& opts, error_code& ec) {
  channel c;
  auto im = impl::make(ex, name, opts, ec);
  if (ec) return c;
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
  return or_throw("baton::channel::open", [&](error_code& ec) { return open(ex, name, opts, ec); });
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

void channel::impl::take_record(ticket& out, error_code& ec) {
  if (!detail::is_batch(rx_buf)) {
    out = decode(rx_buf, ec, opts.limits);
    if (ec) ++stats.bad_tickets;
    else ++stats.tickets_received;
    return;
  }
  // A batch: its tickets are delivered one per receive, from batch_buf (rx_buf takes the next pop).
  detail::split_batch(rx_buf, batch_items, ec);
  if (ec) {
    ++stats.bad_tickets;
    return;
  }
  ++stats.batches_received;
  batch_buf.swap(rx_buf);
  batch_next = 0;
  next_batched(out, ec);
}

bool channel::impl::next_batched(ticket& out, error_code& ec) {
  if (batch_next >= batch_items.size()) return false;
  const auto [off, n] = batch_items[batch_next++];
  out = decode(std::span<const std::byte>(batch_buf).subspan(off, n), ec, opts.limits);
  if (ec) ++stats.bad_tickets;
  else ++stats.tickets_received;
  if (batch_next == batch_items.size()) batch_items.clear();
  return true;
}

channel::executor_type channel::get_executor() const { return impl_->ex; }
bool channel::is_open() const noexcept { return impl_ != nullptr; }
bool channel::is_receiver() const noexcept { return impl_ && impl_->receiver; }
const std::string& channel::name() const noexcept {
  static const std::string empty;
  return impl_ ? impl_->name : empty;
}
std::uint32_t channel::owner_pid() const noexcept { return impl_ ? impl_->ring.identity().owner_pid : 0; }
std::uint32_t channel::ack_slots() const noexcept { return impl_ ? impl_->ring.identity().ack_slots : 0; }

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
  impl_->ack_timer.cancel();  // transactions waiting for a verdict end now
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
      ticket t;
      if (ch->next_batched(t, ec)) return complete(ec, ec ? ticket{} : std::move(t));
      auto r = ch->ring.pop(ch->rx_buf, ec);
      if (r == detail::ring::pop_result::record) {
        ch->take_record(t, ec);
        return complete(ec, ec ? ticket{} : std::move(t));
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
  if (impl_->next_batched(out, ec)) return true;
  auto r = impl_->ring.pop(impl_->rx_buf, ec);
  if (r == detail::ring::pop_result::record) {
    impl_->take_record(out, ec);
    return true;
  }
  return r == detail::ring::pop_result::error;
}

bool channel::acknowledge(const ticket& t, bool accept) noexcept {
  if (!impl_ || !impl_->receiver) return false;
  if (t.ack_slot == no_ack_slot) return true;
  return impl_->ring.ack_resolve(t.ack_slot, t.id, accept);
}

}  // namespace baton
