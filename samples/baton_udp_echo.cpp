// baton-udp-echo: a UDP echo responder that restarts without losing a datagram. Each reply is
// "g<generation> " followed by the datagram it answers, so a client sees which generation
// answered. At `batonctl restart NAME` its UDP socket moves to the next generation with the
// datagrams queued in the kernel (docs/udp.md).
//
//   baton-udp-echo --name NAME --listen HOST:PORT [--rcvbuf BYTES]
#include "service_main.hpp"

#include <baton/restart.hpp>
#include <baton/spawn.hpp>

#include <boost/asio.hpp>

#include <array>
#include <cstdio>
#include <string>

namespace asio = boost::asio;
using asio::ip::udp;

namespace {

constexpr auto tuple_aw = asio::as_tuple(asio::use_awaitable);

// One receive at a time; the reply is sent before anything else is awaited, so a move of the
// socket (which lets a pending send finish) never leaves a datagram answered by nobody or twice.
asio::awaitable<void> respond(baton::udp_socket u, std::uint64_t generation) {
  std::array<char, 65536> in;
  std::string out;
  const std::string tag = "g" + std::to_string(generation) + " ";
  for (;;) {
    udp::endpoint from;
    auto [ec, n] = co_await u.async_receive_from(asio::buffer(in), from, tuple_aw);
    if (ec == baton::errc::socket_moved || ec == asio::error::operation_aborted || !u.is_open()) co_return;
    if (ec) continue;  // e.g. Windows' WSAECONNRESET after an ICMP port unreachable: not fatal for UDP
    out.assign(tag).append(in.data(), n);
    co_await u.async_send_to(asio::buffer(out), from, tuple_aw);
  }
}

}  // namespace

int main(int argc, char** argv) {
  baton_cli::parser cli("baton-udp-echo", "--name NAME --listen HOST:PORT [--rcvbuf BYTES]",
                        "A UDP echo responder that restarts without losing a datagram (`batonctl restart NAME`):\n"
                        "replies are \"g<generation> \" and the datagram; the socket and its queued datagrams move\n"
                        "to the next generation.");
  baton_cli::service_options(cli, "UDP address to bind (port 0: any free port, printed)");
  cli.integer("--rcvbuf", 0, 1u << 30, "SO_RCVBUF of the socket (0: the system's default)").defaults("0");
  baton_cli::service_address at;
  if (auto rc = baton_cli::parse_service_command_line(cli, argc, argv, "127.0.0.1:5353", at)) return *rc;
  const auto rcvbuf = cli.num("--rcvbuf");

  const auto opts = baton_cli::same_command_line(argc, argv);
  const auto serve = [&](asio::io_context& ioc, baton::service& svc) -> asio::awaitable<void> {
    if (svc.udp_socket_count() == 0) {  // generation 1 binds; later ones received the socket
      udp::socket s(ioc, udp::endpoint(at.address, at.port));
      if (rcvbuf > 0) s.set_option(udp::socket::receive_buffer_size(static_cast<int>(rcvbuf)));
      svc.add_udp_socket(baton::udp_socket(std::move(s)));
    }
    for (auto& u : svc.udp_sockets()) {
      baton::error_code lec;
      const auto local = u.local_endpoint(lec);
      std::printf("baton-udp-echo: service %s generation %llu pid %u listening on udp port %u\n", at.name.c_str(),
                  static_cast<unsigned long long>(svc.generation()), baton::current_process_id(), local.port());
      asio::co_spawn(ioc, respond(std::move(u), svc.generation()), asio::detached);
    }
    std::fflush(stdout);
    co_return;
  };
  return baton_cli::run_service("baton-udp-echo", at.name, opts, serve);  // 1 if the address is taken
}
