// Uses Baton as an installed package: creates a channel, sends one ticket through it and
// receives it back. Exits 0 on success.
#include <baton/channel.hpp>
#include <baton/spawn.hpp>
#include <baton/ticket.hpp>

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdio>
#include <random>
#include <string>


int main() {
  boost::asio::io_context ioc;
  std::random_device rd;
  const std::string name = "install-consumer-" + std::to_string(baton::current_process_id()) + "-" + std::to_string(rd() % 1000000);

  baton::error_code ec;
  auto rx = baton::channel::create(ioc.get_executor(), name, {}, ec);
  if (ec) {
    std::fprintf(stderr, "create %s: %s\n", name.c_str(), ec.message().c_str());
    return 1;
  }
  auto tx = baton::channel::open(ioc.get_executor(), name, {}, ec);
  if (ec) {
    std::fprintf(stderr, "open %s: %s\n", name.c_str(), ec.message().c_str());
    return 1;
  }

  baton::ticket t;
  t.kind = baton::ticket_kind::control;
  t.method = baton::transfer_method::none;
  t.id = baton::ticket_id::random();
  const std::string msg = "hello from an installed baton";
  for (char c : msg) t.state.push_back(static_cast<std::byte>(c));
  const baton::ticket sent = t;

  bool sent_ok = false, received_ok = false;
  tx.async_send(std::move(t), [&](baton::error_code e) {
    if (e) std::fprintf(stderr, "send: %s\n", e.message().c_str());
    sent_ok = !e;
  });
  rx.async_receive([&](baton::error_code e, baton::ticket got) {
    if (e) {
      std::fprintf(stderr, "receive: %s\n", e.message().c_str());
      return;
    }
    received_ok = got.id == sent.id && got.kind == sent.kind && got.state == sent.state;
    if (!received_ok) std::fprintf(stderr, "received a different ticket\n");
  });
  ioc.run_for(std::chrono::seconds(20));

  if (!sent_ok || !received_ok) {
    std::fprintf(stderr, "consumer: sent=%d received=%d\n", sent_ok, received_ok);
    return 1;
  }
  std::printf("consumer: ticket %s went through channel %s\n", sent.id.to_string().c_str(), name.c_str());
  return 0;
}
