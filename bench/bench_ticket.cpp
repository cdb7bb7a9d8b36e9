// Ticket wire format: encode/decode rates. The argument is the size of each of the two variable
// sections (`unread` and `state`); every ticket also carries a 24-byte pidfd_getfd payload and the
// 64-byte header, so the encoded size is 88 + 2 * N bytes. bytes_per_second counts encoded bytes.
#include <baton/ticket.hpp>

#include <benchmark/benchmark.h>

#include <cstddef>
#include <vector>

namespace {

baton::ticket make_ticket(std::size_t section) {
  baton::ticket t;
  t.kind = baton::ticket_kind::connection;
  t.method = baton::transfer_method::pidfd_getfd;
  t.sender_pid = 1234;
  t.target_pid = 5678;
  t.id = baton::ticket_id::random();
  t.ack_slot = 7;
  t.payload.resize(24, std::byte{0x11});
  t.unread.resize(section);
  t.state.resize(section);
  for (std::size_t i = 0; i < section; ++i) {
    t.unread[i] = static_cast<std::byte>(i * 31);
    t.state[i] = static_cast<std::byte>(i * 17 + 3);
  }
  return t;
}

void set_rates(benchmark::State& state, std::size_t bytes) {
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes));
  state.counters["ticket_bytes"] = static_cast<double>(bytes);
}

// encode() into a caller-owned buffer (what channel::async_send does, minus the allocation).
void BM_Encode(benchmark::State& state) {
  const auto t = make_ticket(static_cast<std::size_t>(state.range(0)));
  std::vector<std::byte> out(baton::encoded_size(t));
  baton::error_code ec;
  for (auto _ : state) {
    baton::encode(t, out, ec);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  if (ec) state.SkipWithError(ec.message().c_str());
  set_rates(state, out.size());
}

// encode() returning a fresh vector (the throwing convenience overload).
void BM_EncodeAlloc(benchmark::State& state) {
  const auto t = make_ticket(static_cast<std::size_t>(state.range(0)));
  std::size_t n = 0;
  for (auto _ : state) {
    auto v = baton::encode(t);
    n = v.size();
    benchmark::DoNotOptimize(v.data());
  }
  set_rates(state, n);
}

// decode(): validates and copies the three sections into a new ticket's vectors.
void BM_Decode(benchmark::State& state) {
  const auto bytes = baton::encode(make_ticket(static_cast<std::size_t>(state.range(0))));
  baton::error_code ec;
  for (auto _ : state) {
    auto t = baton::decode(bytes, ec);
    benchmark::DoNotOptimize(t.state.data());
  }
  if (ec) state.SkipWithError(ec.message().c_str());
  set_rates(state, bytes.size());
}

// CRC-32C alone over the same number of bytes: the floor under encode and decode.
void BM_Crc32c(benchmark::State& state) {
  const auto bytes = baton::encode(make_ticket(static_cast<std::size_t>(state.range(0))));
  std::uint32_t c = 0;
  for (auto _ : state) {
    c = baton::crc32c(bytes);
    benchmark::DoNotOptimize(c);
  }
  set_rates(state, bytes.size());
}

#define SECTIONS Arg(64)->Arg(1024)->Arg(64 * 1024)
BENCHMARK(BM_Encode)->SECTIONS;
BENCHMARK(BM_EncodeAlloc)->SECTIONS;
BENCHMARK(BM_Decode)->SECTIONS;
BENCHMARK(BM_Crc32c)->SECTIONS;

}  // namespace

BENCHMARK_MAIN();
