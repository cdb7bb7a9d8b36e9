#pragma once
// The control messages of hot restart and balancing: an operation and keys with string or number
// values, carried in a control ticket's state section as "key=value" lines, the operation under
// the key "op". This is the text hot restart has always sent, so a generation of this build and
// one of an earlier build still understand each other. (Balancing sent space-separated words
// before this codec; a dispatcher and its workers must be the same build, which they are when the
// dispatcher starts them.)
#include "baton/error.hpp"
#include "baton/ticket.hpp"

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace baton::detail {

class control_message {
 public:
  control_message() = default;
  explicit control_message(std::string op) { set("op", std::move(op)); }

  /// The operation ("" for a default-constructed message).
  std::string op() const { return get("op"); }

  /// Keys are [A-Za-z0-9_-]+; a line break in a value is replaced by a space (it would end the
  /// line). Setting a key again replaces its value.
  control_message& set(std::string_view key, std::string value);
  control_message& set(std::string_view key, std::uint64_t value) { return set(key, std::to_string(value)); }
  control_message& set(std::string_view key, const char* value) { return set(key, std::string(value)); }
  control_message& set(std::string_view key, const std::vector<std::string>& values);  ///< comma-separated

  bool has(std::string_view key) const { return fields_.count(std::string(key)) != 0; }
  /// The value of `key`, or "" when it is missing.
  std::string get(std::string_view key) const;
  /// The value of `key` as a decimal number, or `fallback` when it is missing or not a number.
  std::uint64_t number(std::string_view key, std::uint64_t fallback = 0) const;
  /// A comma-separated value as its parts (empty parts dropped; a missing key gives none).
  std::vector<std::string> list(std::string_view key) const;

  /// An error code as keys "code", "category" ("baton", "system" or "generic") and "reason" (its
  /// message, for a reader of another build). A success sets nothing.
  control_message& set_error(const error_code& ec);
  /// The error code set_error() wrote; success when there is none. An unknown category reads as
  /// the system category.
  error_code error() const;

  /// A control ticket carrying this message; `flags` tells one protocol's tickets from another's.
  ticket to_ticket(std::uint32_t flags = 0) const;
  std::string text() const;
  /// Parses a control ticket's state. errc::control_message_malformed for a line without '=', an
  /// empty or repeated key, a key with characters outside [A-Za-z0-9_-], or no "op".
  static control_message parse(const ticket& t, error_code& ec);
  static control_message parse(std::string_view text, error_code& ec);

  const std::map<std::string, std::string, std::less<>>& fields() const noexcept { return fields_; }

 private:
  std::map<std::string, std::string, std::less<>> fields_;
};

}  // namespace baton::detail
