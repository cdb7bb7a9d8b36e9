# Runs a sample program once and checks its exit status and what it printed: a command-line test
# (add_test in samples/CMakeLists.txt, function baton_cli_test).
#   cmake -DPROGRAM=path [-DEMULATOR=a|b|c] [-DARGS=a|b|c] -DEXIT=N [-DSTDOUT_HAS=text]
#         [-DSTDERR_HAS=text|text] [-DSTDERR_ONE_LINE=1] -P cli_test.cmake
# Lists are separated by '|' (a ';' would split the add_test argument). The texts are literal,
# not regular expressions; every one of them must appear.
string(REPLACE "|" ";" emulator "${EMULATOR}")
string(REPLACE "|" ";" args "${ARGS}")
string(REPLACE "|" ";" stderr_has "${STDERR_HAS}")
execute_process(COMMAND ${emulator} ${PROGRAM} ${args}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
# Under Wine, about one start in a few thousand dies in Wine's own start-up: status 1 within
# milliseconds and not a byte of output (WINEDEBUG=-all hides Wine's err: line), before any of the
# program ran (full run 36: baton-http --name .x, 10 ms). Every program here prints something
# before it exits 1, so that case is Wine's; it is started once more, and said so on stderr. A
# program that really exits 1 without a word still fails, the second time.
if(emulator AND rc STREQUAL "1" AND out STREQUAL "" AND err STREQUAL "" AND NOT EXIT STREQUAL "1")
  message(NOTICE "[ wine ] ${PROGRAM} exited 1 without a word: a Wine start-up failure; started once more")
  execute_process(COMMAND ${emulator} ${PROGRAM} ${args}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
endif()
string(REPLACE "\r" "" out "${out}")
string(REPLACE "\r" "" err "${err}")
list(JOIN args " " shown)
set(ran "ran: ${PROGRAM} ${shown}\nexit status: ${rc}\nstdout:\n${out}\nstderr:\n${err}")
if(NOT rc STREQUAL "${EXIT}")
  message(FATAL_ERROR "expected exit status ${EXIT}\n${ran}")
endif()
if(DEFINED STDOUT_HAS)
  string(FIND "${out}" "${STDOUT_HAS}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "stdout lacks '${STDOUT_HAS}'\n${ran}")
  endif()
endif()
foreach(text IN LISTS stderr_has)
  string(FIND "${err}" "${text}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "stderr lacks '${text}'\n${ran}")
  endif()
endforeach()
if(STDERR_ONE_LINE)
  string(REGEX MATCHALL "\n" lines "${err}")
  list(LENGTH lines n)
  if(NOT n EQUAL 1)
    message(FATAL_ERROR "stderr should be one line, it has ${n} line ends\n${ran}")
  endif()
endif()
message(STATUS "${ran}")
