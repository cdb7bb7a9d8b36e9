#pragma once
/// How a moved socket's OS handle travels from the source to the target (move_options::strategy).

namespace baton {

/// How the OS handle travels.
enum class transfer_strategy {
  automatic,         ///< the platform default (Windows: wsa_duplicate; Linux: pidfd_getfd, falling
                     ///< back to scm_rights on EPERM/ENOSYS)
  wsa_duplicate,     ///< Windows: WSADuplicateSocketW for the target's pid
  duplicate_handle,  ///< Windows: DuplicateHandle push into the target (refused for non-IFS providers)
  pidfd_getfd,       ///< Linux: the target pulls the descriptor with pidfd_getfd
  scm_rights,        ///< Linux: the descriptor is pushed over the channel's Unix socket
  inherit,           ///< both: the target is a child started with spawn_with_handles() that
                     ///< inherited the handle; the ticket names its value
};

}  // namespace baton
