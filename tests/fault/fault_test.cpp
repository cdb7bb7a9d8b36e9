// The fault-injection matrix behind docs/guarantees.md: every named step of a connection move,
// crossed with {the process at that step dies, the other side dies, the step stalls past the move
// timeout, the step fails}, run with real processes and a real loopback client whose byte stream
// is checked end to end. Each cell asserts the outcome the design promises: who serves the
// connection afterwards (byte-exact), or — where its owner died — that it is closed, never
// duplicated, never hung, never half-served. The test writes the matrix as markdown; natively it
// also checks that docs/guarantees.md is exactly that output, so the document cannot drift.
#include "move_helpers.hpp"
#include "net_helpers.hpp"
#include "test_prelude.hpp"
#include "test_support.hpp"

#include <baton/move.hpp>

#include <boost/asio.hpp>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

using namespace baton::test::prelude;
using namespace baton::test;

namespace {

constexpr auto tuple_aw = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t chunk = 4096;
constexpr auto move_timeout = 1000ms;

asio::awaitable<void> echo(baton::connection c) {
  std::array<char, 8192> buf;
  for (;;) {
    auto [ec, n] = co_await c.async_read_some(asio::buffer(buf), tuple_aw);
    if (ec) co_return;
    auto [wec, wn] = co_await asio::async_write(c, asio::buffer(buf.data(), n), tuple_aw);
    if (wec) co_return;
  }
}

// Echoes the first `chunk` bytes of a connection; false if it ended first.
asio::awaitable<bool> echo_chunk(baton::connection& c) {
  std::array<char, chunk> buf;
  std::size_t echoed = 0;
  while (echoed < chunk) {
    auto [ec, n] = co_await c.async_read_some(asio::buffer(buf.data(), chunk - echoed), tuple_aw);
    if (ec) co_return false;
    co_await asio::async_write(c, asio::buffer(buf.data(), n), tuple_aw);
    echoed += n;
  }
  co_return true;
}

baton::move_options fault_move_options(const std::string& strategy) {
  baton::move_options o;
  o.timeout = move_timeout;
  o.strategy = strategy_from_name(strategy);
  return o;
}

// What a connection source starts with (args: channel port-file result-file strategy): its
// loop, a sending end on the target's channel, and a loopback acceptor whose port it published.
struct source_base {
  asio::io_context ioc;
  baton::channel tx;
  tcp::acceptor acc;
  std::string result;
  explicit source_base(const std::vector<std::string>& args)
      : tx(baton::channel::open(ioc.get_executor(), args.at(0))),
        acc(ioc, {asio::ip::address_v4::loopback(), 0}),
        result(args.at(2)) {
    write_file(args.at(1), std::to_string(acc.local_endpoint().port()));
  }
};

// Source: echoes one connection; once it has echoed `chunk` bytes it moves the connection to the
// target's channel. Writes "moved" or "kept" to its result file when the verdict is in.
BATON_TEST_ROLE(fault_source) {
  source_base b(args);
  asio::co_spawn(b.ioc, [&]() -> asio::awaitable<void> {
    auto [aec, s] = co_await b.acc.async_accept(tuple_aw);
    if (aec) co_return;
    s.set_option(tcp::no_delay(true));
    baton::connection c(std::move(s));
    if (!co_await echo_chunk(c)) co_return;
    auto [mec, back] = co_await baton::async_send(b.tx, std::move(c), fault_move_options(args.at(3)), tuple_aw);
    write_file(b.result, mec ? "kept" : "moved");
    if (mec) co_await echo(std::move(back));
  }, asio::detached);
  b.ioc.run_for(30s);
  return 0;
}

asio::awaitable<void> accept_and_echo(baton::listener& l) {
  for (;;) {
    auto [ec, s] = co_await l.async_accept(tuple_aw);
    if (ec) co_return;
    asio::co_spawn(l.get_executor(), echo(baton::connection(std::move(s))), asio::detached);
  }
}

// Target of both kinds of cell: owns the channel, echoes on a connection that arrives, accepts
// and echoes on a listener that arrives; writes "got" to its result file.
BATON_TEST_ROLE(fault_target) {
  const std::string& name = args.at(0);
  const std::string& ready = args.at(1);
  const std::string& result = args.at(2);
  asio::io_context ioc;
  auto rx = baton::channel::create(ioc.get_executor(), name);
  touch(ready);
  std::vector<std::unique_ptr<baton::listener>> held;
  std::string got_text = "got";
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    for (;;) {
      auto [ec, a] = co_await baton::async_receive(rx, tuple_aw);
      if (ec == asio::error::operation_aborted) co_return;
      if (ec || a.kind == baton::ticket_kind::control) continue;
      // "got", and for a connection the index its source gave it in its state (batch cells).
      if (a.kind == baton::ticket_kind::connection && a.conn.state().size() == 1)
        got_text += " c" + std::to_string(static_cast<int>(a.conn.state()[0]));
      write_file(result, got_text);
      if (a.kind == baton::ticket_kind::connection) {
        asio::co_spawn(ioc, echo(std::move(a.conn)), asio::detached);
      } else {
        held.push_back(std::make_unique<baton::listener>(std::move(a.lst)));
        asio::co_spawn(ioc, accept_and_echo(*held.back()), asio::detached);
      }
    }
  }, asio::detached);
  ioc.run_for(30s);
  return 0;
}

