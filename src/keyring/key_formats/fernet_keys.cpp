#include "keyring/key_formats/fernet_keys.h"

#include <openssl/crypto.h>

#include "common/error.h"
#include "crypto/fernet.h"

namespace rekey::keyring {

std::vector<Secret> ParseFernetKeyList(std::string_view text) {
  std::vector<Secret> keys;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find_first_of(",\n", start);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view item = text.substr(start, end - start);
    const bool blank = item.find_first_not_of(" \t\r") == std::string_view::npos;
    if (!blank) {
      std::optional<Secret> key = crypto::ParseFernetKeyText(item);
      if (!key) {
        throw KeyError("item " + std::to_string(keys.size() + 1) +
                       " of the Fernet key list is not a Fernet key (the base64url text of 32 "
                       "bytes, as Fernet.generate_key() writes it)");
      }
      keys.push_back(std::move(*key));
    }
    start = end + 1;
  }
  if (keys.empty()) throw KeyError("the Fernet key list holds no key");
  return keys;
}

std::string FernetKeyList(const std::vector<const Secret*>& keys) {
  std::string list;
  for (const Secret* key : keys) {
    if (!list.empty()) list += ',';
    list += crypto::FernetKeyText(*key);
  }
  return list;
}

}  // namespace rekey::keyring
