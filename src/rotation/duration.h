// Durations given by operators on the command line ("--max-replication-lag 30s").
//
// Kept apart from the pacer so that the parser can be fuzzed (tests/fuzz) without linking the
// rotation machinery. Pure and thread-safe.
#pragma once

#include <chrono>
#include <string>

namespace rekey::rotation {

// The longest duration ParseDuration accepts: far beyond any sensible flag value, and far below
// where converting to milliseconds could overflow.
constexpr std::chrono::hours kMaxParsedDuration{24 * 366 * 100};

// Parses "250ms", "10s", "2min", "1h" or a bare number of seconds ("1.5"). Returns a duration in
// [0, kMaxParsedDuration]. Throws ConfigError naming `flag` otherwise (no number, a negative,
// infinite or too large one, leading blanks, an unknown unit).
std::chrono::milliseconds ParseDuration(const std::string& text, const std::string& flag);

}  // namespace rekey::rotation
