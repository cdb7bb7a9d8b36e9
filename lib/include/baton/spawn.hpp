#pragma once
/// Starting a child process that inherits chosen sockets, and nothing else: the basis of the
/// `inherit` transfer strategy (a hot restart in which generation N starts N+1).
///
/// Windows: CreateProcessW with bInheritHandles and an explicit PROC_THREAD_ATTRIBUTE_HANDLE_LIST,
/// so no other inheritable handle of the parent leaks into the child. Linux: vfork (the parent's
/// pages are not made copy-on-write, which a parent holding thousands of connections would pay
/// for in page faults afterwards), then in the child only system calls: signal handlers back to
/// the default, the chosen descriptors kept under their numbers and every other descriptor from 3
/// up closed (close_range, or one close each where it is missing) before exec. posix_spawn alone
/// would not do: Asio's descriptors are not close-on-exec.

#include <baton/error.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace baton {

/// A started child process. Not a handle owner: the child outlives this object.
struct spawned_process {
  std::uint32_t pid = 0;
};

/// The calling process's id (the value Baton puts in tickets and channel headers).
std::uint32_t current_process_id() noexcept;

/// Full path of the running executable, e.g. to start the next generation of oneself.
std::string current_executable_path();

/// Starts `exe` with `args`, letting it inherit exactly `handles` (socket handles / descriptors,
/// e.g. from connection::native_handle()). The values are the same in the child.
spawned_process spawn_with_handles(const std::string& exe, const std::vector<std::string>& args,
                                   const std::vector<std::uintptr_t>& handles, error_code& ec);

}  // namespace baton