std::uint64_t g_bytes_checked = 0;

// Listener source: listens (accepting nothing yet), moves its listener to the target as soon as
// it starts, writes "moved" or "kept"; a kept listener then accepts and echoes.
BATON_TEST_ROLE(fault_lsource) {
  const std::string& target = args.at(0);
  const std::string& port_file = args.at(1);
  const std::string& result = args.at(2);
  asio::io_context ioc;
  auto tx = baton::channel::open(ioc.get_executor(), target);
  baton::listener l(tcp::acceptor(ioc, {asio::ip::address_v4::loopback(), 0}));
  baton::error_code ec;
  write_file(port_file, std::to_string(l.local_endpoint(ec).port()));
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    auto [mec, back] = co_await baton::async_send(tx, std::move(l), fault_move_options(args.at(3)), tuple_aw);
    write_file(result, mec ? "kept" : "moved");
    if (mec) {
      l = std::move(back);
      co_await accept_and_echo(l);
    }
  }, asio::detached);
  ioc.run_for(30s);
  return 0;
}

// Batch source: accepts `batch_size` connections (index = order of arrival, kept in each one's
// state), echoes `chunk` bytes on each, then moves all of them with one async_send_batch, so that
// their tickets share a batch record. Writes "m<i>" (moved) or "k<i>" (kept) per connection; a
// kept one it echoes on.
constexpr int batch_size = 3;
BATON_TEST_ROLE(fault_bsource) {
  source_base b(args);
  std::vector<baton::connection> conns;
  for (int i = 0; i < batch_size; ++i) {
    auto s = b.acc.accept();
    s.set_option(tcp::no_delay(true));
    conns.emplace_back(std::move(s), std::vector<std::byte>{}, std::vector<std::byte>{std::byte(i)});
  }
  asio::co_spawn(b.ioc, [&]() -> asio::awaitable<void> {
    for (auto& c : conns)  // the clients take turns: each sends its chunk after the previous one's echo
      if (!co_await echo_chunk(c)) co_return;
    auto [mec, r] = co_await baton::async_send_batch(b.tx, std::move(conns), fault_move_options(args.at(3)), tuple_aw);
    std::string text;
    for (int i = 0; i < batch_size; ++i) text += (r.errors[i] ? " k" : " m") + std::to_string(i);
    write_file(b.result, text);
    for (auto& c : r.connections)
      if (c.is_open()) asio::co_spawn(b.ioc, echo(std::move(c)), asio::detached);
  }, asio::detached);
  b.ioc.run_for(30s);
  return 0;
}

enum class outcome { source, target, closed, hung, corrupted, duplicated };
const char* to_string(outcome o) {
  switch (o) {
    case outcome::source: return "source";
    case outcome::target: return "target";
    case outcome::closed: return "closed";
    case outcome::hung: return "hung";
    case outcome::corrupted: return "corrupted";
    case outcome::duplicated: return "duplicated";
  }
  return "?";
}

struct cell {
  const char* step;
  bool source_side;  // the step runs in the source (else in the target)
  const char* action;
  std::set<outcome> promised;
  const char* why;
  // A known gap on Windows, pinned: what the Windows build does instead (the test fails if that
  // changes, so the gap cannot close or widen unnoticed).
  std::set<outcome> windows_gap = {};
  const char* gap = nullptr;
  const char* strategy = "automatic";  // the source's transfer strategy
};

