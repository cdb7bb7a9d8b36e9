#pragma once
// The one place the Windows backend includes OS headers. Asio first: it pulls in winsock2.h in
// the order Windows requires (winsock2 before windows.h).
#include <boost/asio/detail/socket_types.hpp>
#include <windows.h>
#include <sddl.h>
#include <aclapi.h>
#include <mswsock.h>
