// Cross-process ring throughput: a helper process (this binary, `--role=...`) pushes records; the
// parent times receiving them. Measured in the same run, with the same two processes' roles and
// record sizes:
//   BM_BatonRing_Poll   baton::channel: helper async_send()s tickets one after another through
//                       its io_context; parent busy-polls channel::try_receive().
//   BM_BatonRing_Async  the same, but the parent receives with async_receive() on an io_context
//                       (sleeps on the doorbell when the ring is empty).
//   BM_BatonRing_PollBatched  batching on both sides: the helper async_send_many()s the tickets
//                       64 at a time (batch records), the parent busy-polls try_receive().
//   BM_MinimalRing      a hand-written SPSC ring: shm_open + mmap, two atomics (head, tail),
//                       fixed-size slots, both sides busy-poll, records memcpy'd in and out.
//   BM_MinimalRingBatched  the same ring batching on both sides: the producer publishes its
//                       tail once per 64 records, the consumer takes every record it finds and
//                       publishes its head once per run. The peer of BatonRing_PollBatched.
//   BM_MinimalRingBatchedChecked  the batched minimal ring whose records each carry a CRC32C
//                       (the producer computes it, the consumer checks it and the sequence
//                       number): the least a ring must do whose writer may crash mid-record or
//                       scribble. The floor for Baton's channel, which also checks every ticket.
//   BM_BatonRingLayer   diagnostic: Baton's ring layer (detail::ring of a real channel) without
//                       the channel around it: push() of a pre-encoded ticket / pop(), busy-poll.
// The argument is the record size: the encoded ticket size for Baton (64 B = a control ticket with
// empty sections, 1 KiB = the same with a 960-byte state) and the slot size for the minimal ring.
// One iteration = the parent asks for a batch of `records_per_batch` records and receives them
// all; the iteration time (manual time) runs from the request to the last record received.
// The ratios Baton/minimal are printed to stderr at the end of the run.
#include "bench_support.hpp"

#include "channel_impl.hpp"
#include "detail/platform.hpp"

#include <baton/channel.hpp>

#include <benchmark/benchmark.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <functional>
#include <map>
#include <new>

namespace asio = boost::asio;
using bench::steady;
using bench::control;
using namespace std::chrono_literals;

