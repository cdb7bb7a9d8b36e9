// Boost.JSON's sources (it is used header-only here), compiled once for every test that reads
// JSON: batonctl's --json output. See tests/CMakeLists.txt for how this unit is compiled.
#include <boost/json/src.hpp>
