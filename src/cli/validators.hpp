// Validators for numeric options. CLI11's own let NaN through (every
// comparison with NaN is false) and print DBL_MAX with 309 digits ("Value 0 not
// in range 0.000000 to 1797..."); these refuse NaN and infinities, and their
// messages are short: CLI11 puts the option's name in front, so the user reads
// "--lr: expected a positive number, got 0".
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>

namespace vrwkv::cli::validators {

// Finite numbers.
CLI::Validator positive();                      // > 0
CLI::Validator non_negative();                  // >= 0
CLI::Validator between(double lo, double hi);   // in [lo, hi]
// Whole numbers (no fraction, no exponent), in range.
CLI::Validator integer_between(std::int64_t lo, std::int64_t hi);
CLI::Validator non_negative_integer();          // 0 or more
CLI::Validator positive_integer();              // 1 or more

}  // namespace vrwkv::cli::validators