namespace {

constexpr std::uint32_t records_per_batch = 1000;
constexpr std::size_t ring_bytes = 4u << 20;  // Baton's default record area; the minimal ring's too
constexpr std::uint64_t max_batches = 10'000'000;

// (iterations, items/s) of every call of each benchmark, for the summary. The calls with the most
// iterations are the measured ones (the others are Google Benchmark's iteration-count probes).
std::map<std::string, std::vector<std::pair<std::int64_t, double>>> g_rates;

double measured_rate(const std::vector<std::pair<std::int64_t, double>>& calls) {
  std::int64_t most = 0;
  for (const auto& c : calls) most = std::max(most, c.first);
  std::vector<double> r;
  for (const auto& c : calls)
    if (c.first == most) r.push_back(c.second);
  return bench::quantile(r, 0.5);  // median over repetitions
}

void remove_channel_names(const std::string& name) {
  baton::detail::remove_region(baton::detail::object_name(name, "ring", false));
  baton::detail::doorbell::remove(baton::detail::object_name(name, "bell", false));
}

struct minimal_header {
  alignas(64) std::atomic<std::uint64_t> head;  // consumer
  alignas(64) std::atomic<std::uint64_t> tail;  // producer
};
constexpr std::size_t minimal_data_offset = 4096;

void finish(benchmark::State& state, const std::string& key, double seconds) {
  const auto items = static_cast<std::int64_t>(state.iterations()) * records_per_batch;
  state.SetItemsProcessed(items);
  state.SetBytesProcessed(items * state.range(0));
  if (seconds > 0 && !state.error_occurred())
    g_rates[key].emplace_back(static_cast<std::int64_t>(state.iterations()), static_cast<double>(items) / seconds);
}

// The timed iterations of a ring benchmark: each asks the helper for a batch and receives it with
// `receive(end)` (counting the records in `got`, `bad` if one was wrong; `end` is the deadline),
// timed from the request to the last record. Returns the seconds timed in all.
template <class Receive>
double run_batches(benchmark::State& state, control* ctl, std::uint64_t& batch, std::uint32_t& got, bool& bad,
                   Receive receive) {
  double total = 0;
  for (auto _ : state) {
    got = 0;
    bad = false;
    const auto t0 = steady::now();
    ctl->go.store(++batch, std::memory_order_release);
    receive(t0 + bench::wait_deadline);
    const auto t1 = steady::now();
    if (bad || got < records_per_batch) {
      state.SkipWithError(bad ? "bad record" : "timed out / helper failed");
      break;
    }
    const double dt = std::chrono::duration<double>(t1 - t0).count();
    total += dt;
    state.SetIterationTime(dt);
  }
  return total;
}

// Parent side: busy-polls `take()` (true when it took a record) while `more()`, until the deadline
// `end` or the helper's failure (checked every 1024 rounds).
template <class More, class Take>
void poll(const control* ctl, steady::time_point end, More more, Take take) {
  for (std::uint32_t i = 0; more(); ++i) {
    if (take()) continue;
    bench::cpu_relax();
    if ((i & 1023) == 1023 && (steady::now() > end || ctl->failed.load() != 0)) break;
  }
}

// The parent's side of a benchmark of Baton's ring: a new channel, and the helper `role` sending
// records of `size` bytes to it.
struct channel_run {
  std::string name = bench::unique_name("ring");
  baton::channel ch;
  std::optional<bench::pin_guard> pin;
  bench::session s;

