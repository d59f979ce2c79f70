#include "kms/kms_client.h"

#include "common/error.h"

namespace rekey::kms {

int64_t GetenvInteger(const GetenvFn& getenv, const char* name, int64_t fallback, int64_t minimum) {
  std::optional<std::string> v = getenv(name);
  if (!v || v->empty()) return fallback;
  size_t used = 0;
  int64_t n = minimum - 1;
  try {
    n = std::stoll(*v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v->size() || n < minimum) {
    throw ConfigError(std::string(name) + "='" + *v + "' is not an integer of at least " +
                      std::to_string(minimum));
  }
  return n;
}

GeneratedDataKey KmsClient::RewrapDataKey(uint32_t key_id, const std::string& source_key_ref,
                                          const Bytes& wrapped,
                                          const std::string& destination_key_ref) {
  if (destination_key_ref != default_key_ref()) {
    throw ConfigError("KMS provider " + provider() + " wraps data keys under " + default_key_ref() +
                      " only, not " + destination_key_ref +
                      "; configure the provider with the new key and pass --to-kms-key " +
                      default_key_ref());
  }
  Secret plaintext = UnwrapDataKey(key_id, source_key_ref, wrapped);
  GeneratedDataKey result = WrapDataKey(key_id, plaintext);
  result.plaintext = Secret();
  return result;
}

Bytes KmsClient::EncryptBlob(const std::string& key_ref, const Secret&, const Bytes&) {
  throw ConfigError("KMS provider " + provider() + " cannot encrypt a keyset under " + key_ref);
}

Secret KmsClient::DecryptBlob(const std::string& key_ref, const Bytes&, const Bytes&) {
  throw ConfigError("KMS provider " + provider() + " cannot decrypt a keyset under " + key_ref);
}

}  // namespace rekey::kms
