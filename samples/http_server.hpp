#pragma once
// The HTTP/1.1 keep-alive server behind baton-http (library baton_http_server), shared with the
// restart tests (which run it in helper processes with fault hooks). See baton_http.cpp for the
// endpoints.
#include <baton/restart.hpp>

#include <boost/asio/ip/tcp.hpp>

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

}  // namespace baton_samples
