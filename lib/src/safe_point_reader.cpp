// The wait at a safe point (detail/safe_point_reader.hpp).
#include "detail/safe_point_reader.hpp"

namespace baton::detail {

void safe_point_reader::async_wait(connection& c, std::shared_ptr<void> keep_alive,
                                   std::function<void(error_code)> done) {
  waiting_ = true;
  c.async_read_some(boost::asio::buffer(buf_), [this, &c, keep_alive = std::move(keep_alive),
                                                done = std::move(done)](error_code ec, std::size_t n) mutable {
    waiting_ = false;
    if (taken_) return;  // cancelled by a move; its verdict answers
    if (!ec && n == 0) return async_wait(c, std::move(keep_alive), std::move(done));
    if (!ec) c.push_front_unread(buf_.data(), n);
    done(ec);
  });
}

}  // namespace baton::detail
