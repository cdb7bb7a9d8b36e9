#pragma once
// The wait at a safe point, shared by hot restart (service::async_safe_point) and balancing
// (session::async_wait_request): the application has answered everything it read, so the
// connection may be moved; until a move takes it, read the client's next bytes and put them back
// as unread bytes, so that the application finds them where it left off.
#include "baton/connection.hpp"

#include <array>
#include <cstddef>
#include <functional>
#include <memory>

namespace baton::detail {

class safe_point_reader {
 public:
  /// Reads until bytes arrive (they are pushed back into `c`'s unread bytes) and calls
  /// `done(success)`, or calls `done(error)` when the read fails. If a move took the connection
  /// meanwhile (set_taken), the read was cancelled by the move and `done` is not called: the
  /// move's verdict answers the waiter. `c` and the reader must live until then; `keep_alive` is
  /// held by the read.
  void async_wait(connection& c, std::shared_ptr<void> keep_alive, std::function<void(error_code)> done);

  /// A read of ours is pending: the connection sits at its safe point.
  bool waiting() const noexcept { return waiting_; }
  /// A move has taken (true) or given back (false) the connection.
  void set_taken(bool taken) noexcept { taken_ = taken; }
  bool taken() const noexcept { return taken_; }

 private:
  // Holds only the start of the client's next message: the rest stays in the socket for the
  // application's own read. Kept small because every idle connection at a safe point carries one:
  // with 4 KiB the parked state spanned two pages, and a generation taking over 15,000 idle
  // connections paid ~2 first-touch page faults for each (~10 us apiece on a paravirtualised VM).
  // 1 KiB holds a typical HTTP request line and headers.
  static constexpr std::size_t first_bytes = 1024;
  std::array<std::byte, first_bytes> buf_;
  bool waiting_ = false, taken_ = false;
};

}  // namespace baton::detail
