// Windows restart trigger: the named auto-reset event Local\baton.<service>.restart, created with
// an owner-only DACL (so only the same user can fire it) and awaited through the IOCP reactor.
// It is the doorbell primitive under another name.
#include "detail/platform.hpp"

namespace baton::detail {

namespace {

class event_trigger final : public restart_trigger {
 public:
  explicit event_trigger(doorbell d) : bell_(std::move(d)) {}
  void async_wait(boost::asio::any_completion_handler<void(error_code)> h) override {
    bell_.async_wait(std::move(h));
  }
  void cancel() noexcept override { bell_.cancel(); }

 private:
  doorbell bell_;
};

}  // namespace

std::unique_ptr<restart_trigger> make_restart_trigger(const boost::asio::any_io_executor& ex,
                                                      const std::string& service, error_code& ec) {
  auto d = doorbell::create(ex, object_name(service, "restart", false), ec);
  if (ec) return nullptr;
  return std::make_unique<event_trigger>(std::move(d));
}

void fire_restart_trigger(const std::string& service, std::uint32_t, error_code& ec) {
  auto d = doorbell::open(object_name(service, "restart", false), ec);
  if (!ec) d.ring();
}

}  // namespace baton::detail
