// The one grammar of durations an operator types ("--max-replication-lag 30s", "--max-age 90d").
//
//   duration := number unit?    number := digit+ ('.' digit+)?
//   unit := ms | s | sec | m | min | h | d | w
//
// A number without a unit counts seconds. No sign, exponent or blank anywhere. Every duration this
// grammar accepts is also a valid PostgreSQL interval literal with the same length
// ('30s'::interval, '2min'::interval, '90d', '2w'; m is minutes in both), so a value may be passed
// on to SQL as text; the reverse does not hold (SQL also takes '1 day 2 hours', '1 millisecond',
// months and years, whose length depends on the calendar), which is why rekey parses flags itself
// and leaves SQL intervals to the database (keys policy set, rekey.keys.max_age).
// tests/duration_interval_pg_test.cpp checks the agreement.
//
// Pure and thread-safe; kept free of dependencies so the parser can be fuzzed (tests/fuzz).
#pragma once

#include <chrono>
#include <string>

namespace rekey {

// The longest duration ParseDuration accepts: far beyond any sensible flag value, and far below
// where converting to milliseconds could overflow.
constexpr std::chrono::hours kMaxParsedDuration{24 * 366 * 100};

// What a flag accepts of the grammar. The default is all of it: 0, fractions and a bare number
// of seconds.
struct DurationRules {
  bool unit_required = false;                // "90" is refused (for a key's age: 90 what?)
  bool whole_number = false;                 // no fraction: "1.5d" refused
  std::chrono::milliseconds minimum{0};      // inclusive
  std::chrono::milliseconds granularity{1};  // the result must be a multiple of this
};

// Parses `text` by the grammar and `rules` into a duration in [rules.minimum,
// kMaxParsedDuration]. Throws ConfigError naming `flag` otherwise (no number, a negative, infinite
// or too large one, blanks, an unknown unit, or a rule broken).
std::chrono::milliseconds ParseDuration(const std::string& text, const std::string& flag,
                                        const DurationRules& rules = {});

// The rules of a key's maximum age (--max-age): whole numbers with a unit, at least 1s, whole
// seconds.
DurationRules KeyAgeRules();

}  // namespace rekey
