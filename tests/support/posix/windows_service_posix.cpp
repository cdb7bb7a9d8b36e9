// The POSIX half of windows_service.hpp: there is no Service Control Manager here.
#include "windows_service.hpp"

namespace baton::test {

std::string windows_system_program(const std::string&) { return ""; }
bool host_is_wine() { return false; }
std::string control_windows_service(const std::string&, std::uint32_t) { return "no Service Control Manager here"; }
std::uint32_t windows_service_pid(const std::string&) { return 0; }
std::size_t delete_stale_test_services() { return 0; }
void windows_service_guard::remove(std::chrono::milliseconds) noexcept {}

}  // namespace baton::test