// The promises (DESIGN.md: until the target acknowledges, the source owns the connection).
std::vector<cell> matrix() {
  using o = outcome;
  return {
      {"quiesce", true, "die", {o::closed}, "the source owned it and died"},
      {"quiesce", true, "kill_peer", {o::source}, "no ticket yet: the move fails (target died), the source keeps it"},
      {"quiesce", true, "stall", {o::target}, "a slow source only delays the move"},
      {"quiesce", true, "fail", {o::source}, "the move fails before any ticket; the source resumes"},
      {"detach", true, "die", {o::closed},
       "the source owned it and died; a handle already made for the target (Windows) is closed by the target, "
       "which finds it in its transfer table with no ticket"},
      {"detach", true, "kill_peer", {o::source}, "the ticket finds no target; rolled back"},
      {"detach", true, "stall", {o::target}, "a slow source only delays the move"},
      {"detach", true, "fail", {o::source}, "rolled back: re-attached to the source's reactor"},
      {"send_ticket", true, "die", {o::closed},
       "the source owned it and died; a handle already made for the target (Windows) is closed by the target, "
       "which finds it in its transfer table with no ticket"},
      {"send_ticket", true, "kill_peer", {o::source}, "the target died before acknowledging"},
      {"send_ticket", true, "stall", {o::target}, "a slow source only delays the move"},
      {"send_ticket", true, "fail", {o::source}, "rolled back"},
      {"doorbell", true, "die", {o::closed, o::target},
       "the source died with its ticket in the ring: the receiver finds it by its 50 ms re-check; closed "
       "where the target must pull the descriptor from the dead source (Linux), the target's where the "
       "handle was already made for it (Windows)"},
      {"doorbell", true, "kill_peer", {o::source}, "the target died before acknowledging"},
      {"doorbell", true, "stall", {o::target}, "the receiver's 50 ms re-check finds the ticket without a doorbell"},
      {"doorbell", true, "fail", {o::target}, "a doorbell that does not ring only delays the receiver (50 ms re-check)"},
      {"claim", false, "die", {o::source}, "the target died before acknowledging"},
      {"claim", false, "kill_peer", {o::closed, o::target},
       "the owner (source) died before the ack: closed, or, where the handle was already duplicated "
       "for the target (Windows), the target takes it whole"},
      {"claim", false, "stall", {o::source}, "the source times out and keeps it; the late target closes its copy"},
      {"claim", false, "fail", {o::source}, "the target refuses the ticket (nack)"},
      {"attach", false, "die", {o::source}, "the target died before acknowledging; its duplicate died with it"},
      {"attach", false, "kill_peer", {o::target}, "the target holds the socket and acknowledges: it owns it"},
      {"attach", false, "stall", {o::source}, "the source times out and keeps it; the late ack is refused"},
      {"attach", false, "fail", {o::source}, "the target refuses the ticket (nack)"},
      {"ack", false, "die", {o::closed}, "the target owned it and died"},
      {"ack", false, "kill_peer", {o::target}, "acknowledged: the target owns it"},
      {"ack", false, "stall", {o::target}, "acknowledged: the target owns it, serves it late"},
      {"ack", false, "fail", {o::source}, "no ack: the source times out and keeps it"},
      {"commit", true, "die", {o::target}, "acknowledged before the source died"},
      {"commit", true, "kill_peer", {o::closed}, "the target owned it and died"},
      {"commit", true, "stall", {o::target}, "acknowledged: the target serves it while the source is slow"},
  };
}

// The SCM_RIGHTS push (Linux's fallback when pidfd_getfd is refused): the datagram carrying the
// descriptor reaches the target before the ticket, at send_ticket. (tests/CMakeLists.txt reads
// the cells of matrix() and of this function to register one ctest test per cell.)
std::vector<cell> scm_rights_cells() {
  using o = outcome;
  return {
      {"send_ticket", true, "die", {o::closed},
       "SCM_RIGHTS: the source died after its datagram reached the target; the target closes a datagram "
       "whose sender died with no ticket in the ring",
       {}, nullptr, "scm_rights"},
      {"send_ticket", true, "kill_peer", {o::source}, "SCM_RIGHTS: the target died with the datagram; rolled back",
       {}, nullptr, "scm_rights"},
      {"send_ticket", true, "fail", {o::source},
       "SCM_RIGHTS: rolled back after the datagram was sent; the target closes the datagram its ack slot no longer "
       "wants, and the source shuts the socket down when it closes it",
       {}, nullptr, "scm_rights"},
      {"doorbell", true, "die", {o::target},
       "SCM_RIGHTS: the source died with its ticket in the ring and its descriptor in the target's queue: "
       "the target takes it whole",
       {}, nullptr, "scm_rights"},
  };
}

