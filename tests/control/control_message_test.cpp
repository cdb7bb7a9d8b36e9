// The control-message codec shared by hot restart and balancing (lib/src/detail/control_message.hpp).
#include "detail/control_message.hpp"

#include <gtest/gtest.h>

#include <boost/asio/error.hpp>

#include <cstring>
#include <string>

namespace {

using baton::errc;
using baton::error_code;
using baton::detail::control_message;

baton::ticket ticket_of(const std::string& text) {
  baton::ticket t;
  t.kind = baton::ticket_kind::control;
  t.state.resize(text.size());
  if (!text.empty()) std::memcpy(t.state.data(), text.data(), text.size());
  return t;
}

error_code parse_error(const std::string& text) {
  error_code ec;
  control_message::parse(ticket_of(text), ec);
  return ec;
}

TEST(control_message, round_trip) {
  control_message m("welcome");
  m.set("generation", std::uint64_t{41}).set("pid", std::uint64_t{4294967295u}).set("inbox", "svc.abc123");
  m.set("text", "service x;generation 2").set("big", std::uint64_t{18446744073709551615ull});
  m.set("to", std::vector<std::string>{"w-1", "w-2", "w-3"});
  const auto t = m.to_ticket(0xBA1A0000u);
  EXPECT_EQ(t.kind, baton::ticket_kind::control);
  EXPECT_EQ(t.flags, 0xBA1A0000u);
  error_code ec;
  const auto back = control_message::parse(t, ec);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_EQ(back.op(), "welcome");
  EXPECT_EQ(back.number("generation"), 41u);
  EXPECT_EQ(back.number("pid"), 4294967295u);
  EXPECT_EQ(back.number("big"), 18446744073709551615ull);
  EXPECT_EQ(back.get("inbox"), "svc.abc123");
  EXPECT_EQ(back.get("text"), "service x;generation 2");
  EXPECT_EQ(back.list("to"), (std::vector<std::string>{"w-1", "w-2", "w-3"}));
  EXPECT_EQ(back.fields(), m.fields());
}

// What an earlier build's hot restart sends is read the same (a successor may be a newer build).
TEST(control_message, reads_the_key_value_lines_of_earlier_builds) {
  error_code ec;
  const auto m = control_message::parse(ticket_of("inbox=svc.x1\nop=hello\npid=77\n"), ec);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_EQ(m.op(), "hello");
  EXPECT_EQ(m.number("pid"), 77u);
  EXPECT_EQ(m.get("inbox"), "svc.x1");
  EXPECT_EQ(control_message("hello").set("pid", std::uint64_t{77}).set("inbox", "svc.x1").text(),
            "inbox=svc.x1\nop=hello\npid=77\n");
}

TEST(control_message, values_keep_equals_signs_and_lose_line_breaks) {
  control_message m("status-reply");
  m.set("text", "a=b\nc");
  error_code ec;
  const auto back = control_message::parse(m.to_ticket(), ec);
  ASSERT_FALSE(ec);
  EXPECT_EQ(back.get("text"), "a=b c");
  EXPECT_EQ(back.number("text", 9), 9u);
}

TEST(control_message, missing_keys) {
  error_code ec;
  const auto m = control_message::parse(ticket_of("op=done\nmoved=12x\nempty=\n"), ec);
  ASSERT_FALSE(ec);
  EXPECT_FALSE(m.has("reply"));
  EXPECT_EQ(m.get("reply"), "");
  EXPECT_EQ(m.number("reply"), 0u);
  EXPECT_EQ(m.number("reply", 5), 5u);
  EXPECT_EQ(m.number("moved", 5), 5u);  // not a number
  EXPECT_TRUE(m.has("empty"));
  EXPECT_EQ(m.number("empty", 5), 5u);
  EXPECT_TRUE(m.list("reply").empty());
  EXPECT_FALSE(m.error());
  EXPECT_EQ(control_message().op(), "");
}

TEST(control_message, malformed) {
  EXPECT_EQ(parse_error(""), errc::control_message_malformed);                  // no op
  EXPECT_EQ(parse_error("pid=3\n"), errc::control_message_malformed);           // no op
  EXPECT_EQ(parse_error("op=hello\ngarbage\n"), errc::control_message_malformed);
  EXPECT_EQ(parse_error("op=hello\n=value\n"), errc::control_message_malformed);
  EXPECT_EQ(parse_error("op=hello\nop=busy\n"), errc::control_message_malformed);
  EXPECT_EQ(parse_error("op=hello\nbad key=1\n"), errc::control_message_malformed);
  EXPECT_EQ(parse_error("op=\n"), errc::control_message_malformed);
  // Balancing's words before this codec: no crash, a clear error.
  EXPECT_EQ(parse_error("index=3 channel=w-3"), errc::control_message_malformed);
  std::string junk(300, '\0');
  for (std::size_t i = 0; i < junk.size(); ++i) junk[i] = static_cast<char>(i * 37);
  EXPECT_EQ(parse_error(junk), errc::control_message_malformed);
  EXPECT_FALSE(parse_error("op=hello"));  // the last line needs no line break
  EXPECT_FALSE(parse_error("\n\nop=hello\n\n"));
  EXPECT_NE(baton::make_error_code(errc::control_message_malformed).message(), "unknown baton error");
}

TEST(control_message, error_code_round_trip) {
  const error_code codes[] = {
      baton::make_error_code(errc::restart_in_progress),
      baton::make_error_code(errc::control_message_malformed),
      error_code(ENOENT, boost::system::generic_category()),
      error_code(boost::asio::error::connection_refused),
      error_code(5, boost::system::system_category()),
      error_code(-7, boost::system::system_category()),
  };
  for (const auto& ec : codes) {
    control_message m("result");
    m.set("ok", "0").set_error(ec);
    error_code pe;
    const auto back = control_message::parse(m.to_ticket(), pe);
    ASSERT_FALSE(pe);
    EXPECT_EQ(back.error(), ec) << ec.message();
    EXPECT_EQ(back.get("reason"), ec.message());
  }
  control_message ok("result");
  ok.set_error({});
  EXPECT_FALSE(ok.has("code"));
  EXPECT_FALSE(ok.error());
  error_code pe;
  const auto unknown = control_message::parse(ticket_of("op=result\ncode=13\ncategory=elsewhere\n"), pe);
  ASSERT_FALSE(pe);
  EXPECT_EQ(unknown.error(), error_code(13, boost::system::system_category()));
  const auto garbled = control_message::parse(ticket_of("op=result\ncode=x13\ncategory=baton\n"), pe);
  EXPECT_FALSE(garbled.error());
}

}  // namespace
