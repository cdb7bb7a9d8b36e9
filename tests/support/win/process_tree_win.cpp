// The Windows half of process_tree.hpp: no /proc, no zombies, no /dev/shm, no notify socket.
// Every answer is "nothing"; the tests that rely on these check them on Linux only.
#include "process_tree.hpp"

namespace baton::test {

proc_stat read_stat(std::uint32_t) { return {}; }
std::vector<std::pair<std::uint32_t, proc_stat>> children_of(std::uint32_t) { return {}; }
std::size_t wait_no_zombie(std::uint32_t) { return 0; }
std::string status_field(std::uint32_t, const std::string&) { return {}; }
bool holds_tcp_listener(std::uint32_t) { return false; }
bool shm_has(const std::string&) { return false; }

struct notify_socket::state {};
notify_socket::notify_socket(const std::string&) : st_(std::make_unique<state>()) {}
notify_socket::~notify_socket() = default;
bool notify_socket::ok() const { return false; }
std::vector<std::pair<std::uint32_t, std::string>> notify_socket::heard() const { return {}; }
long notify_socket::count(const std::string&) const { return 0; }

}  // namespace baton::test