// Three connections moved by one async_send_batch (their three tickets share one batch record),
// the fault at the step's first occurrence. Each connection must end as promised.
// (tests/CMakeLists.txt registers these as fault_matrix.batch_<step>_<fault>.)
std::vector<cell> batch_cells() {
  using o = outcome;
  return {
      {"doorbell", true, "die", {o::closed, o::target},
       "batch: the source died right after pushing the batch record: each connection is closed where the "
       "target must pull it from the dead source (Linux), the target's where its handle was already made for "
       "the target (Windows)"},
      {"attach", false, "die", {o::source},
       "batch: the target died importing the first ticket: none was acknowledged, the source keeps all three"},
      {"ack", false, "die", {o::closed, o::source},
       "batch: the target died just after acknowledging the first connection, which died with it (closed); "
       "the others were never acknowledged and stay with the source"},
      {"claim", false, "fail", {o::source}, "batch: the target refuses every ticket: each rolls back whole"},
  };
}

// Sends `n` pattern bytes from `offset` and reads them back. true = echoed byte-exact.
enum class io_result { ok, eof, timeout, corrupted };
io_result round_trip(tcp::socket& s, std::uint64_t seed, std::size_t offset, std::size_t n) {
  std::vector<std::byte> all(offset + n), got(n);
  fill_pattern(seed, all.data(), all.size());
  baton::error_code ec;
  write_all(s, asio::buffer(all.data() + offset, n), ec);
  if (ec) return io_result::eof;
  read_all(s, asio::buffer(got), ec);
  if (ec == asio::error::would_block || ec == asio::error::timed_out || ec.value() == 10060 /*WSAETIMEDOUT*/ ||
      ec == asio::error::try_again)
    return io_result::timeout;
  if (ec) return io_result::eof;
  return std::memcmp(got.data(), all.data() + offset, n) == 0 ? io_result::ok : io_result::corrupted;
}

// One cell's processes and files. The target starts first (it owns the channel), then the
// source; only the side the cell names gets the fault in its environment.
struct cell_run {
  std::string ch;
  name_guard guard;
  bool source_side;   // the faulty side
  std::string fault;  // a stall lasts 1.5 s, past the 1 s move timeout
  std::string strategy;
  std::string port_file = temp_path("port"), ready = temp_path("ready"), src_res = temp_path("src"),
              tgt_res = temp_path("tgt");
  child target, source;

  cell_run(const cell& c, const char* tag)
      : ch(unique_name(tag)), guard(ch), source_side(c.source_side), fault(std::string(c.step) + ":" + c.action + ":1500"),
        strategy(c.strategy) {}
  ~cell_run() {
    for (const auto& f : {port_file, ready, src_res, tgt_res}) remove_file(f);
  }
  /// false: a process never became ready.
  bool start(const char* target_role, const char* source_role) {
    set_env("BATON_FAULT", source_side ? "" : fault);
    target = child::spawn(target_role, {ch, ready, tgt_res});
    set_env("BATON_FAULT", "");
    if (!wait_for_file(ready, 30s)) return false;
    set_env("BATON_FAULT", source_side ? fault : "");
    source = child::spawn(source_role, {ch, port_file, src_res, strategy});
    set_env("BATON_FAULT", "");
    return wait_for_file(port_file, 30s);
  }
  unsigned short port() const { return static_cast<unsigned short>(std::stoi(read_file(port_file))); }
  /// Who owns the object, from the client's last exchange and the processes' own reports.
  outcome verdict(io_result client, std::string& detail) const {
    const bool kept = file_exists(src_res) && read_file(src_res) == "kept";
    const bool moved = file_exists(src_res) && read_file(src_res) == "moved";
    const bool got = file_exists(tgt_res);
    detail = std::string("source result: ") + (kept ? "kept" : moved ? "moved" : "none") +
             ", target received: " + (got ? "yes" : "no");
    return decide(client, kept, got);
  }
  /// The client's last exchange and who says they own the object.
  static outcome decide(io_result client, bool kept, bool got) {
    if (client == io_result::corrupted) return outcome::corrupted;
    if (client == io_result::timeout) return outcome::hung;
    if (client == io_result::eof) return outcome::closed;
    if (kept && got) return outcome::duplicated;
    if (got) return outcome::target;
    if (kept) return outcome::source;
    return outcome::corrupted;  // served, but nobody says they own it
  }
};

