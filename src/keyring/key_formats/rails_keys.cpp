#include "keyring/key_formats/rails_keys.h"

#include <map>
#include <optional>

#include "common/bytes.h"
#include "common/error.h"
#include "crypto/rails.h"

namespace rekey::keyring {
namespace {

constexpr std::string_view kSpace = " \t\r";

std::string_view Trim(std::string_view text) {
  const size_t first = text.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return {};
  return text.substr(first, text.find_last_not_of(kSpace) - first + 1);
}

// A YAML scalar as credentials write one: plain (up to a " #" comment) or quoted.
std::optional<std::string> Scalar(std::string_view value) {
  value = Trim(value);
  if (!value.empty() && (value.front() == '"' || value.front() == '\'')) {
    const size_t close = value.find(value.front(), 1);
    if (close == std::string_view::npos || value.find('\\') != std::string_view::npos) {
      return std::nullopt;  // escapes are not read here: write the key plain or single-quoted
    }
    const std::string_view rest = Trim(value.substr(close + 1));
    if (!rest.empty() && rest.front() != '#') return std::nullopt;
    return std::string(value.substr(1, close - 1));
  }
  const size_t comment = value.find(" #");
  if (comment != std::string_view::npos) value = Trim(value.substr(0, comment));
  if (!value.empty() && (value.front() == '[' || value.front() == '{' || value.front() == '-')) {
    return std::nullopt;
  }
  return std::string(value);
}

const std::map<std::string_view, bool>& Fields() {
  // name -> whether it holds key material (never echoed)
  static const std::map<std::string_view, bool> fields = {{"primary_key", true},
                                                          {"deterministic_key", true},
                                                          {"key_derivation_salt", false},
                                                          {"hash_digest_class", false}};
  return fields;
}

}  // namespace

Secret ParseRailsKeyFile(std::string_view text) {
  std::map<std::string, std::string> values;
  size_t line_no = 0;
  for (size_t start = 0; start < text.size();) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = Trim(text.substr(start, end - start));
    start = end + 1;
    ++line_no;
    if (line.empty() || line.front() == '#' || line == "active_record_encryption:") continue;
    const std::string where = "line " + std::to_string(line_no) + " of the Rails key file";
    if (line.front() == '-') {
      throw KeyError(where + " is a list item: import one key per --key-id (one primary_key " +
                     "per file)");
    }
    const size_t colon = line.find(':');
    const std::string name(Trim(line.substr(0, colon == std::string_view::npos ? 0 : colon)));
    const auto field = Fields().find(name);
    if (colon == std::string_view::npos || field == Fields().end()) {
      throw KeyError(where + " is not one of primary_key, deterministic_key, " +
                     "key_derivation_salt, hash_digest_class (name: value)");
    }
    std::optional<std::string> value = Scalar(line.substr(colon + 1));
    if (!value || value->empty()) {
      throw KeyError(where + " (" + name + ") holds no single plain or quoted value" +
                     (field->second ? ": import one key per --key-id" : ""));
    }
    if (!values.emplace(name, std::move(*value)).second) {
      throw KeyError(where + " gives " + name + " a second time");
    }
  }
  const size_t keys = values.count("primary_key") + values.count("deterministic_key");
  if (keys != 1) {
    throw KeyError("a Rails key file gives exactly one of primary_key or deterministic_key; it " +
                   std::string(keys == 0 ? "gives neither"
                                         : "gives both: import each under its "
                                           "own --key-id"));
  }
  if (!values.count("key_derivation_salt")) {
    throw KeyError(
        "the Rails key file gives no key_derivation_salt (the application's "
        "credentials hold it)");
  }
  const auto digest_name = values.find("hash_digest_class");
  const std::optional<crypto::RailsDigest> digest =
      digest_name == values.end() ? std::nullopt : crypto::ParseRailsDigest(digest_name->second);
  if (!digest) {
    throw KeyError(
        "the Rails key file must give hash_digest_class: SHA1 (Rails 7.0, or "
        "hash_digest_class left at the framework default) or SHA256 (load_defaults "
        "7.1 and later)");
  }
  const std::string& password =
      values.count("primary_key") ? values["primary_key"] : values["deterministic_key"];
  Secret key = crypto::DeriveRailsKey(password, values["key_derivation_salt"], *digest);
  for (auto& entry : values) WipeAndClear(&entry.second);
  return key;
}

std::string RailsKeyProviderConfig(const std::vector<const Secret*>& keys) {
  std::string list;
  for (const Secret* key : keys) {
    if (!list.empty()) list += ' ';
    list += HexEncode(key->data(), key->size());
  }
  return "config.active_record.encryption.key_provider = "
         "ActiveRecord::Encryption::KeyProvider.new(%w[" +
         list + "].map { |hex| ActiveRecord::Encryption::Key.new([hex].pack(\"H*\")) })";
}

}  // namespace rekey::keyring
