// The helper binary of restart_names.simultaneous_starts_make_exactly_one_first_generation: the
// test starts this role hundreds of times, two processes at once, and a binary this small starts
// several times faster than restart_test does under AddressSanitizer (which maps and registers
// every global of a 50 MB test binary at each start).
#include <baton/restart.hpp>

#include "net_helpers.hpp"
#include "test_prelude.hpp"
#include "test_support.hpp"

#include <baton/spawn.hpp>

#include <boost/asio.hpp>

#include <functional>
#include <optional>

using namespace baton::test::prelude;
using namespace baton::test;

namespace {

// A generation that starts when `go` appears: args name out go. It writes out.fail.<pid> (the
// error) if its start fails, else out.gen<generation>.<pid>; the first generation opens a
// listener and writes its port to out.port. Every connection is answered with this process's pid.
BATON_TEST_ROLE(race_gen) {
  const std::string &name = args.at(0), &out = args.at(1), &go = args.at(2);
  const std::string pid = std::to_string(baton::current_process_id());
  asio::io_context ioc(1);
  baton::restart_options ro;
  ro.os_triggers = false;
  baton::service svc(ioc.get_executor(), name, ro);
  std::optional<tcp::acceptor> acc;
  std::function<void()> accept = [&] {
    svc.async_accept([&](baton::error_code ec, baton::connection c) {
      if (ec) return;
      auto reply = std::make_shared<std::string>(pid + "\n");
      auto conn = std::make_shared<baton::connection>(std::move(c));
      asio::async_write(*conn, asio::buffer(*reply), [conn, reply](baton::error_code, std::size_t) {});
      accept();
    });
  };
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (!file_exists(go) && std::chrono::steady_clock::now() < until) nap(1ms);
  svc.async_start([&](baton::error_code ec) {
    if (ec) {
      write_file(out + ".fail." + pid, ec.message() + "\n" + svc.last_report().detail);
      ioc.stop();
      return;
    }
    if (svc.generation() == 1) {
      acc.emplace(ioc, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
      const auto port = acc->local_endpoint().port();
      svc.add_listener(baton::listener(std::move(*acc)));
      write_file(out + ".port", std::to_string(port));
    }
    write_file(out + ".gen" + std::to_string(svc.generation()) + "." + pid, "");
    accept();
    svc.async_wait_retired([&](baton::error_code, baton::restart_report) { ioc.stop(); });
  });
  ioc.run_for(60s);
  return 0;
}

}  // namespace
