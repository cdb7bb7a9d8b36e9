// Beast's compiled parts (parsers, field tables, base64/sha1, error categories), once for every
// sample and test that uses Beast: they are built with BOOST_BEAST_SEPARATE_COMPILATION (see
// samples/CMakeLists.txt), so their own files no longer compile these functions each.
#include <boost/beast/src.hpp>
