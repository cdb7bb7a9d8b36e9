#pragma once
// Blocking loopback clients for move tests, with receive timeouts so that a lost byte fails a
// test instead of hanging it.
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>


namespace baton::test {

/// Sets SO_RCVTIMEO, so that a blocking read that gets nothing fails instead of hanging.
void set_recv_timeout(boost::asio::ip::tcp::socket& s, std::chrono::milliseconds t);

inline boost::asio::ip::tcp::socket connect_loopback(boost::asio::io_context& ioc, unsigned short port) {
  boost::asio::ip::tcp::socket s(ioc);
  s.connect({boost::asio::ip::address_v4::loopback(), port});
  s.set_option(boost::asio::ip::tcp::no_delay(true));
  set_recv_timeout(s, std::chrono::seconds(30));
  return s;
}

/// Connects a fresh `s` on `ioc` to a loopback port, with no_delay and a 30 s receive timeout;
/// false if the connection was refused.
inline bool try_connect_loopback(boost::asio::io_context& ioc, boost::asio::ip::tcp::socket& s, unsigned short port) {
  boost::system::error_code ec;
  s = boost::asio::ip::tcp::socket(ioc);
  s.connect({boost::asio::ip::address_v4::loopback(), port}, ec);
  if (ec) return false;
  s.set_option(boost::asio::ip::tcp::no_delay(true), ec);
  set_recv_timeout(s, std::chrono::seconds(30));
  return true;
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

/// Raises this process's soft descriptor limit to the hard one (children inherit it): bursts of
/// thousands of connections. Returns the limit now in force (Windows: no such limit, a large number).
std::size_t raise_fd_limit();

// Windows keeps a file from being opened while another process renames over it (and a rename
// from replacing a file that is open): both sides of the hand-off below retry briefly instead
// of taking the moment for a missing file (a reader saw none, under Wine, about once in 500
// polls of a report rewritten every 20 ms) or dropping the write.
inline std::string read_file(const std::string& path) {
  for (int attempt = 0;; ++attempt) {
    std::ifstream f(path);
    if (f) return std::string(std::istreambuf_iterator<char>(f), {});
    std::error_code ec;
    if (attempt == 200 || !std::filesystem::exists(path, ec)) return {};
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}
inline void write_file(const std::string& path, const std::string& s) {
  // Write then rename over the old file, so a reader polling for it never sees half of it nor a
  // moment without it. std::filesystem::rename replaces an existing file on Windows too
  // (MoveFileExW with MOVEFILE_REPLACE_EXISTING); std::rename there fails instead, which is why
  // this used to remove the old file first and let a reader find none.
  std::ofstream(path + ".tmp") << s;
  std::error_code ec;
  for (int attempt = 0; attempt < 200; ++attempt) {
    std::filesystem::rename(path + ".tmp", path, ec);
    if (!ec) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace baton::test
