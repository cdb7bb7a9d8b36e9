#pragma once
// Fault injection for the tests of docs/guarantees.md: each named step of a move can be made to
// kill its own process, kill the other side, stall past the move timeout, or fail, chosen by the
// environment variable BATON_FAULT="<step>:<action>[:<ms>]" (e.g. "attach:die"; ms: a stall's
// length), or "<step>:<action>:every<n>" for the step's every n-th time only ("claim:fail:every3").
// Compiled in only with BATON_FAULT_INJECTION (on in developer builds, off in installed ones);
// otherwise fault_at() is a constant `none` and the hooks vanish.
#include <cstdint>

namespace baton::detail {

enum class fault_step : std::uint8_t {
  quiesce,      // source: the connection is idle (reads cancelled, writes finished)
  detach,       // source: detached from its reactor, transferable handle made
  send_ticket,  // source: the ticket is about to enter the ring
  doorbell,     // source: the ticket is in the ring, the receiver's doorbell not rung yet
  claim,        // target: the ticket was taken from the ring, nothing imported yet
  attach,       // target: the socket is re-created and attached, not acknowledged yet
  ack,          // target: acknowledged, not yet handed to the application
  commit,       // source: the target's acknowledgement arrived, the source's handle not closed yet
};

enum class fault_action : std::uint8_t { none, die, kill_peer, stall, fail };

#ifdef BATON_FAULT_INJECTION
/// The action configured for `s` (read from the environment once per process).
fault_action fault_at(fault_step s) noexcept;
/// Carries out die / kill_peer / stall (die and kill_peer are hard kills: SIGKILL /
/// TerminateProcess). Returns true for `fail`: the caller then fails the step.
bool inject(fault_step s, std::uint32_t peer_pid) noexcept;
#else
inline fault_action fault_at(fault_step) noexcept { return fault_action::none; }
inline bool inject(fault_step, std::uint32_t) noexcept { return false; }
#endif

}  // namespace baton::detail
