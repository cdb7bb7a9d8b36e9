// baton::prometheus_metrics after real moves in one process: the move counters (sent, received,
// rollbacks) and the latency histogram advance by what the test did, the histogram is cumulative
// and its +Inf bucket equals its count, a service adds its own gauges and counters, and a
// balancing dispatcher its labelled ones.
#include <baton/metrics.hpp>

#include "move_helpers.hpp"
#include "test_support.hpp"

#include <baton/balance.hpp>
#include <baton/channel.hpp>
#include <baton/move.hpp>
#include <baton/restart.hpp>

#include <boost/asio.hpp>
#include <gtest/gtest.h>

#include <sstream>
#include <string>

namespace asio = boost::asio;
using namespace std::chrono_literals;
using namespace baton::test;

namespace {

// The value of the sample line `name` (exactly; e.g. `baton_move_latency_seconds_bucket{le="+Inf"}`),
// or -1 if the text has none.
double sample(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.size() > name.size() && line.compare(0, name.size(), name) == 0 && line[name.size()] == ' ')
      return std::stod(line.substr(name.size() + 1));
  return -1;
}

// The histogram's bucket values, in order (cumulative counts).
std::vector<double> buckets(const std::string& text) {
  std::vector<double> r;
  std::istringstream in(text);
  std::string line;
  const std::string prefix = "baton_move_latency_seconds_bucket{";
  while (std::getline(in, line))
    if (line.compare(0, prefix.size(), prefix) == 0) r.push_back(std::stod(line.substr(line.rfind(' ') + 1)));
  return r;
}

}  // namespace

TEST(metrics, move_counters_and_latency_advance_with_real_moves) {
  channel_pair p("metrics");
  const std::string before = baton::prometheus_metrics();
  auto [client, server] = make_loopback_pair(p.ioc);
  auto ok = move_to_self(p.ioc, p.tx, p.rx, baton::connection(std::move(server)), {});
  ASSERT_FALSE(ok.sent) << ok.sent.message();
  ASSERT_FALSE(ok.received) << ok.received.message();
  auto [client2, server2] = make_loopback_pair(p.ioc);
  baton::move_options o;
  o.timeout = 200ms;
  auto timed_out = move_to_self(p.ioc, p.tx, p.rx, baton::connection(std::move(server2)), o, false);
  EXPECT_EQ(timed_out.sent, baton::errc::move_timeout) << timed_out.sent.message();
  const std::string after = baton::prometheus_metrics();
  auto delta = [&](const char* name) { return sample(after, name) - sample(before, name); };
  EXPECT_EQ(delta("baton_moves_sent_total"), 1) << after;  // acknowledged moves only
  EXPECT_EQ(delta("baton_moves_received_total"), 1) << after;
  EXPECT_EQ(delta("baton_move_rollbacks_total"), 1) << after;
  // Only the acknowledged move has a latency.
  EXPECT_EQ(delta("baton_move_latency_seconds_count"), 1) << after;
  EXPECT_GT(delta("baton_move_latency_seconds_sum"), 0) << after;
  const auto b = buckets(after);
  ASSERT_EQ(b.size(), baton::move_latency_bounds_us.size() + 1) << after;
  for (std::size_t i = 1; i < b.size(); ++i) EXPECT_LE(b[i - 1], b[i]) << "bucket " << i << " is not cumulative";
  EXPECT_EQ(b.back(), sample(after, "baton_move_latency_seconds_count"));
  EXPECT_EQ(b.back(), sample(after, "baton_move_latency_seconds_bucket{le=\"+Inf\"}"));
  // Without a service, no service lines.
  EXPECT_EQ(sample(after, "baton_service_generation"), -1);
}

TEST(metrics, a_service_reports_its_generation_and_listeners) {
  asio::io_context ioc;
  const std::string name = unique_name("msvc");
  name_guard g(name);
  baton::restart_options ro;
  ro.os_triggers = false;
  baton::service svc(ioc.get_executor(), name, ro);
  baton::error_code started = asio::error::would_block;
  svc.async_start([&](baton::error_code ec) { started = ec; });
  for (int i = 0; i < 1000 && started == asio::error::would_block; ++i) ioc.run_for(10ms);
  ASSERT_FALSE(started) << started.message();
  svc.add_listener(baton::listener(asio::ip::tcp::acceptor(ioc, {asio::ip::address_v4::loopback(), 0})));
  const std::string text = baton::prometheus_metrics(&svc);
  EXPECT_EQ(sample(text, "baton_service_generation"), 1) << text;
  EXPECT_EQ(sample(text, "baton_service_listeners"), 1) << text;
  EXPECT_EQ(sample(text, "baton_service_connections"), 0) << text;
  EXPECT_EQ(sample(text, "baton_service_accepted_total"), 0) << text;
  EXPECT_EQ(sample(text, "baton_service_restarts_failed_total"), 0) << text;
  // The move counters come first, as without a service.
  EXPECT_GE(sample(text, "baton_moves_sent_total"), 0) << text;
}

// A dispatcher's counters carry a `service` label (escaped as the text format wants), each family
// has its HELP and TYPE once, and a dispatcher without workers has no per-worker sample. The
// per-worker samples (labels service and worker) are read from the real baton-balancer in
// balance/balancer_rebalance_test.cpp.
TEST(metrics, a_dispatcher_reports_its_counters_with_a_service_label) {
  asio::io_context ioc;
  const std::string name = unique_name("mbal");
  name_guard g(name);
  baton::balance::dispatcher_options o;
  o.name = name;
  baton::balance::dispatcher d(ioc.get_executor(), o);
  const std::string text = baton::prometheus_metrics(d, "front \"a\"\\b");
  const std::string svc = "{service=\"front \\\"a\\\"\\\\b\"}";
  EXPECT_EQ(sample(text, "baton_balance_accepted_total" + svc), 0) << text;
  EXPECT_EQ(sample(text, "baton_balance_worker_joins_total" + svc), 0) << text;
  EXPECT_EQ(sample(text, "baton_balance_rebalance_moves_total" + svc), 0) << text;
  std::size_t types = 0;
  for (auto at = text.find("# TYPE baton_balance_worker_connections gauge\n"); at != std::string::npos;
       at = text.find("# TYPE baton_balance_worker_connections gauge\n", at + 1))
    ++types;
  EXPECT_EQ(types, 1u) << text;
  EXPECT_EQ(text.find("baton_balance_worker_connections{"), std::string::npos) << text;
}
