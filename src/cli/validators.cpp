#include "validators.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>

namespace vrwkv::cli::validators {

namespace {

// The whole text as a finite number; false for anything else ("nan", "inf", "1x", "").
bool parse_number(const std::string& text, double& out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  out = std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size() && errno != ERANGE && std::isfinite(out);
}

bool parse_integer(const std::string& text, std::int64_t& out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  out = v;
  return end == text.c_str() + text.size() && errno != ERANGE;
}

std::string str(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

CLI::Validator number(std::function<bool(double)> ok, const std::string& expected, const std::string& description) {
  return CLI::Validator(
      [ok, expected](std::string& text) -> std::string {
        double v = 0;
        if (!parse_number(text, v) || !ok(v)) return "expected " + expected + ", got '" + text + "'";
        return {};
      },
      description);
}

}  // namespace

CLI::Validator positive() {
  return number([](double v) { return v > 0; }, "a positive number", "NUMBER > 0");
}

CLI::Validator non_negative() {
  return number([](double v) { return v >= 0; }, "a number >= 0", "NUMBER >= 0");
}

CLI::Validator between(double lo, double hi) {
  const std::string range = str(lo) + ".." + str(hi);
  return number([lo, hi](double v) { return v >= lo && v <= hi; }, "a number in " + range, "NUMBER in " + range);
}

CLI::Validator integer_between(std::int64_t lo, std::int64_t hi) {
  const bool unbounded = hi == std::numeric_limits<std::int64_t>::max();
  const std::string expected = unbounded ? (lo == 0 ? "an integer >= 0" : "an integer >= " + std::to_string(lo))
                                         : "an integer in " + std::to_string(lo) + ".." + std::to_string(hi);
  const std::string description = unbounded ? "INT >= " + std::to_string(lo)
                                            : "INT in " + std::to_string(lo) + ".." + std::to_string(hi);
  return CLI::Validator(
      [lo, hi, expected](std::string& text) -> std::string {
        std::int64_t v = 0;
        if (!parse_integer(text, v) || v < lo || v > hi) return "expected " + expected + ", got '" + text + "'";
        return {};
      },
      description);
}

CLI::Validator non_negative_integer() { return integer_between(0, std::numeric_limits<std::int64_t>::max()); }

CLI::Validator positive_integer() { return integer_between(1, std::numeric_limits<std::int64_t>::max()); }

}  // namespace vrwkv::cli::validators
