#pragma once
// The HTTP/1.1 keep-alive server behind baton-http (library baton_http_server), shared with the
// restart tests (which run it in helper processes with fault hooks). See baton_http.cpp for the
// endpoints.
#include <baton/restart.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <exception>

#include <functional>
#include <string>

namespace baton_samples {

using tcp = boost::asio::ip::tcp;

/// Parses "HOST:PORT" (HOST may be a bracketed IPv6 address); false if it is not one.
bool parse_endpoint(const std::string& s, tcp::endpoint& ep);

struct http_service_options {
  std::string name;
  tcp::endpoint listen;
  baton::restart_options restart;
  /// Called once the service is started (tests inject faults here).
  std::function<void(baton::service&)> on_started;
  /// Called with each listening endpoint.
  std::function<void(const tcp::endpoint&)> on_listening;
  /// Called for each connection the service hands to the server (accepted or moved in).
  std::function<void(baton::service&)> on_connection;
};

/// Runs the server until this generation retires (exit status 0) or fails to start (1).
int run_http_service(const http_service_options& o);

/// A first generation's listener: `svc` gets one on `ep` unless it has inherited or been passed
/// some. Throws on a bind failure (the program reports it and exits 1).
void listen_if_none(baton::service& svc, const tcp::endpoint& ep);

/// Stops `ioc` once this generation of `svc` retires (not when the wait is cancelled), after
/// `say(report)` has printed what the program says then (stdout is flushed).
void stop_when_retired(baton::service& svc, boost::asio::io_context& ioc,
                       std::function<void(const baton::restart_report&)> say);

/// The completion of a program's main coroutine: an exception is printed as "<program>: what",
/// makes `status` 1 and stops `ioc`.
std::function<void(std::exception_ptr)> exit_on_exception(const char* program, int& status,
                                                          boost::asio::io_context& ioc);

}  // namespace baton_samples
