#pragma once
// "Emulated IOCP" backends for sockets that are still bound to another process's completion port
// (see DESIGN.md, the completion-port hazard). Every overlapped operation carries an event whose
// low bit is set, so no completion packet is queued to any port; the event is awaited through
// this process's reactor with asio::windows::object_handle, and the result is collected with
// WSAGetOverlappedResult.
#include "detail/stream.hpp"
#include "win/win_headers.hpp"

namespace baton::detail {

std::unique_ptr<stream_backend> make_emulated_stream(const boost::asio::any_io_executor& ex, SOCKET s,
                                                     boost::asio::ip::tcp proto);
std::unique_ptr<datagram_backend> make_emulated_datagram(const boost::asio::any_io_executor& ex, SOCKET s,
                                                         boost::asio::ip::tcp proto);
std::unique_ptr<listener_backend> make_emulated_listener(const boost::asio::any_io_executor& ex, SOCKET s,
                                                         boost::asio::ip::tcp proto, error_code& ec);

}  // namespace baton::detail
