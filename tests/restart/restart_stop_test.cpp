// A graceful stop of a running service (service::async_stop; SIGTERM; `batonctl stop` through
// request_stop): the request in flight is answered, idle keep-alive connections are closed after
// their last response, the process exits 0, and the service's name and its shared-memory objects
// are gone (nothing left for `remove_stale` to clean).
#include "restart_support.hpp"

#include "test_prelude.hpp"

#include <boost/asio.hpp>

using namespace baton::test::prelude;
using namespace baton::test;

namespace {

// Idle clients (one request served each) plus one request in flight; then `stop` and the checks.
void stop_and_check(running_service& svc, const std::function<baton::restart_report()>& stop) {
  std::vector<std::unique_ptr<http_conn>> idle;
  for (int i = 0; i < 5; ++i) {
    idle.push_back(std::make_unique<http_conn>());
    ASSERT_TRUE(idle.back()->connect(svc.port));
    response r;
    ASSERT_TRUE(idle.back()->get("/", r));
  }
  http_conn busy;
  ASSERT_TRUE(busy.connect(svc.port));
  ASSERT_TRUE(busy.send("GET /slow?ms=1500 HTTP/1.1\r\nHost: t\r\n\r\n"));
  nap(300ms);  // the request is running when the stop begins

  const auto rep = stop();
  // The request in flight is answered in full; then its connection is closed.
  response r;
  ASSERT_TRUE(busy.read(r)) << "the request in flight was cut";
  EXPECT_EQ(r.status, 200);
  response more;
  EXPECT_FALSE(busy.get("/", more)) << "a stopped service took a new request";
  for (auto& c : idle) EXPECT_FALSE(c->get("/", more)) << "an idle connection stayed open";
  EXPECT_EQ(svc.first.wait(30s), 0) << "the stopped generation exits 0";

  if (!rep.ec) {  // request_stop returns the report; a signal has nobody to report to
    EXPECT_TRUE(rep.stopped);
    EXPECT_EQ(rep.connections_closed, 6u) << baton::to_string(rep, svc.name);
    EXPECT_EQ(rep.connections_not_moved, 0u);
    EXPECT_NE(baton::to_string(rep, svc.name).find("6 connections closed after their last response"),
              std::string::npos)
        << baton::to_string(rep, svc.name);
  }
  // The name is free: nothing answers, nothing is left behind.
  baton::error_code ec;
  baton::request_status(svc.name, 2s, ec);
  EXPECT_EQ(ec, baton::errc::service_not_found) << ec.message();
  asio::io_context ioc;
  baton::channel::open(ioc.get_executor(), svc.name, {}, ec);
  EXPECT_EQ(ec, baton::errc::channel_not_found) << "the control channel's objects were left behind: " << ec.message();
  if (!host_is_windows())
    for (const char* suffix : {".ring", ".bell", ".sock"})
      EXPECT_FALSE(file_exists("/dev/shm/baton." + svc.name + suffix)) << suffix;
}

}  // namespace

TEST(restart_stop, batonctl_stop_answers_the_request_in_flight_closes_idle_ones_and_frees_the_name) {
  running_service svc;
  stop_and_check(svc, [&] {
    baton::error_code ec;
    auto r = baton::request_stop(svc.name, 60s, ec);
    EXPECT_FALSE(ec) << ec.message();
    return r;
  });
}

TEST(restart_stop, sigterm_is_a_graceful_stop) {
  if (host_is_windows()) GTEST_SKIP() << "Windows has no SIGTERM: batonctl stop (above) and the service STOP are the ways";
  running_service svc;
  stop_and_check(svc, [&] {
    EXPECT_TRUE(terminate_process(svc.first.pid()));
    baton::restart_report none;
    none.ec = make_error_code(baton::errc::service_not_found);
    return none;
  });
}

TEST(restart_stop, a_stop_asked_for_during_a_restart_is_refused_and_can_be_asked_again) {
  running_service svc;
  write_file(svc.mode_file, "slow-start");  // the next generation announces itself after 1.5 s
  baton::error_code rec, sec;
  baton::restart_report rr;
  std::thread t([&] { rr = svc.restart(rec); });
  nap(300ms);
  const auto sr = baton::request_stop(svc.name, 60s, sec);
  EXPECT_EQ(sec, baton::errc::restart_in_progress) << sec.message();
  EXPECT_FALSE(sr.stopped);
  t.join();
  ASSERT_FALSE(rec) << rec.message();
  EXPECT_EQ(rr.new_generation, 2u);
  // Generation 2 is in charge: now the stop goes through.
  const auto sr2 = baton::request_stop(svc.name, 60s, sec);
  ASSERT_FALSE(sec) << sec.message();
  EXPECT_TRUE(sr2.stopped);
  EXPECT_EQ(sr2.old_generation, 2u);
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (process_exists(sr2.old_pid) && std::chrono::steady_clock::now() < until) nap(10ms);
  EXPECT_FALSE(process_exists(sr2.old_pid)) << "the stopped generation exits";
  baton::request_status(svc.name, 2s, sec);
  EXPECT_EQ(sec, baton::errc::service_not_found) << sec.message();
}