outcome run_cell(const cell& c, std::string& detail) {
  cell_run run(c, "fault");
  if (!run.start("fault_target", "fault_source")) return outcome::hung;
  const std::string& fault = run.fault;
  child& source = run.source;

  asio::io_context ioc;
  tcp::socket s(ioc);
  s.connect({asio::ip::address_v4::loopback(), run.port()});
  s.set_option(tcp::no_delay(true));
  set_recv_timeout(s, 10s);
  const std::uint64_t seed = 0xFA017 + std::hash<std::string>{}(fault);
  g_bytes_checked += chunk;
  if (round_trip(s, seed, 0, chunk) != io_result::ok) {
    detail = "first chunk failed";
    return outcome::corrupted;
  }
  // The source now moves the connection, with the fault somewhere on the way.
  nap(50ms);
  auto second = round_trip(s, seed, chunk, chunk);
  auto third = second == io_result::ok ? round_trip(s, seed, 2 * chunk, chunk) : second;
  g_bytes_checked += (second == io_result::ok ? chunk : 0) + (third == io_result::ok ? chunk : 0);
  // Let the verdicts land (a stalled step takes 1.5 s; the move timeout is 1 s).
  for (int i = 0; i < 60 && !file_exists(run.src_res) && source.running(); ++i) nap(50ms);
  return run.verdict(second == io_result::corrupted ? second : third, detail);
}

// The same fault on a listener move. After the verdict a client connects: refused = closed (the
// listening socket is gone), echoed = served by whoever accepted, no answer = hung.
outcome run_listener_cell(const cell& c, std::string& detail) {
  cell_run run(c, "lfault");
  if (!run.start("fault_target", "fault_lsource")) return outcome::hung;
  const auto port = run.port();
  // Wait for the verdict (or the death of whoever was to give it); a stall takes 1.5 s.
  for (int i = 0; i < 80 && !file_exists(run.src_res) && run.source.running() && run.target.running(); ++i)
    nap(50ms);
  nap(200ms);
  asio::io_context ioc;
  tcp::socket s(ioc);
  baton::error_code ec;
  s.connect({asio::ip::address_v4::loopback(), port}, ec);
  io_result r = io_result::eof;
  if (!ec) {
    set_recv_timeout(s, 10s);
    const std::uint64_t seed = 0x115 + std::hash<std::string>{}(run.fault);
    r = round_trip(s, seed, 0, chunk);
    if (r == io_result::ok) g_bytes_checked += chunk;
  }
  // Read after the client was served: a target stalled after its ack notes the arrival late.
  return run.verdict(r, detail);
}

