#include "common/duration.h"

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "common/error.h"

namespace rekey {
namespace {

// Milliseconds per unit; 0 for a unit the grammar does not know.
double MillisecondsPer(const std::string& unit) {
  if (unit == "ms") return 1;
  if (unit.empty() || unit == "s" || unit == "sec") return 1000;
  if (unit == "m" || unit == "min") return 60000;
  if (unit == "h") return 3600000;
  if (unit == "d") return 86400000;
  if (unit == "w") return 604800000;
  return 0;
}

}  // namespace

std::chrono::milliseconds ParseDuration(const std::string& text, const std::string& flag,
                                        const DurationRules& rules) {
  // number := digit+ ('.' digit+)?  -- no sign, exponent, blank or hex, unlike strtod.
  size_t at = 0;
  auto digits = [&] {
    const size_t from = at;
    while (at < text.size() && std::isdigit(static_cast<unsigned char>(text[at]))) ++at;
    return at > from;
  };
  bool number = digits();
  bool fraction = false;
  if (number && at < text.size() && text[at] == '.') {
    ++at;
    fraction = true;
    number = digits();
  }
  const std::string unit = text.substr(at);
  const double value = number ? std::strtod(text.substr(0, at).c_str(), nullptr) : 0;
  const double ms_per_unit = MillisecondsPer(unit);
  const double ms = value * ms_per_unit;
  const double max_ms = static_cast<double>(
      std::chrono::duration_cast<std::chrono::milliseconds>(kMaxParsedDuration).count());
  // The range check comes before any conversion to an integer: llround of a value beyond int64
  // is unspecified (it used to turn "1e300h" into a negative duration; 300 digits do it too).
  bool parsed = number && std::isfinite(ms) && ms_per_unit != 0 && ms <= max_ms &&
                (!rules.unit_required || !unit.empty()) && (!rules.whole_number || !fraction);
  std::chrono::milliseconds result{0};
  if (parsed) {
    result = std::chrono::milliseconds(static_cast<int64_t>(std::llround(ms)));
    parsed = result >= rules.minimum && result.count() % rules.granularity.count() == 0;
  }
  if (!parsed) {
    throw ConfigError(
        flag + " must be a duration such as " +
        (rules.unit_required ? "90d, 12h or 2w" : "500ms, 10s, 2min or 1h") +
        " (units ms, s, m, min, h, d, w" +
        (rules.unit_required ? "" : "; a bare number counts seconds") +
        (rules.whole_number ? "; a whole number" : "") +
        (rules.minimum.count() > 0 ? "; at least " + std::to_string(rules.minimum.count()) + "ms"
                                   : "") +
        "; at most " + std::to_string(kMaxParsedDuration.count()) + "h), not '" + text + "'");
  }
  return result;
}

DurationRules KeyAgeRules() {
  DurationRules rules;
  rules.unit_required = true;
  rules.whole_number = true;
  rules.minimum = std::chrono::seconds(1);
  rules.granularity = std::chrono::seconds(1);
  return rules;
}

}  // namespace rekey
