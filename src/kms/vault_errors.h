// How Vault error responses map onto rekey's error hierarchy (common/error.h).
//
// Vault reports an error as an HTTP 4xx/5xx whose JSON body is {"errors": ["...", ...]}. The
// strings are surfaced as they are (joined with "; ", newlines flattened so the message stays one
// line). The HTTP status decides the class (ClassifyVaultError):
//
//   429 (rate-limit quota, or a standby's health), 500, 502, 503 (sealed, standby), 504, 412
//   (Enterprise replication lag), 473 (performance standby)            -> TransientError
//   400 (message authentication failed, invalid ciphertext, encryption key not found), 401, 403
//   (permission denied: after the provider logged in again), 404 (no such key or mount)
//                                                                       -> KeyError
//   anything else                                                       -> PermanentError
//
// Every message names the Transit key and says the likely fix; it never contains a token.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace rekey::kms {

enum class VaultErrorClass { kTransient, kKey, kPermanent };

// The strings of the "errors" array of a Vault error body; empty iff there is none (the body is
// not JSON, has no "errors", or it is not an array of strings). Never throws.
std::vector<std::string> VaultErrors(std::string_view body);

VaultErrorClass ClassifyVaultError(long http_status);

// Throws the rekey::Error for a failed Vault call. `operation` is e.g. "decrypt", `key_ref` the
// Transit key the call named ("transit/keys/rekey"), `data_key_id` the rekey key id (or empty).
// `redact` (e.g. the token) is cut from the server's text should it ever appear there.
[[noreturn]] void ThrowVaultError(long http_status, std::string_view body,
                                  const std::string& operation, const std::string& key_ref,
                                  const std::string& data_key_id, const std::string& redact = "");

}  // namespace rekey::kms