// The fault on a batch of connections: each client streams a chunk before the move and two
// after; each connection's outcome (from its client and the processes' per-connection reports).
std::vector<outcome> run_batch_cell(const cell& c, std::string& detail) {
  cell_run run(c, "bfault");
  if (!run.start("fault_target", "fault_bsource")) return {outcome::hung};
  asio::io_context ioc;
  std::vector<tcp::socket> clients;
  for (int i = 0; i < batch_size; ++i) {
    clients.emplace_back(ioc);
    clients.back().connect({asio::ip::address_v4::loopback(), run.port()});
    clients.back().set_option(tcp::no_delay(true));
    set_recv_timeout(clients.back(), 10s);
  }
  auto seed = [&](int i) { return 0xBA7C + static_cast<std::uint64_t>(i) + std::hash<std::string>{}(run.fault); };
  for (int i = 0; i < batch_size; ++i) {
    g_bytes_checked += chunk;
    if (round_trip(clients[static_cast<std::size_t>(i)], seed(i), 0, chunk) != io_result::ok) {
      detail = "first chunk failed on connection " + std::to_string(i);
      return {outcome::corrupted};
    }
  }
  nap(50ms);  // the source moves them now, with the fault on the way
  std::vector<io_result> last;
  for (int i = 0; i < batch_size; ++i) {
    auto& s = clients[static_cast<std::size_t>(i)];
    auto second = round_trip(s, seed(i), chunk, chunk);
    auto third = second == io_result::ok ? round_trip(s, seed(i), 2 * chunk, chunk) : second;
    g_bytes_checked += (second == io_result::ok ? chunk : 0) + (third == io_result::ok ? chunk : 0);
    last.push_back(second == io_result::corrupted ? second : third);
  }
  for (int i = 0; i < 60 && !file_exists(run.src_res) && run.source.running(); ++i) nap(50ms);
  const std::string src = file_exists(run.src_res) ? read_file(run.src_res) : "none";
  const std::string tgt = file_exists(run.tgt_res) ? read_file(run.tgt_res) : "none";
  detail = "source result:" + src + ", target received: " + tgt;
  std::vector<outcome> r;
  for (int i = 0; i < batch_size; ++i) {
    const std::string k = std::to_string(i);
    const bool kept = src.find(" k" + k) != std::string::npos, got = tgt.find(" c" + k) != std::string::npos;
    r.push_back(cell_run::decide(last[static_cast<std::size_t>(i)], kept, got));
  }
  return r;
}

std::string promised_text(const std::set<outcome>& s) {
  std::string r;
  for (auto o : s) r += (r.empty() ? "" : " or ") + std::string(to_string(o));
  return r;
}

// One cell of the matrix: a kind of move (connection or listener) with one fault. Named
// <kind>_<step>_<fault>[_scm_rights], e.g. connection_quiesce_die: `--gtest_filter=*/<name>` (or
// `ctest -R fault_matrix.<name>`) runs it alone.
struct cell_param {
  std::string kind;  // "connection", "listener" or "batch" (three connections in one async_send_batch)
  cell c;
  std::string name() const {
    return kind + "_" + c.step + "_" + c.action + (std::string(c.strategy) == "scm_rights" ? "_scm_rights" : "");
  }
};

std::vector<cell_param> all_cells() {
  std::vector<cell> cells = matrix();
  if (host_has_scm_rights())
    for (auto& c : scm_rights_cells()) cells.push_back(c);
  std::vector<cell_param> r;
  for (const char* kind : {"connection", "listener"})
    for (const auto& c : cells) r.push_back({kind, c});
  for (const auto& c : batch_cells()) r.push_back({"batch", c});
  return r;
}

// Each cell leaves its row of the table here (the test's working directory is the build's tests
// directory); fault_doc assembles docs/guarantees.md from them.
const std::string rows_dir = "fault_rows";
std::string row_path(const cell_param& p) { return rows_dir + "/" + p.name() + ".md"; }

const std::set<outcome>& promised_here(const cell& c) {
  return c.gap && host_is_windows() ? c.windows_gap : c.promised;
}

std::string table_row(const cell& c, bool kept, const std::string& observed) {
  std::ostringstream md;
  md << "| " << c.step << (std::string(c.strategy) == "scm_rights" ? " (SCM_RIGHTS)" : "") << " | "
     << (c.source_side ? "source" : "target") << " | " << c.action << " | " << promised_text(c.promised) << " | "
     << (kept ? observed : std::string("**BROKEN**")) << " | " << c.why << (c.gap ? std::string(". ") + c.gap : std::string())
     << " |\n";
  return md.str();
}

}  // namespace

class fault_matrix : public ::testing::TestWithParam<cell_param> {};

