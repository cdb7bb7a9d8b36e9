# Boost is used header-only (Asio, Interprocess, Beast, Process).
# For the mingw cross build /usr/include must never reach the compiler (glibc headers clash), so
# we point FindBoost at a directory holding only a symlink to the Boost headers.
if(CMAKE_CROSSCOMPILING AND WIN32)
  set(_baton_boost_dir "${CMAKE_BINARY_DIR}/boost-headers")
  if(NOT EXISTS "${_baton_boost_dir}/boost")
    file(MAKE_DIRECTORY "${_baton_boost_dir}")
    file(CREATE_LINK /usr/include/boost "${_baton_boost_dir}/boost" SYMBOLIC)
  endif()
  set(Boost_INCLUDE_DIR "${_baton_boost_dir}" CACHE PATH "" FORCE)
  set(Boost_NO_BOOST_CMAKE ON)
  set(Boost_NO_SYSTEM_PATHS ON)
endif()
find_package(Boost 1.81 REQUIRED)
find_package(Threads REQUIRED)
