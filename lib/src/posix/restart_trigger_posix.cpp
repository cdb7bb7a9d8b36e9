// Linux restart trigger: SIGHUP, delivered through Asio's signal_set (so the handler runs on the
// reactor, not in signal context).
#include "detail/platform.hpp"

#include <boost/asio/signal_set.hpp>

#include <csignal>

namespace baton::detail {

namespace {

class sighup_trigger final : public restart_trigger {
 public:
  explicit sighup_trigger(const boost::asio::any_io_executor& ex) : signals_(ex, SIGHUP) {}
  void async_wait(boost::asio::any_completion_handler<void(error_code)> h) override {
    signals_.async_wait([h = std::move(h)](error_code ec, int) mutable { std::move(h)(ec); });
  }
  void cancel() noexcept override {
    error_code ignored;
    signals_.cancel(ignored);
  }

 private:
  boost::asio::signal_set signals_;
};

}  // namespace

std::unique_ptr<restart_trigger> make_restart_trigger(const boost::asio::any_io_executor& ex, const std::string&,
                                                      error_code& ec) {
  ec.clear();
  return std::make_unique<sighup_trigger>(ex);
}

void fire_restart_trigger(const std::string&, std::uint32_t pid, error_code& ec) {
  ec.clear();
  if (::kill(static_cast<pid_t>(pid), SIGHUP) != 0) ec = {errno, boost::system::system_category()};
}

}  // namespace baton::detail
