#include "jobs/job_spec.h"

#include "common/error.h"

namespace rekey::jobs {
namespace {

uint32_t ParseKeyId(const std::string& text, const std::string& whole) {
  if (text.empty() || text.size() > 10 ||
      text.find_first_not_of("0123456789") != std::string::npos) {
    throw ConfigError("bad key map '" + whole + "': key ids are unsigned integers, as in 1:2,3:7");
  }
  uint64_t v = std::stoull(text);
  if (v > 0xffffffffull) throw ConfigError("bad key map '" + whole + "': key ids are 32-bit");
  return static_cast<uint32_t>(v);
}

}  // namespace

std::map<uint32_t, uint32_t> ParseKeyMap(const std::string& text) {
  std::map<uint32_t, uint32_t> map;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    std::string pair =
        text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    size_t colon = pair.find(':');
    if (colon == std::string::npos) {
      throw ConfigError("bad key map '" + text + "': write source:target pairs, as in 1:2,3:7");
    }
    uint32_t from = ParseKeyId(pair.substr(0, colon), text);
    uint32_t to = ParseKeyId(pair.substr(colon + 1), text);
    if (!map.emplace(from, to).second) {
      throw ConfigError("bad key map '" + text + "': source key " + std::to_string(from) +
                        " appears twice");
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return map;
}

std::string StagePlanLiteral(const std::string& text) {
  std::string literal = "{";
  size_t start = 0;
  while (true) {
    size_t comma = text.find(',', start);
    std::string item =
        text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const bool numeric =
        !item.empty() && item.find_first_not_of("0123456789.") == std::string::npos &&
        item.find('.') == item.rfind('.') && item.front() != '.' && item.back() != '.';
    if (!numeric) {
      throw ConfigError("bad stage plan '" + text +
                        "': write increasing percentages ending at 100, as in 1,25,50,75,100");
    }
    if (literal.size() > 1) literal += ',';
    literal += item;
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return literal + "}";
}

std::pair<std::string, std::string> ParseScope(const std::string& text) {
  size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw ConfigError("bad scope '" + text + "': write column=value, as in tenant_id=42");
  }
  return {text.substr(0, eq), text.substr(eq + 1)};
}

std::vector<std::string> ParseJsonPath(const std::string& text) {
  std::string body = text;
  if (body.size() >= 2 && body.front() == '{' && body.back() == '}') {
    body = body.substr(1, body.size() - 2);
  }
  std::vector<std::string> keys;
  size_t start = 0;
  while (true) {
    const size_t comma = body.find(',', start);
    std::string key =
        body.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (key.empty() || key.find_first_of("{}\"\\") != std::string::npos) {
      throw ConfigError("bad JSON path '" + text +
                        "': write the keys from the document's root, as in {payment,token}");
    }
    keys.push_back(std::move(key));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return keys;
}

}  // namespace rekey::jobs
