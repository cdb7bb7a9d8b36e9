// The error category (lib/src/error.cpp): every errc has its own message that says what to do,
// codes round-trip through error_code and compare with the enum, and an unknown value is named
// as such instead of borrowing another code's text.
#include <baton/error.hpp>

#include <gtest/gtest.h>

#include <set>
#include <string>

namespace {

constexpr int first = static_cast<int>(baton::errc::invalid_name);
constexpr int last = static_cast<int>(baton::errc::ticket_bad_datagrams);

TEST(error, every_code_has_its_own_message) {
  std::set<std::string> seen;
  for (int v = first; v <= last; ++v) {
    const auto ec = baton::make_error_code(static_cast<baton::errc>(v));
    const auto text = ec.message();
    EXPECT_GE(text.size(), 20u) << "errc " << v << " has no useful message";
    EXPECT_NE(text, "unknown baton error") << "errc " << v << " has no entry in the message table";
    EXPECT_TRUE(seen.insert(text).second) << "errc " << v << " repeats another code's message: " << text;
  }
}

TEST(error, codes_compare_with_the_enum_and_keep_their_category) {
  const baton::error_code ec = baton::errc::channel_full;
  EXPECT_EQ(ec, baton::errc::channel_full);
  EXPECT_NE(ec, baton::errc::channel_corrupted);
  EXPECT_EQ(&ec.category(), &baton::category());
  EXPECT_STREQ(ec.category().name(), "baton");
  EXPECT_TRUE(ec.failed());
  // A system error with the same value is another error.
  const baton::error_code sys(static_cast<int>(baton::errc::channel_full), boost::system::system_category());
  EXPECT_NE(sys, ec);
}

TEST(error, values_outside_the_enum_are_named_unknown) {
  EXPECT_EQ(baton::error_code(last + 1, baton::category()).message(), "unknown baton error");
  EXPECT_EQ(baton::error_code(-7, baton::category()).message(), "unknown baton error");
}

}  // namespace
