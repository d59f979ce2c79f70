#include "rotation/duration.h"

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "common/error.h"

namespace rekey::rotation {

std::chrono::milliseconds ParseDuration(const std::string& text, const std::string& flag) {
  const char* begin = text.c_str();
  char* end = nullptr;
  // strtod would skip leading blanks, but "5 s" is refused below: refuse " 5s" alike.
  const bool blank = !text.empty() && std::isspace(static_cast<unsigned char>(text[0]));
  const double value = std::strtod(begin, &end);
  const std::string unit(end);
  double ms_per_unit = 0;
  if (unit.empty() || unit == "s" || unit == "sec") {
    ms_per_unit = 1000;
  } else if (unit == "ms") {
    ms_per_unit = 1;
  } else if (unit == "min" || unit == "m") {
    ms_per_unit = 60000;
  } else if (unit == "h") {
    ms_per_unit = 3600000;
  }
  const double ms = value * ms_per_unit;
  const double max_ms = static_cast<double>(
      std::chrono::duration_cast<std::chrono::milliseconds>(kMaxParsedDuration).count());
  // The range check comes before any conversion to an integer: llround of a value beyond int64
  // is unspecified (it used to turn "1e300h" into a negative duration).
  const bool parsed = end != begin && !blank && std::isfinite(value) && value >= 0 &&
                      ms_per_unit != 0 && ms <= max_ms;
  if (!parsed) {
    throw ConfigError(flag + " must be a duration such as 500ms, 10s, 2min or 1h (at most " +
                      std::to_string(kMaxParsedDuration.count()) + "h), not '" + text + "'");
  }
  return std::chrono::milliseconds(static_cast<int64_t>(std::llround(ms)));
}

}  // namespace rekey::rotation
