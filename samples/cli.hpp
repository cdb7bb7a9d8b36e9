#pragma once
// The command line of the sample programs: a small declarative option parser (header-only, no
// dependencies, so that baton-load, which does not link Baton, and the Windows cross build can
// use it too). Each option has a name, a kind of value, a help line and optionally a default or
// "required". `--help` / `-h` prints the usage text to stdout (exit 0); a wrong command line
// prints one line naming the option and what is wrong, plus "(try --help)", to stderr (exit 2).
// Accepts `--opt value` and `--opt=value`; `--` ends the options.
//
//   baton_cli::parser cli("baton-echo", "--name NAME --listen HOST:PORT", "An echo server ...");
//   cli.text("--name", "NAME", "service name").required();
//   cli.integer("--port", 1, 65535, "port").defaults("8080");
//   if (auto rc = cli.parse(argc, argv)) return *rc;
//   use cli.str("--name"), cli.num("--port"), cli.has("--quiet")
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

namespace baton_cli {

/// A whole number from `lo` to `hi` (decimal digits only: no sign, no spaces, no suffix).
inline bool parse_uint(const std::string& s, std::uint64_t lo, std::uint64_t hi, std::uint64_t& out) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos) return false;
  errno = 0;
  const std::uint64_t v = std::strtoull(s.c_str(), nullptr, 10);
  if (errno == ERANGE || v < lo || v > hi) return false;
  return out = v, true;
}

class parser {
 public:
  enum class kind { text, integer, decimal, flag };
  struct option {
    std::string name, metavar, help, value, fallback;
    kind k = kind::text;
    std::uint64_t lo = 0, hi = UINT64_MAX;
    bool positive = false;  // decimal: must be > 0 (else >= 0)
    bool required = false, seen = false;
  };

  /// `synopsis`: the usage lines after the program name, separated by '\n'; a line starting with
  /// a space continues the line before.
  parser(std::string program, std::string synopsis, std::string about)
      : program_(std::move(program)), synopsis_(std::move(synopsis)), about_(std::move(about)) {}

  parser& text(const std::string& name, const std::string& metavar, const std::string& help) {
    return add(name, metavar, help, kind::text);
  }
  parser& integer(const std::string& name, std::uint64_t lo, std::uint64_t hi, const std::string& help) {
    add(name, "N", help, kind::integer);
    opts_.back().lo = lo, opts_.back().hi = hi;
    return *this;
  }
  /// A decimal number >= 0, or > 0 with `positive`.
  parser& decimal(const std::string& name, bool positive, const std::string& help) {
    add(name, "X", help, kind::decimal);
    opts_.back().positive = positive;
    return *this;
  }
  parser& flag(const std::string& name, const std::string& help) { return add(name, "", help, kind::flag); }
  /// Modifiers of the option declared last.
  parser& defaults(const std::string& v) { return opts_.back().fallback = v, *this; }
  parser& required() { return opts_.back().required = true, *this; }
  parser& metavar(const std::string& m) { return opts_.back().metavar = m, *this; }
  /// Positional arguments allowed (from `lo` to `hi` of them); none unless called.
  parser& positionals(std::size_t lo, std::size_t hi) { return pos_lo_ = lo, pos_hi_ = hi, *this; }
  /// Text printed at the end of --help (e.g. exit codes).
  parser& epilog(const std::string& e) { return epilog_ = e, *this; }

