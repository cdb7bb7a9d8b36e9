#pragma once
// What the shared test support asks of its platform half (posix/ or win/, chosen by CMake).

namespace baton::test {

/// Removes the objects of test channels whose receiver died (a crashed earlier run).
void sweep_stale_test_channels();

}  // namespace baton::test
