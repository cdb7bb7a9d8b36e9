#pragma once
// Running Asio work in tests with a deadline, so that a hang fails one test instead of CI.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <exception>
#include <functional>

namespace baton::test {

/// Runs `coro` (an awaitable<void>) on `ioc` until it finishes or `deadline` passes.
/// Returns false on timeout; rethrows what the coroutine threw.
/// `give_up`, checked every 20 ms, ends the wait early (e.g. when a helper process has failed).
template <class Awaitable>
bool run_with_deadline(boost::asio::io_context& ioc, Awaitable&& coro,
                       std::chrono::milliseconds deadline = std::chrono::seconds(120),
                       const std::function<bool()>& give_up = {}) {
  bool done = false;
  std::exception_ptr err;
  boost::asio::co_spawn(ioc, std::forward<Awaitable>(coro), [&](std::exception_ptr e) {
    done = true;
    err = e;
  });
  auto end = std::chrono::steady_clock::now() + deadline;
  while (!done && std::chrono::steady_clock::now() < end && !(give_up && give_up())) {
    ioc.run_for(std::chrono::milliseconds(20));
    if (ioc.stopped()) ioc.restart();
  }
  if (err) std::rethrow_exception(err);
  return done;
}

}  // namespace baton::test
