// The control-message codec (see detail/control_message.hpp).
#include "detail/control_message.hpp"

#include <boost/system/error_code.hpp>

#include <algorithm>
#include <cassert>
#include <charconv>
#include <cstring>

namespace baton::detail {
namespace {

bool valid_key(std::string_view key) {
  return !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

}  // namespace

control_message& control_message::set(std::string_view key, std::string value) {
  assert(valid_key(key));
  std::replace(value.begin(), value.end(), '\n', ' ');
  fields_[std::string(key)] = std::move(value);
  return *this;
}

control_message& control_message::set(std::string_view key, const std::vector<std::string>& values) {
  std::string joined;
  for (const auto& v : values) {
    if (!joined.empty()) joined += ',';
    joined += v;
  }
  return set(key, std::move(joined));
}

std::string control_message::get(std::string_view key) const {
  auto it = fields_.find(key);
  return it == fields_.end() ? std::string() : it->second;
}

std::uint64_t control_message::number(std::string_view key, std::uint64_t fallback) const {
  auto it = fields_.find(key);
  if (it == fields_.end() || it->second.empty()) return fallback;
  const auto& s = it->second;
  std::uint64_t v = 0;
  auto [end, err] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (err != std::errc() || end != s.data() + s.size()) return fallback;
  return v;
}

std::vector<std::string> control_message::list(std::string_view key) const {
  std::vector<std::string> out;
  const std::string s = get(key);
  std::size_t pos = 0;
  while (pos < s.size()) {
    std::size_t end = s.find(',', pos);
    if (end == std::string::npos) end = s.size();
    if (end > pos) out.emplace_back(s.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

control_message& control_message::set_error(const error_code& ec) {
  if (!ec) return *this;
  set("code", std::to_string(ec.value()));
  set("category", ec.category() == category()                          ? "baton"
                  : ec.category() == boost::system::generic_category() ? "generic"
                                                                       : "system");
  return set("reason", ec.message());
}

error_code control_message::error() const {
  // The value is signed; read it as such (a negative code survives the trip).
  const std::string s = get("code");
  int v = 0;
  auto [end, err] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || err != std::errc() || end != s.data() + s.size() || v == 0) return {};
  const std::string cat = get("category");
  if (cat == "baton") return make_error_code(static_cast<errc>(v));
  if (cat == "generic") return {v, boost::system::generic_category()};
  return {v, boost::system::system_category()};
}

std::string control_message::text() const {
  std::string s;
  for (const auto& [k, v] : fields_) s += k + "=" + v + "\n";
  return s;
}

ticket control_message::to_ticket(std::uint32_t flags) const {
  ticket t;
  t.kind = ticket_kind::control;
  t.method = transfer_method::none;
  t.id = ticket_id::random();
  t.flags = flags;
  const std::string s = text();
  t.state.resize(s.size());
  if (!s.empty()) std::memcpy(t.state.data(), s.data(), s.size());  // data() may be null
  return t;
}

control_message control_message::parse(const ticket& t, error_code& ec) {
  return parse(std::string_view(reinterpret_cast<const char*>(t.state.data()), t.state.size()), ec);
}

control_message control_message::parse(std::string_view s, error_code& ec) {
  ec.clear();
  control_message m;
  std::size_t pos = 0;
  while (pos < s.size()) {
    auto nl = s.find('\n', pos);
    if (nl == std::string_view::npos) nl = s.size();
    const auto line = s.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.empty()) continue;
    const auto eq = line.find('=');
    const auto key = line.substr(0, eq == std::string_view::npos ? 0 : eq);
    if (!valid_key(key) || !m.fields_.emplace(std::string(key), std::string(line.substr(eq + 1))).second) {
      ec = errc::control_message_malformed;
      return {};
    }
  }
  if (m.op().empty()) {
    ec = errc::control_message_malformed;
    return {};
  }
  return m;
}

}  // namespace baton::detail
