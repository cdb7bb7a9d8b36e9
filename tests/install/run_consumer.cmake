# cmake -P script behind the install.consumer test. Inputs (-D): BUILD_DIR, WORK_DIR,
# CONSUMER_SOURCE_DIR, GENERATOR, MAKE_PROGRAM, CXX_COMPILER, CXX_FLAGS, BUILD_TYPE.
cmake_minimum_required(VERSION 3.22)

foreach(var BUILD_DIR WORK_DIR CONSUMER_SOURCE_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: ${var} is not set")
  endif()
endforeach()

set(prefix "${WORK_DIR}/prefix")
set(consumer_build "${WORK_DIR}/build")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

function(step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install.consumer: ${what} failed (${rc})")
  endif()
endfunction()

# 1. Install.
step("cmake --install" ${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${prefix}")
file(GLOB_RECURSE config "${prefix}/*/batonConfig.cmake")
if(NOT config)
  message(FATAL_ERROR "install.consumer: no batonConfig.cmake under ${prefix}")
endif()
# The operator's tool and the keeper are installed and run.
foreach(tool batonctl baton-run)
  execute_process(COMMAND "${prefix}/bin/${tool}" --help RESULT_VARIABLE rc OUTPUT_VARIABLE out)
  if(NOT rc EQUAL 0 OR NOT out MATCHES "usage: ${tool}")
    message(FATAL_ERROR "install.consumer: ${prefix}/bin/${tool} --help failed (${rc}): ${out}")
  endif()
endforeach()

# 2. Configure the consumer against the prefix only.
set(args -S "${CONSUMER_SOURCE_DIR}" -B "${consumer_build}" -G "${GENERATOR}"
    "-DCMAKE_PREFIX_PATH=${prefix}"
    "-DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF"
    "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
    "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}")
if(MAKE_PROGRAM)
  list(APPEND args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(BUILD_TYPE)
  list(APPEND args "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
endif()
step("configuring the consumer" ${CMAKE_COMMAND} ${args})

# The package must come from the prefix, not from the build tree.
file(STRINGS "${consumer_build}/CMakeCache.txt" baton_dir REGEX "^baton_DIR:")
string(REGEX REPLACE "^baton_DIR:[A-Z]+=" "" baton_dir "${baton_dir}")
file(REAL_PATH "${baton_dir}" baton_dir)
file(REAL_PATH "${prefix}" real_prefix)
string(FIND "${baton_dir}" "${real_prefix}/" pos)
if(NOT pos EQUAL 0)
  message(FATAL_ERROR "install.consumer: baton found at '${baton_dir}', not under ${real_prefix}")
endif()

# 3. Build and run it.
step("building the consumer" ${CMAKE_COMMAND} --build "${consumer_build}")
step("running the consumer" "${consumer_build}/baton_consumer")
message(STATUS "install.consumer: OK")
