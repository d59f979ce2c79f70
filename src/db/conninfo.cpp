#include "db/conninfo.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>

namespace rekey::db {
namespace {

constexpr char kMask[] = "***";

// Length of the URL scheme prefix ("postgresql://" or "postgres://") at the start of s, else 0.
size_t SchemeLength(std::string_view s) {
  for (std::string_view scheme : {"postgresql://", "postgres://"}) {
    if (s.size() >= scheme.size()) {
      bool match = true;
      for (size_t i = 0; i < scheme.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(s[i])) != scheme[i]) match = false;
      }
      if (match) return scheme.size();
    }
  }
  return 0;
}

std::string PercentDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out.push_back(
          static_cast<char>(std::strtol(std::string(s.substr(i + 1, 2)).c_str(), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::string PercentEncode(std::string_view s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

// A URL split into the parts that may hold a password. The URL is `url` up to its end, which is
// the end of the input for a conninfo and the next whitespace inside free text.
struct UrlParts {
  size_t password_begin = std::string_view::npos;  // userinfo password, raw (percent-encoded)
  size_t password_end = std::string_view::npos;
  std::vector<std::pair<size_t, size_t>> query_passwords;  // [begin, end) of password= values
};

UrlParts SplitUrl(std::string_view url) {
  UrlParts parts;
  size_t scheme = SchemeLength(url);
  size_t query = url.find('?', scheme);
  std::string_view before_query = url.substr(0, query);
  // The last '@' before the query ends the userinfo, so an unencoded '@' or '/' in a password is
  // still treated as part of the password (libpq would reject it, but the text is still secret).
  size_t at = before_query.rfind('@');
  if (at != std::string_view::npos && at >= scheme) {
    size_t colon = url.find(':', scheme);
    if (colon != std::string_view::npos && colon < at) {
      parts.password_begin = colon + 1;
      parts.password_end = at;
    }
  }
  if (query != std::string_view::npos) {
    size_t pos = query + 1;
    while (pos <= url.size()) {
      size_t amp = url.find('&', pos);
      if (amp == std::string_view::npos) amp = url.size();
      std::string_view param = url.substr(pos, amp - pos);
      size_t eq = param.find('=');
      if (eq != std::string_view::npos && PercentDecode(param.substr(0, eq)) == "password") {
        parts.query_passwords.emplace_back(pos + eq + 1, amp);
      }
      pos = amp + 1;
    }
  }
  return parts;
}

std::string RedactUrl(std::string_view url) {
  UrlParts parts = SplitUrl(url);
  std::vector<std::pair<size_t, size_t>> spans = parts.query_passwords;
  if (parts.password_begin != std::string_view::npos) {
    spans.insert(spans.begin(), {parts.password_begin, parts.password_end});
  }
  std::string out;
  size_t pos = 0;
  for (const auto& [begin, end] : spans) {
    out.append(url.substr(pos, begin - pos));
    out.append(kMask);
    pos = end;
  }
  out.append(url.substr(pos));
  return out;
}

// A `password = value` found in key=value text: the span of the value as written (including
// quotes) and its unescaped content.
struct KeyValuePassword {
  size_t begin, end;
  std::string value;
};

// Scans libpq key=value syntax: key, optional spaces, '=', optional spaces, then a value that is
// either single-quoted (backslash escapes) or runs to the next whitespace (backslash escapes).
// Tolerant of arbitrary text: anything that is not `word = value` is skipped.
std::vector<KeyValuePassword> FindKeyValuePasswords(std::string_view s) {
  std::vector<KeyValuePassword> found;
  auto is_space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  size_t i = 0;
  while (i < s.size()) {
    if (is_space(s[i])) {
      ++i;
      continue;
    }
    size_t key_begin = i;
    while (i < s.size() && !is_space(s[i]) && s[i] != '=') ++i;
    std::string_view key = s.substr(key_begin, i - key_begin);
    size_t j = i;
    while (j < s.size() && is_space(s[j])) ++j;
    if (j >= s.size() || s[j] != '=') continue;
    ++j;
    while (j < s.size() && is_space(s[j])) ++j;
    size_t value_begin = j;
    std::string value;
    if (j < s.size() && s[j] == '\'') {
      ++j;
      while (j < s.size() && s[j] != '\'') {
        if (s[j] == '\\' && j + 1 < s.size()) ++j;
        value.push_back(s[j++]);
      }
      if (j < s.size()) ++j;  // closing quote
    } else {
      while (j < s.size() && !is_space(s[j])) {
        if (s[j] == '\\' && j + 1 < s.size()) ++j;
        value.push_back(s[j++]);
      }
    }
    // Keys may end in a word of free text ("with password=x"): match on the key's tail.
    if (key.size() >= 8 && key.substr(key.size() - 8) == "password" &&
        (key.size() == 8 || !std::isalnum(static_cast<unsigned char>(key[key.size() - 9])))) {
      found.push_back({value_begin, j, value});
    }
    i = j;
  }
  return found;
}

std::string RedactKeyValue(std::string_view s) {
  std::string out;
  size_t pos = 0;
  for (const auto& p : FindKeyValuePasswords(s)) {
    out.append(s.substr(pos, p.begin - pos));
    out.append(kMask);
    pos = p.end;
  }
  out.append(s.substr(pos));
  return out;
}

// Redacts every URL embedded in free text; a URL ends at whitespace or a quote character.
std::string RedactUrlsInText(std::string_view text) {
  std::string out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t next = std::string_view::npos;
    for (size_t k = pos; k < text.size(); ++k) {
      if ((text[k] == 'p' || text[k] == 'P') && SchemeLength(text.substr(k)) > 0) {
        next = k;
        break;
      }
    }
    if (next == std::string_view::npos) break;
    size_t end = next;
    while (end < text.size() && !std::isspace(static_cast<unsigned char>(text[end])) &&
           text[end] != '"' && text[end] != '\'') {
      ++end;
    }
    out.append(text.substr(pos, next - pos));
    out.append(RedactUrl(text.substr(next, end - next)));
    pos = end;
  }
  out.append(text.substr(pos < text.size() ? pos : text.size()));
  return out;
}

// Replaces every occurrence of any of `needles` with the mask, in one pass over `text`: at each
// position the longest needle that matches wins, and the text after a match is scanned from the
// end of the match. A mask once written is never scanned again -- replacing needle after needle in
// the growing output (as this used to) let a password such as "*" multiply the text by three per
// spelling, i.e. exponentially in the number of passwords.
std::string ReplaceAllOf(std::string_view text, std::vector<std::string> needles) {
  needles.erase(std::remove(needles.begin(), needles.end(), std::string()), needles.end());
  std::sort(needles.begin(), needles.end(), [](const std::string& a, const std::string& b) {
    return a.size() != b.size() ? a.size() > b.size() : a < b;
  });
  needles.erase(std::unique(needles.begin(), needles.end()), needles.end());
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    size_t matched = 0;
    for (const std::string& needle : needles) {
      if (text.compare(i, needle.size(), needle) == 0) {
        matched = needle.size();
        break;
      }
    }
    if (matched > 0) {
      out.append(kMask);
      i += matched;
    } else {
      out.push_back(text[i++]);
    }
  }
  return out;
}

}  // namespace

std::string ResolveConnInfo(const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* env = std::getenv("DATABASE_URL");
  return env != nullptr ? env : "";
}

std::string RedactConnInfo(std::string_view conninfo) {
  size_t lead = 0;
  while (lead < conninfo.size() && std::isspace(static_cast<unsigned char>(conninfo[lead]))) {
    ++lead;
  }
  if (SchemeLength(conninfo.substr(lead)) > 0) {
    return std::string(conninfo.substr(0, lead)) + RedactUrl(conninfo.substr(lead));
  }
  return RedactKeyValue(conninfo);
}

namespace {

// Every spelling of every password in conninfo: decoded, and as written when it differs.
std::vector<std::string> PasswordSpellings(std::string_view conninfo, bool with_raw) {
  std::vector<std::string> out;
  size_t lead = 0;
  while (lead < conninfo.size() && std::isspace(static_cast<unsigned char>(conninfo[lead]))) {
    ++lead;
  }
  std::string_view s = conninfo.substr(lead);
  if (SchemeLength(s) > 0) {
    UrlParts parts = SplitUrl(s);
    if (parts.password_begin != std::string_view::npos) {
      std::string_view raw =
          s.substr(parts.password_begin, parts.password_end - parts.password_begin);
      out.push_back(PercentDecode(raw));
      if (with_raw) out.emplace_back(raw);
    }
    for (const auto& [begin, end] : parts.query_passwords) {
      out.push_back(PercentDecode(s.substr(begin, end - begin)));
      if (with_raw) out.emplace_back(s.substr(begin, end - begin));
    }
  } else {
    for (const auto& p : FindKeyValuePasswords(s)) {
      out.push_back(p.value);
      if (with_raw) out.emplace_back(s.substr(p.begin, p.end - p.begin));
    }
  }
  return out;
}

}  // namespace

std::vector<std::string> PasswordsIn(std::string_view conninfo) {
  return PasswordSpellings(conninfo, false);
}

std::string RedactSecrets(std::string_view text, std::string_view conninfo) {
  const std::string out = RedactKeyValue(RedactUrlsInText(text));
  std::vector<std::string> spellings;
  for (const std::string& password : PasswordSpellings(conninfo, true)) {
    spellings.push_back(password);
    spellings.push_back(PercentEncode(password));
  }
  return ReplaceAllOf(out, std::move(spellings));
}

}  // namespace rekey::db