TEST_P(fault_matrix, cell) {
  const auto& p = GetParam();
  g_bytes_checked = 0;
  std::string detail;
  const std::vector<outcome> got = p.kind == "connection" ? std::vector<outcome>{run_cell(p.c, detail)}
                                   : p.kind == "listener"   ? std::vector<outcome>{run_listener_cell(p.c, detail)}
                                                            : run_batch_cell(p.c, detail);
  const auto& promised = promised_here(p.c);
  bool kept = true;
  std::string observed;  // each connection's outcome, in order (one for a single move)
  for (auto o : got) {
    kept = kept && promised.count(o) != 0;
    observed += (observed.empty() ? "" : ", ") + std::string(to_string(o));
  }
  EXPECT_TRUE(kept) << p.kind << " " << p.c.step << ":" << p.c.action << " promised " << promised_text(promised)
                    << ", got " << observed << " (" << detail << ")";
  // The document records which of the promised outcomes occur, not their order or timing.
  std::set<outcome> seen(got.begin(), got.end());
  std::string doc_observed;
  for (auto o : seen) doc_observed += (doc_observed.empty() ? "" : " and ") + std::string(to_string(o));
  std::printf("[ FAULTS   ] 1 injected faults exercised\n");
  report_bytes_checked(g_bytes_checked);
  std::filesystem::create_directories(rows_dir);
  write_file(row_path(p), table_row(p.c, kept, doc_observed));
}

INSTANTIATE_TEST_SUITE_P(steps, fault_matrix, ::testing::ValuesIn(all_cells()),
                         [](const ::testing::TestParamInfo<cell_param>& i) { return i.param.name(); });

// docs/guarantees.md, assembled from the rows the cells left (ctest runs every cell first: they
// set up its fixture). Natively it must equal the committed file, so the document cannot drift.
TEST(fault_doc, guarantees_md_is_the_table_the_cells_produced) {
  std::ostringstream md;
  md << "# What Baton guarantees when a move fails, step by step\n\n"
        "Generated by `tests/fault/fault_test.cpp` (one test per cell, `fault_matrix.<kind>_<step>_<fault>`, "
        "assembled by `fault_doc`) from its own run on Linux; the same matrix runs under Wine for the Windows build. "
        "Do not edit: the native test fails when this file differs from what it produced "
        "(`cp build/linux/tests/guarantees.md docs/guarantees.md` after a deliberate change).\n\n"
        "Each row is one move between two real processes with one fault injected "
        "(`BATON_FAULT=<step>:<fault>`, developer builds only). "
        "Faults: *die* = the process at that step is hard-killed (SIGKILL / TerminateProcess); "
        "*kill_peer* = the other side is hard-killed at that moment; *stall* = the step stalls 1.5 s, "
        "past the 1 s move timeout; *fail* = the step's call fails.\n";
  const char* const sections[][2] = {
      {"connection",
       "\n## Connections\n\n"
       "A loopback client streams pattern bytes through the connection before and after the move; "
       "*source* / *target* mean that process serves the connection afterwards, byte-exact; *closed* "
       "means the client saw the connection close (its owner died), never a duplicate, a hang or a "
       "corrupted stream.\n\n"},
      {"listener",
       "\n## Listening sockets\n\n"
       "After the verdict a client connects and streams pattern bytes: *source* / *target* mean that "
       "process accepts and serves new connections; *closed* means connection attempts are refused "
       "(the listening socket died with its owner). The reasons read the same with *it* = the "
       "listening socket.\n\n"},
      {"batch",
       "\n## Batches\n\n"
       "Three connections moved by one `async_send_batch`: their tickets share one batch record, each "
       "keeps its own acknowledgement. Each connection is checked as above; *observed* lists the "
       "outcomes its three connections had.\n\n"}};
  bool complete = true, broken = false;
  for (const auto& [kind, intro] : sections) {
    md << intro << "| step | in | fault | promised | observed | why |\n|---|---|---|---|---|---|\n";
    for (const auto& p : all_cells()) {
      if (p.kind != kind) continue;
      if (!file_exists(row_path(p))) {
        ADD_FAILURE() << "cell " << p.name() << " left no row: run the cells first (ctest -R fault_matrix)";
        complete = false;
        continue;
      }
      const std::string row = read_file(row_path(p));
      broken = broken || row.find("**BROKEN**") != std::string::npos;
      md << row;
    }
  }
  std::ofstream("guarantees.md", std::ios::binary) << md.str();
  EXPECT_FALSE(broken) << "a cell broke its promise (its own test says how)";
#ifdef BATON_DOCS_DIR
  if (complete && !broken) {
    const std::string doc = read_file(std::string(BATON_DOCS_DIR) + "/guarantees.md");
    EXPECT_TRUE(doc == md.str())
        << "docs/guarantees.md is out of date: cp build/linux/tests/guarantees.md docs/guarantees.md";
  }
#endif
}