  /// Parses argv. Returns an exit status when the program should end now (0 after --help, 2 after
  /// an error, already reported), nothing when it should go on.
  std::optional<int> parse(int argc, char** argv) {
    bool options_done = false;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (options_done || a.size() < 2 || a[0] != '-') {
        pos_.push_back(a);
        continue;
      }
      if (a == "--") {
        options_done = true;
        continue;
      }
      if (a == "--help" || a == "-h") {
        std::fputs(usage().c_str(), stdout);
        return 0;
      }
      const auto eq = a.find('=');
      const std::string name = a.substr(0, eq);
      option* o = find(name);
      if (!o) return fail("unknown option " + name);
      if (o->k == kind::flag) {
        if (eq != std::string::npos) return fail(name + " takes no value");
        o->seen = true;
        continue;
      }
      std::string v;
      if (eq != std::string::npos) v = a.substr(eq + 1);
      else if (i + 1 < argc) v = argv[++i];
      else return fail(name + " needs a value (" + name + " " + o->metavar + ")");
      if (auto e = check(*o, v); !e.empty()) return fail(name + ": " + e);
      o->value = v;
      o->seen = true;
    }
    for (auto& o : opts_)
      if (o.required && !o.seen) return fail(o.name + " " + o.metavar + " is required");
    if (pos_.size() < pos_lo_) return fail("missing argument");
    if (pos_.size() > pos_hi_) return fail("unexpected argument '" + pos_[pos_hi_] + "'");
    return std::nullopt;
  }

  /// Reports a command-line error found by the program itself; returns 2, the exit status.
  int fail(const std::string& what) const {
    std::fprintf(stderr, "%s: %s (try --help)\n", program_.c_str(), what.c_str());
    return 2;
  }

  /// True if the option (or flag) was given.
  bool has(const std::string& name) const { return get(name).seen; }
  /// The value given, else the default ("" if none).
  const std::string& str(const std::string& name) const {
    const auto& o = get(name);
    return o.seen ? o.value : o.fallback;
  }
  std::uint64_t num(const std::string& name) const {
    std::uint64_t v = 0;
    parse_uint(str(name), 0, UINT64_MAX, v);
    return v;
  }
  double dec(const std::string& name) const { return std::strtod(str(name).c_str(), nullptr); }
  const std::vector<std::string>& positional() const { return pos_; }

  std::string usage() const {
    std::string u, lead = "usage: ";
    std::size_t from = 0;
    for (;;) {
      const auto nl = synopsis_.find('\n', from);
      // A line that starts with a space continues the one before, aligned under its options.
      const std::string line = synopsis_.substr(from, nl - from);
      const bool more = !line.empty() && line[0] == ' ';
      u += lead + (more ? std::string(program_.size(), ' ') : program_) + (line.empty() || more ? "" : " ") + line + "\n";
      lead = "       ";
      if (nl == std::string::npos) break;
      from = nl + 1;
    }
    u += "\n" + about_ + "\n\noptions:\n";
    auto line = [&](std::string left, const std::string& help) {
      left = "  " + left;
      left += left.size() < 28 ? std::string(28 - left.size(), ' ') : "\n" + std::string(28, ' ');
      u += left + help + "\n";
    };
    for (auto& o : opts_) {
      std::string help = o.help;
      if (o.k == kind::integer) help += " (" + range(o) + ")";
      if (o.required) help += " [required]";
      if (!o.fallback.empty()) help += " [default " + o.fallback + "]";
      line(o.k == kind::flag ? o.name : o.name + " " + o.metavar, help);
    }
    line("-h, --help", "print this help and exit");
    if (!epilog_.empty()) u += "\n" + epilog_ + "\n";
    return u;
  }

 private:
  parser& add(const std::string& name, const std::string& metavar, const std::string& help, kind k) {
    opts_.push_back(option{name, metavar, help, "", "", k});
    return *this;
  }
  option* find(const std::string& name) {
    for (auto& o : opts_)
      if (o.name == name) return &o;
    return nullptr;
  }
  const option& get(const std::string& name) const {
    if (auto* o = const_cast<parser*>(this)->find(name)) return *o;
    std::fprintf(stderr, "%s: internal error: option %s was never declared\n", program_.c_str(), name.c_str());
    std::abort();
  }
  static std::string range(const option& o) {
    return std::to_string(o.lo) + (o.hi == UINT64_MAX ? " or more" : " to " + std::to_string(o.hi));
  }
  // What is wrong with `v` as a value of `o` ("" if nothing).
  static std::string check(const option& o, const std::string& v) {
    const std::string shown = "'" + v + "'";
    if (o.k == kind::integer) {
      std::uint64_t n = 0;
      if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos) return shown + " is not a whole number (expected " + range(o) + ")";
      if (!parse_uint(v, o.lo, o.hi, n)) return shown + " is out of range (expected " + range(o) + ")";
    } else if (o.k == kind::decimal) {
      // Plain decimal notation only: no spaces, hexadecimal, "inf" or "nan" (which strtod takes).
      const bool plain = !v.empty() && v.find_first_not_of("0123456789.eE+-") == std::string::npos;
      char* end = nullptr;
      errno = 0;
      const double d = plain ? std::strtod(v.c_str(), &end) : 0;
      if (!plain || *end != '\0' || errno != 0) return shown + " is not a number";
      if (o.positive ? !(d > 0) : !(d >= 0)) return shown + (o.positive ? " must be more than 0" : " must not be negative");
    } else if (v.empty()) {
      return "the value is empty";
    }
    return {};
  }

  std::string program_, synopsis_, about_, epilog_;
  std::vector<option> opts_;
  std::vector<std::string> pos_;
  std::size_t pos_lo_ = 0, pos_hi_ = 0;
};

}  // namespace baton_cli
