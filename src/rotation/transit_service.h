// What rotation needs of Vault Transit for the vault-transit column codec: read a Transit key, and
// rewrap application values inside Vault. A narrow interface, so rotation/ depends on no KMS
// provider: the process wires Vault's client to it (worker/cli_support.h), tests may wire a real
// Vault too (tests/kms/vault_server.py).
//
// Errors: every call throws a rekey::Error for a failure of the whole request, as KMS providers do
// (kms/kms_client.h): TransientError when a retry may help (Vault down, sealed, throttling),
// KeyError when a person must act (no such key, access denied), ConfigError for a malformed ref.
//
// Thread-safety: implementations are thread-safe; one serves every claim loop of a process.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace rekey::rotation {

class TransitService {
 public:
  struct KeyInfo {
    bool derived = false;    // values were encrypted with a derivation context
    int latest_version = 0;  // the version a rewrap moves values to
  };
  // An application value to rewrap: the stored ciphertext "vault:vN:<base64>", and the base64
  // derivation context it was encrypted with ("" for a non-derived key).
  struct Item {
    std::string ciphertext;
    std::string context;
  };
  struct Result {
    std::string ciphertext;  // the rewrapped value; empty iff the item failed
    std::string error;       // Vault's reason for this item; empty iff it succeeded
    int key_version = 0;     // the version it is now under
  };

  virtual ~TransitService() = default;

  // Transit key `key_ref` ("<mount>/keys/<name>").
  virtual KeyInfo ReadKey(const std::string& key_ref) = 0;

  // Rewraps `items` to the latest version of `key_ref` inside Vault, in as few requests as Vault
  // allows; one result per item, in order. An item Vault refuses gets its error and the others go
  // on; a failure of a whole request throws (see the file comment).
  virtual std::vector<Result> RewrapValues(const std::string& key_ref,
                                           const std::vector<Item>& items) = 0;
};

// The Transit service of vault-transit jobs, built on first use. Throws ConfigError when Vault is
// not configured. The service must outlive the rotators that call it.
using TransitClientSource = std::function<TransitService&()>;

}  // namespace rekey::rotation
