#pragma once
// The receiver's transfer table (Windows) and the channel's transfer endpoint around it. See
// wsa_transfer_table.cpp.
#include "detail/platform.hpp"
#include "win/win_headers.hpp"

#include <memory>
#include <string>

namespace baton::detail {

struct xfer_entry;
struct xfer_table;

/// The Windows transfer endpoint. A receiving side holds its own table; a sending side opens
/// the receiver's on first use (Local\baton.NAME.xfer, or Global\) and keeps it.
class xfer_endpoint final : public transfer_endpoint {
 public:
  /// Receiving side: creates the table (errc::name_in_use if it exists).
  xfer_endpoint(const std::string& channel_name, std::uint32_t ack_slots, bool global_namespace, error_code& ec);
  /// Sending side.
  explicit xfer_endpoint(std::string channel_name);
  ~xfer_endpoint() override;

  /// Sender: claims the entry of ack slot `slot` before anything is duplicated; errc::channel_full
  /// while an earlier rolled-back handle at this slot is not collected yet.
  xfer_entry* claim(std::uint32_t slot, error_code& ec);
  /// Sender: gives a claimed entry up (nothing was made).
  static void unclaim(xfer_entry* e) noexcept;
  /// Sender: records what was made for ticket `t` in its claimed entry.
  static void publish(xfer_entry* e, const ticket& t, std::uint64_t handle, const WSAPROTOCOL_INFOW* info) noexcept;
  /// Receiver: the ticket has been read; its entry is no longer an orphan candidate.
  void clear(const ticket& t) noexcept;
  void collect_orphans(const transfer_wanted& wanted) noexcept override;

 private:
  std::string name_;
  std::unique_ptr<xfer_table> table_;  // a sender opens it on first use
  bool receiver_ = false;
};

}  // namespace baton::detail
