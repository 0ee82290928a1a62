// Integers read from JSON a user gave us (metadata, annotation files):
// nlohmann's get<T>() converts any number, and converting a float outside
// T's range is undefined. json_integer takes integers and whole numbers
// written as floats inside [lo, hi]; anything else is an Error(Input) naming
// `what`.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "vrwkv/error.hpp"

namespace vrwkv::io {

inline std::int64_t json_integer(const nlohmann::json& v, const std::string& what, double lo = -9.0e18,
                                 double hi = 9.0e18) {
  double d = NAN;
  if (v.is_number_unsigned()) d = static_cast<double>(v.get<std::uint64_t>());
  else if (v.is_number_integer()) d = static_cast<double>(v.get<std::int64_t>());
  else if (v.is_number_float()) d = v.get<double>();
  if (std::isfinite(d) && d == std::floor(d) && d >= lo && d <= hi)
    return v.is_number_float() ? static_cast<std::int64_t>(d)
                               : v.is_number_unsigned() ? static_cast<std::int64_t>(v.get<std::uint64_t>())
                                                        : v.get<std::int64_t>();
  input_error(what, " must be a whole number in ", static_cast<long long>(lo), "..", static_cast<long long>(hi),
              ", got ", v.dump());
}

}  // namespace vrwkv::io