  // False if the run was skipped (the reason given to `state`).
  bool start(benchmark::State& state, asio::io_context& io, const char* role, std::size_t size) {
    remove_channel_names(name);
    baton::error_code ec;
    ch = baton::channel::create(io.get_executor(), name, {}, ec);
    if (ec) {
      state.SkipWithError(("channel::create: " + ec.message()).c_str());
      return false;
    }
    const int helper_cpu = bench::place(pin, false);
    return s.start(state, role, {name, std::to_string(records_per_batch), std::to_string(size)}, helper_cpu);
  }
};

void BM_BatonRing(benchmark::State& state, bool async, bool batched = false) {
  const auto size = static_cast<std::size_t>(state.range(0));
  asio::io_context io;
  channel_run run;
  if (!run.start(state, io, batched ? "baton-batch-producer" : "baton-producer", size)) return;
  auto& ch = run.ch;
  const auto& s = run.s;
  baton::error_code ec;

  std::uint64_t batch = 0;
  std::uint32_t got = 0;
  bool bad = false;
  asio::steady_timer deadline(io);
  std::function<void()> arm = [&] {
    ch.async_receive([&](baton::error_code e, baton::ticket t) {
      if (e || t.flags != got || baton::encoded_size(t) != size) bad = true;
      if (!bad && ++got < records_per_batch) return arm();
      deadline.cancel();
      io.stop();
    });
  };
  const double total = run_batches(state, s.ctl, batch, got, bad, [&](steady::time_point end) {
    if (async) {
      // As an application would: io_context::run(); the last record (or the deadline) stops it.
      arm();
      deadline.expires_at(end);
      deadline.async_wait([&](baton::error_code e) {
        if (!e) io.stop();
      });
      io.restart();
      io.run();
    } else {
      baton::ticket t;
      poll(s.ctl, end, [&] { return got < records_per_batch && !bad; }, [&] {
        if (!ch.try_receive(t, ec)) return false;
        if (ec || t.flags != got || baton::encoded_size(t) != size) bad = true;
        ++got;
        return true;
      });
    }
  });
  finish(state, (async ? "baton_async/" : batched ? "baton_poll_batched/" : "baton_poll/") + std::to_string(size), total);
  const auto st = ch.stats();
  state.counters["doorbells_per_batch"] =
      batch ? static_cast<double>(st.doorbells_rung) / static_cast<double>(batch) : 0.0;
}

void BM_BatonRing_Poll(benchmark::State& state) { BM_BatonRing(state, false); }
void BM_BatonRing_Async(benchmark::State& state) { BM_BatonRing(state, true); }
void BM_BatonRing_PollBatched(benchmark::State& state) { BM_BatonRing(state, false, true); }

// Diagnostic: Baton's ring layer alone (baton::detail::ring inside the same channel), without the
// channel's asio, ticket encode/decode and liveness checks: the helper push()es a pre-encoded
// ticket, busy-retrying on channel_full; the parent busy-polls ring::pop() and does not decode.
void BM_BatonRingLayer(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  asio::io_context io;
  channel_run run;
  if (!run.start(state, io, "ring-layer-producer", size)) return;
  auto& ring = baton::detail::channel_access::get(run.ch).ring;
  const auto& s = run.s;
  baton::error_code ec;
  std::vector<std::byte> buf;
  std::uint64_t batch = 0;
  std::uint32_t got = 0;
  bool bad = false;
  const double total = run_batches(state, s.ctl, batch, got, bad, [&](steady::time_point end) {
    poll(s.ctl, end, [&] { return got < records_per_batch && !bad; }, [&] {
      const auto r = ring.pop(buf, ec);
      if (r == baton::detail::ring::pop_result::record) {
        std::uint32_t seq = 0;
        if (buf.size() == size) std::memcpy(&seq, buf.data() + 36, 4);  // the ticket's flags field
        bad = buf.size() != size || seq != got;
        ++got;
        return true;
      }
      if (r == baton::detail::ring::pop_result::error) bad = true;
      return false;
    });
  });
  finish(state, "ring_layer/" + std::to_string(size), total);
}

// `batched`: the producer publishes its tail once per 64 records, the consumer reads the tail
// once per run of records it finds and publishes its head once per run (the peer of
// BatonRing_PollBatched: batching on both sides). `checked`: each record's last 4 bytes are the
// CRC32C of the others, which the consumer checks.
void BM_MinimalRing(benchmark::State& state, bool batched, bool checked = false) {
  const auto size = static_cast<std::size_t>(state.range(0));
  const std::uint64_t slots = ring_bytes / size;
  const auto ring_name = bench::unique_name("spsc");
  bench::shm mem;
  if (!mem.create(ring_name, minimal_data_offset + ring_bytes)) return state.SkipWithError("shm_open(ring) failed");
  auto* h = new (mem.get()) minimal_header{};
  auto* data = static_cast<std::byte*>(mem.get()) + minimal_data_offset;
  std::optional<bench::pin_guard> pin;
  const int helper_cpu = bench::place(pin, false);
  bench::session s;
  if (!s.start(state, checked ? "minimal-checked-producer" : batched ? "minimal-batch-producer" : "minimal-producer",
               {ring_name, std::to_string(records_per_batch), std::to_string(size)}, helper_cpu))
    return;

  std::vector<std::byte> buf(size);
  std::uint64_t batch = 0;
  std::uint32_t got = 0;
  bool bad = false;
  const double total = run_batches(state, s.ctl, batch, got, bad, [&](steady::time_point end) {
    std::uint64_t head = h->head.load(std::memory_order_relaxed);
    poll(s.ctl, end, [&] { return got < records_per_batch; }, [&] {
      const std::uint64_t tail = h->tail.load(std::memory_order_acquire);
      if (tail == head) return false;
      const std::uint64_t until = batched ? tail : head + 1;
      for (; head < until; ++head) {
        std::memcpy(buf.data(), data + (head & (slots - 1)) * size, size);
        if (!batched) h->head.store(head + 1, std::memory_order_release);
        std::uint32_t seq, crc = 0;
        std::memcpy(&seq, buf.data(), 4);
        if (seq != got) bad = true;
        if (checked) {
          std::memcpy(&crc, buf.data() + size - 4, 4);
          if (baton::crc32c({buf.data(), size - 4}) != crc) bad = true;
        }
        ++got;
      }
      if (batched) h->head.store(head, std::memory_order_release);
      return true;
    });
    benchmark::DoNotOptimize(buf.data());
  });
  finish(state, (checked ? "minimal_checked/" : batched ? "minimal_batched/" : "minimal/") + std::to_string(size), total);
}
void BM_MinimalRing(benchmark::State& state) { BM_MinimalRing(state, false); }
void BM_MinimalRingBatched(benchmark::State& state) { BM_MinimalRing(state, true); }
void BM_MinimalRingBatchedChecked(benchmark::State& state) { BM_MinimalRing(state, true, true); }

BENCHMARK(BM_MinimalRing)->Arg(64)->Arg(1024)->UseManualTime();
BENCHMARK(BM_MinimalRingBatched)->Arg(64)->Arg(1024)->UseManualTime();
BENCHMARK(BM_MinimalRingBatchedChecked)->Arg(64)->Arg(1024)->UseManualTime();
BENCHMARK(BM_BatonRing_Poll)->Arg(64)->Arg(1024)->UseManualTime();
BENCHMARK(BM_BatonRing_Async)->Arg(64)->Arg(1024)->UseManualTime();
BENCHMARK(BM_BatonRing_PollBatched)->Arg(64)->Arg(1024)->UseManualTime();
BENCHMARK(BM_BatonRingLayer)->Arg(64)->Arg(1024)->UseManualTime();

// Helper roles -------------------------------------------------------------------------------

// What a producer role is given (args: CTL NAME N SIZE): the control block, attached (nullptr if
// it cannot be), the channel's or ring's name, and how many records of what size make a batch.
struct producer_args {
  explicit producer_args(char** args) {
    if (!ctl_mem.open(args[0], sizeof(control))) return;
    ctl = ctl_mem.as<control>();
    name = args[1];
    n = static_cast<std::uint32_t>(std::stoul(args[2]));
    size = static_cast<std::size_t>(std::stoul(args[3]));
  }

