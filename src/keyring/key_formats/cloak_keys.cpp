#include "keyring/key_formats/cloak_keys.h"

#include <algorithm>
#include <utility>

#include "common/error.h"
#include "crypto/cloak.h"

namespace rekey::keyring {
namespace {

constexpr char kNotAKey[] =
    " is not a cloak key (\"k1.aesgcm256.\" and the base64url of 32 bytes with its '=', as "
    "the library's generateKey writes it)";

// Appends the comma- or newline-separated keys of `list` to *keys; `what` names the list.
void ParseKeychain(std::string_view list, const std::string& what, std::vector<Secret>* keys) {
  size_t item = 0;
  for (size_t start = 0; start <= list.size();) {
    size_t end = list.find_first_of(",\n", start);
    if (end == std::string_view::npos) end = list.size();
    const std::string_view text = list.substr(start, end - start);
    start = end + 1;
    if (text.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    ++item;
    std::optional<Secret> key = crypto::ParseCloakKeyText(text);
    if (!key) throw KeyError("item " + std::to_string(item) + " of " + what + kNotAKey);
    keys->push_back(std::move(*key));
  }
}

uint32_t FingerprintId(const Secret& key) {
  return uint32_t(std::stoul(crypto::CloakKey(key.Clone()).fingerprint(), nullptr, 16));
}

}  // namespace

std::vector<ExchangedKey> ParseCloakKeyFile(std::string_view text,
                                            std::optional<uint32_t> first_id) {
  std::vector<Secret> encryption, keychain;
  bool assigned = false;  // the file uses the variables' form
  std::string_view rest = text;
  while (!rest.empty()) {
    const size_t end = std::min(rest.find('\n'), rest.size());
    const std::string_view line = rest.substr(0, end);
    rest.remove_prefix(std::min(end + 1, rest.size()));
    const size_t equals = line.find('=');
    const std::string_view name = line.substr(0, equals == std::string_view::npos ? 0 : equals);
    if (name.empty() || name.substr(0, 3) == "k1.") {
      // A bare key or keychain line (a key's own text ends in '=').
      if (assigned && line.find_first_not_of(" \t\r") != std::string_view::npos) {
        throw KeyError("a cloak key file holds " + std::string(kCloakEncryptionKeyVariable) +
                       "= and " + std::string(kCloakDecryptionKeysVariable) +
                       "= lines, or one bare keychain, not both");
      }
      ParseKeychain(line, "the keychain", &keychain);
      continue;
    }
    assigned = true;
    const std::string_view value = line.substr(equals + 1);
    if (name == kCloakEncryptionKeyVariable) {
      ParseKeychain(value, std::string(name), &encryption);
      if (encryption.size() != 1) {
        throw KeyError(std::string(name) + " names one key; the file gives " +
                       std::to_string(encryption.size()));
      }
    } else if (name == kCloakDecryptionKeysVariable) {
      ParseKeychain(value, std::string(name), &keychain);
    } else {
      throw KeyError("a cloak key file sets " + std::string(kCloakEncryptionKeyVariable) + " and " +
                     std::string(kCloakDecryptionKeysVariable) + ", not " +
                     std::string(name.substr(0, 64)));
    }
  }
  // Without an encryption key, the keychain's first key is the primary.
  for (Secret& key : keychain) encryption.push_back(std::move(key));
  if (encryption.empty()) throw KeyError("the cloak key file holds no key");
  std::vector<ExchangedKey> keys;
  for (Secret& key : encryption) {
    bool again = false;
    for (const ExchangedKey& k : keys) again = again || k.key.Equals(key);
    if (again) continue;  // the keychain repeats the encryption key
    ExchangedKey& k = keys.emplace_back();
    if (first_id) {
      const uint64_t id = uint64_t(*first_id) + (keys.size() - 1);
      if (id > 4294967295ULL) {
        throw KeyError("--key-id " + std::to_string(*first_id) + " leaves no id for key " +
                       std::to_string(keys.size()) + " (ids end at 4294967295)");
      }
      k.key_id = uint32_t(id);
    } else {
      k.key_id = FingerprintId(key);
    }
    k.key = std::move(key);
    k.primary = keys.size() == 1;
  }
  return keys;
}

std::string CloakKeyFile(const std::vector<ExchangedKey>& keys) {
  std::string primary, keychain;
  for (const ExchangedKey& k : keys) {
    std::string text = crypto::CloakKeyText(k.key);
    if (k.primary) {
      primary = text;
      keychain = keychain.empty() ? text : text + "," + keychain;
    } else {
      keychain += (keychain.empty() ? "" : ",") + text;
    }
    WipeAndClear(&text);
  }
  if (primary.empty()) throw KeyError("a cloak key file needs the scope's primary key");
  std::string file = std::string(kCloakEncryptionKeyVariable) + "=" + primary + "\n" +
                     std::string(kCloakDecryptionKeysVariable) + "=" + keychain + "\n";
  WipeAndClear(&primary);
  WipeAndClear(&keychain);
  return file;
}

}  // namespace rekey::keyring
