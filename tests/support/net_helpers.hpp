#pragma once
// Blocking loopback clients for move tests, with receive timeouts so that a lost byte fails a
// test instead of hanging it.
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <chrono>
#include <fstream>
#include <string>

#ifdef _WIN32
#include <winsock2.h>
#else
#include <sys/resource.h>
#include <sys/socket.h>
#endif

namespace baton::test {

inline void set_recv_timeout(boost::asio::ip::tcp::socket& s, std::chrono::milliseconds t) {
#ifdef _WIN32
  DWORD v = static_cast<DWORD>(t.count());
  ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, reinterpret_cast<const char*>(&v), sizeof v);
#else
  timeval v{static_cast<time_t>(t.count() / 1000), static_cast<suseconds_t>((t.count() % 1000) * 1000)};
  ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &v, sizeof v);
#endif
}

inline boost::asio::ip::tcp::socket connect_loopback(boost::asio::io_context& ioc, unsigned short port) {
  boost::asio::ip::tcp::socket s(ioc);
  s.connect({boost::asio::ip::address_v4::loopback(), port});
  s.set_option(boost::asio::ip::tcp::no_delay(true));
  set_recv_timeout(s, std::chrono::seconds(30));
  return s;
}

/// Writes all of `b`. A blocking call that a signal interrupts (EINTR; io_uring's task work does
/// this too) carries no data and loses none, so it is retried. Returns the bytes written.
inline std::size_t write_all(boost::asio::ip::tcp::socket& s, boost::asio::const_buffer b,
                             boost::system::error_code& ec) {
  std::size_t done = 0;
  do {
    done += boost::asio::write(s, b + done, ec);
  } while (ec == boost::asio::error::interrupted && done < b.size());
  return done;
}

/// Reads exactly `b.size()` bytes (fewer on an error), retrying interrupted calls like write_all.
inline std::size_t read_all(boost::asio::ip::tcp::socket& s, boost::asio::mutable_buffer b,
                            boost::system::error_code& ec) {
  std::size_t done = 0;
  do {
    done += boost::asio::read(s, b + done, ec);
  } while (ec == boost::asio::error::interrupted && done < b.size());
  return done;
}

/// Raises the open-file limit to its hard maximum (bursts of 1,000 connections).
inline void raise_fd_limit() {
#ifndef _WIN32
  rlimit r{};
  ::getrlimit(RLIMIT_NOFILE, &r);
  r.rlim_cur = r.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &r);
#endif
}

inline std::string read_file(const std::string& path) {
  std::ifstream f(path);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
inline void write_file(const std::string& path, const std::string& s) {
  // Write then rename, so a reader polling for the file never sees half of it.
  std::ofstream(path + ".tmp") << s;
  std::remove(path.c_str());
  std::rename((path + ".tmp").c_str(), path.c_str());
}

}  // namespace baton::test