  bench::shm ctl_mem;
  control* ctl = nullptr;
  std::string name;
  std::uint32_t n = 0;
  std::size_t size = 0;
};

// A producer into the channel NAME: its arguments, and the channel opened (`ec` says why not).
struct channel_producer : producer_args {
  explicit channel_producer(char** args) : producer_args(args) {
    if (ctl) ch = baton::channel::open(io.get_executor(), name, {}, ec);
  }

  // False (reported, and the parent told) if the channel could not be opened.
  bool opened(const char* role) {
    if (!ec) return true;
    std::fprintf(stderr, "%s: channel::open: %s\n", role, ec.message().c_str());
    ctl->failed.store(1);
    return false;
  }
  // The ticket the producer sends: a control ticket of `size` encoded bytes.
  baton::ticket ticket() const {
    baton::ticket t;
    t.kind = baton::ticket_kind::control;
    t.method = baton::transfer_method::none;
    t.id = baton::ticket_id::random();
    t.state.resize(size - baton::ticket_header_bytes, std::byte{0x5A});
    return t;
  }

  // Serves the parent's batches: each is a chain of sends begun by `start`, which moves `i` up
  // to n or sets `fail`. run() returns when the chain ends: after n records, or after the first
  // failure. It is bounded by the channel itself: a send fails with channel_owner_dead once the
  // parent is gone, and a full ring is waited on for send_timeout (5 s) at most.
  int serve(std::uint32_t& i, bool& fail, const std::function<void()>& start) {
    return bench::serve_batches(ctl, max_batches, [&] {
      i = 0;
      start();
      io.restart();
      io.run();
      if (i < n) fail = true;
      return !fail;
    });
  }

