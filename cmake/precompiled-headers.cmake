# Precompiled headers: Asio, Beast and GoogleTest cost ~4 s of parsing per translation unit,
# more than many of our files take to compile, so each family of targets parses them once.
#   baton_pch_lib      the library's own units (Asio's core)
#   baton_pch_tests    every test executable (reuses baton_test_support's header)
#   baton_pch_samples  samples (reuses one small object library's header)
# Off with -DBATON_PCH=OFF, e.g. to check that every file includes what it uses.
option(BATON_PCH "Use precompiled headers for Asio/Beast/GoogleTest" ON)

set(BATON_PCH_ASIO
  <boost/asio/any_completion_handler.hpp>
  <boost/asio/any_io_executor.hpp>
  <boost/asio/append.hpp>
  <boost/asio/as_tuple.hpp>
  <boost/asio/io_context.hpp>
  <boost/asio/ip/tcp.hpp>
  <boost/asio/post.hpp>
  <boost/asio/steady_timer.hpp>
  <chrono> <functional> <memory> <string> <vector>)

# Uses (or, with REUSE_FROM, shares) the precompiled header of `family` for `target`.
function(baton_precompile target family)
  if(NOT BATON_PCH)
    return()
  endif()
  if(family STREQUAL "lib")
    target_precompile_headers(${target} PRIVATE ${BATON_PCH_ASIO})
  elseif(family STREQUAL "tests-owner")
    target_precompile_headers(${target} PRIVATE <boost/asio.hpp> <gtest/gtest.h> ${BATON_PCH_ASIO})
  elseif(family STREQUAL "samples-owner")
    target_precompile_headers(${target} PRIVATE <boost/asio.hpp> <boost/beast/core.hpp>
                              <boost/beast/http.hpp> ${BATON_PCH_ASIO})
  else()
    target_precompile_headers(${target} REUSE_FROM ${family})
  endif()
endfunction()
