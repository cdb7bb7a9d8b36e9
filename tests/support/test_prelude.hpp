#pragma once
// The names nearly every test file uses, in one place: `using namespace baton::test::prelude;`
// brings asio, tcp, errc, the process and name helpers, chrono literals and tuple_aw.
#include "test_support.hpp"

#include <baton/error.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>

namespace baton::test::prelude {

namespace asio = boost::asio;
using asio::ip::tcp;
using baton::errc;
using baton::test::child;
using baton::test::name_guard;
using baton::test::unique_name;
using namespace std::chrono_literals;
/// Completion token for coroutines that look at the error code instead of catching it.
inline constexpr auto tuple_aw = asio::as_tuple(asio::use_awaitable);

}  // namespace baton::test::prelude
