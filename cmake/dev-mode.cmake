# What a sanitizer build compiles with debug information. A sanitizer's report names file and line
# only where the code has line tables; without them it still names each function of the stack.
#   all  every target keeps the preset's flags
#   lib  the library keeps them; tests, samples and benchmarks compile with -g0
# The sanitizer presets use "lib": debug information was 12-16% of a test file's compile under ASan
# (alone: move_test 41 -> 35 s, balance_test 27-31 -> 25-26 s), and the reports that matter most
# are the library's.
# For line numbers in a test's own frames, configure with -DBATON_DEBUG_INFO=all.
set(BATON_DEBUG_INFO all CACHE STRING "Which targets keep the build's debug information: all or lib")
set_property(CACHE BATON_DEBUG_INFO PROPERTY STRINGS all lib)
if(BATON_DEBUG_INFO STREQUAL "lib")
  if(MSVC)
    message(FATAL_ERROR "BATON_DEBUG_INFO=lib is for GCC and clang builds")
  endif()
  add_compile_options(-g0)  # applies to the directories added below, not to lib/ (added before)
elseif(NOT BATON_DEBUG_INFO STREQUAL "all")
  message(FATAL_ERROR "BATON_DEBUG_INFO must be all or lib, not '${BATON_DEBUG_INFO}'")
endif()

enable_testing()
add_subdirectory(tests)
if(NOT CMAKE_CROSSCOMPILING AND BATON_BUILD_BENCH)
  add_subdirectory(bench)
endif()
add_subdirectory(samples)
