#include "kms/kms_client.h"

#include "common/error.h"

namespace rekey::kms {

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

}  // namespace rekey::kms
