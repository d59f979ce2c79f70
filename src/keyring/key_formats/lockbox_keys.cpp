#include "keyring/key_formats/lockbox_keys.h"

#include <openssl/crypto.h>

#include "common/error.h"
#include "crypto/lockbox.h"

namespace rekey::keyring {
namespace {

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

Secret ParseLockboxMasterKey(std::string_view text) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  const size_t last = text.find_last_not_of(" \t\r\n");
  const std::string_view hex =
      first == std::string_view::npos ? std::string_view() : text.substr(first, last - first + 1);
  const auto refuse = [] {
    return KeyError(
        "a Lockbox master key is 64 hex digits, as Lockbox.generate_key writes it (the value of "
        "LOCKBOX_MASTER_KEY)");
  };
  if (hex.size() != 2 * crypto::kLockboxMasterKeySize) throw refuse();
  Secret key(crypto::kLockboxMasterKeySize);
  for (size_t i = 0; i < key.size(); ++i) {
    const int high = HexDigit(hex[2 * i]);
    const int low = HexDigit(hex[2 * i + 1]);
    if (high < 0 || low < 0) throw refuse();  // `key` wipes what it holds
    key.mutable_data()[i] = uint8_t(high * 16 + low);
  }
  return key;
}

std::string LockboxMasterKeyText(const Secret& key) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string text;
  text.reserve(2 * key.size());
  for (size_t i = 0; i < key.size(); ++i) {
    text += kDigits[key.data()[i] >> 4];
    text += kDigits[key.data()[i] & 0x0f];
  }
  return text;
}

std::string LockboxInitializer(const std::vector<const Secret*>& keys) {
  if (keys.empty()) throw KeyError("no Lockbox master key to write: the scope has no key");
  std::string out = "Lockbox.master_key = \"";
  std::string previous = "Lockbox.default_options[:previous_versions] = [";
  for (size_t i = 0; i < keys.size(); ++i) {
    std::string hex = LockboxMasterKeyText(*keys[i]);
    if (i == 0) {
      out += hex + "\"\n";
    } else {
      previous += std::string(i > 1 ? ", " : "") + "{master_key: \"" + hex + "\"}";
    }
    OPENSSL_cleanse(hex.data(), hex.size());
  }
  out += previous + "]\n";
  OPENSSL_cleanse(previous.data(), previous.size());
  return out;
}

}  // namespace rekey::keyring