  asio::io_context io;
  baton::error_code ec;
  baton::channel ch;
};

int role_baton_producer(char** args) {
  channel_producer a(args);
  if (!a.ctl) return 2;
  if (!a.opened("baton-producer")) return 1;
  baton::ticket t = a.ticket();
  a.ctl->ready.store(1, std::memory_order_release);

  std::uint32_t i = 0;
  bool fail = false;
  std::function<void()> next = [&] {
    t.flags = i;
    a.ch.async_send(t, [&](baton::error_code e) {
      if (e) {
        std::fprintf(stderr, "baton-producer: async_send: %s\n", e.message().c_str());
        fail = true;
        return;
      }
      if (++i < a.n) next();
    });
  };
  return a.serve(i, fail, next);
}

// As baton-producer, but 64 tickets per async_send_many (batch records).
int role_baton_batch_producer(char** args) {
  channel_producer a(args);
  if (!a.ctl) return 2;
  if (!a.opened("baton-batch-producer")) return 1;
  baton::ticket t = a.ticket();
  a.ctl->ready.store(1, std::memory_order_release);
  constexpr std::uint32_t per_call = 64;
  std::uint32_t i = 0;
  bool fail = false;
  std::vector<baton::ticket> group;
  std::function<void()> next = [&] {
    group.clear();
    for (std::uint32_t k = 0; k < per_call && i + k < a.n; ++k) {
      t.flags = i + k;
      group.push_back(t);
    }
    const auto count = static_cast<std::uint32_t>(group.size());
    a.ch.async_send_many(std::move(group), [&, count](baton::error_code e, std::size_t) {
      if (e) {
        std::fprintf(stderr, "baton-batch-producer: async_send_many: %s\n", e.message().c_str());
        fail = true;
        return;
      }
      i += count;
      if (i < a.n) next();
    });
  };
  return a.serve(i, fail, next);
}

int role_ring_layer_producer(char** args) {
  channel_producer a(args);
  if (!a.ctl) return 2;
  if (a.ec) return a.ctl->failed.store(1), 1;
  auto& ring = baton::detail::channel_access::get(a.ch).ring;
  baton::ticket t;
  t.kind = baton::ticket_kind::control;
  t.method = baton::transfer_method::none;
  t.state.resize(a.size - baton::ticket_header_bytes, std::byte{0x5A});
  auto bytes = baton::encode(t);
  a.ctl->ready.store(1, std::memory_order_release);
  return bench::serve_batches(a.ctl, max_batches, [&] {
    bench::spinner room(a.ctl);
    for (std::uint32_t i = 0; i < a.n;) {
      std::memcpy(bytes.data() + 36, &i, 4);
      ring.push(bytes.size(), [&](std::span<std::byte> out) { std::memcpy(out.data(), bytes.data(), bytes.size()); },
                a.ec);
      if (!a.ec) {
        ++i;
        continue;
      }
      if (a.ec != baton::errc::channel_full || !room.spin()) return false;
    }
    return true;
  });
}

// args: CTL RING N SIZE, RING the minimal ring's shared memory (producer_args::name).
int role_minimal_producer(char** args, bool batched, bool checked = false) {
  const producer_args a(args);
  if (!a.ctl) return 2;
  const std::uint64_t slots = ring_bytes / a.size;
  bench::shm mem;
  if (!mem.open(a.name, minimal_data_offset + ring_bytes)) {
    a.ctl->failed.store(1);
    return 2;
  }
  auto* h = mem.as<minimal_header>();
  auto* data = static_cast<std::byte*>(mem.get()) + minimal_data_offset;
  std::vector<std::byte> src(a.size, std::byte{0x5A});
  a.ctl->ready.store(1, std::memory_order_release);

  return bench::serve_batches(a.ctl, max_batches, [&] {
    bench::spinner room(a.ctl);
    std::uint64_t tail = h->tail.load(std::memory_order_relaxed);
    for (std::uint32_t i = 0; i < a.n;) {
      const std::uint64_t free = slots - (tail - h->head.load(std::memory_order_acquire));
      if (free > 0) {
        const std::uint64_t run = batched ? std::min<std::uint64_t>({free, 64, a.n - i}) : 1;
        for (std::uint64_t k = 0; k < run; ++k, ++i, ++tail) {
          std::memcpy(src.data(), &i, 4);
          if (checked) {
            const std::uint32_t crc = baton::crc32c({src.data(), a.size - 4});
            std::memcpy(src.data() + a.size - 4, &crc, 4);
          }
          std::memcpy(data + (tail & (slots - 1)) * a.size, src.data(), a.size);
        }
        h->tail.store(tail, std::memory_order_release);
        continue;
      }
      if (!room.spin()) return false;
    }
    return true;
  });
}
int role_minimal_producer(char** args) { return role_minimal_producer(args, false); }
int role_minimal_batch_producer(char** args) { return role_minimal_producer(args, true); }
int role_minimal_checked_producer(char** args) { return role_minimal_producer(args, true, true); }

void print_ratios() {
  for (const char* size : {"64", "1024"}) {
    const auto m = g_rates.find(std::string("minimal/") + size);
    for (const char* kind : {"baton_poll", "baton_async", "baton_poll_batched", "ring_layer"}) {
      const auto b = g_rates.find(std::string(kind) + "/" + size);
      if (m == g_rates.end() || b == g_rates.end()) continue;
      const double mr = measured_rate(m->second), br = measured_rate(b->second);
      std::fprintf(stderr, "ratio %s/minimal, %4s B records: %.3f  (%.3g vs %.3g records/s)\n", kind, size,
                   br / mr, br, mr);
    }
    // Batching on both sides: Baton's batched channel against the minimal ring that batches too.
    const auto mb = g_rates.find(std::string("minimal_batched/") + size);
    const auto bb = g_rates.find(std::string("baton_poll_batched/") + size);
    if (mb != g_rates.end() && bb != g_rates.end()) {
      const double mr = measured_rate(mb->second), br = measured_rate(bb->second);
      std::fprintf(stderr, "ratio baton_poll_batched/minimal_batched, %4s B records: %.3f  (%.3g vs %.3g records/s)\n",
                   size, br / mr, br, mr);
    }
    // The floor: the batched minimal ring that checks a CRC32C per record, against both.
    const auto mc = g_rates.find(std::string("minimal_checked/") + size);
    if (mc != g_rates.end() && mb != g_rates.end())
      std::fprintf(stderr, "ratio minimal_checked/minimal_batched, %4s B records: %.3f\n", size,
                   measured_rate(mc->second) / measured_rate(mb->second));
    if (mc != g_rates.end() && bb != g_rates.end())
      std::fprintf(stderr, "ratio baton_poll_batched/minimal_checked, %4s B records: %.3f\n", size,
                   measured_rate(bb->second) / measured_rate(mc->second));
  }
}

// The helper roles of this binary: name, least argc, entry point.
constexpr bench::role helper_roles[] = {{"baton-producer", 6, role_baton_producer},
                                        {"baton-batch-producer", 6, role_baton_batch_producer},
                                        {"minimal-producer", 6, role_minimal_producer},
                                        {"minimal-batch-producer", 6, role_minimal_batch_producer},
                                        {"minimal-checked-producer", 6, role_minimal_checked_producer},
                                        {"ring-layer-producer", 6, role_ring_layer_producer}};

}  // namespace

int main(int argc, char** argv) { return bench::run_main(argc, argv, helper_roles, nullptr, print_ratios); }
