#include "kms/vault_errors.h"

#include <cctype>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/error_table.h"

namespace rekey::kms {

namespace {

bool Contains(const std::string& haystack, const char* needle) {
  return haystack.find(needle) != std::string::npos;
}

// "transit/keys/rekey" -> {"transit", "rekey"}; unparsable refs come back whole as the name.
std::pair<std::string, std::string> SplitRef(const std::string& key_ref) {
  size_t at = key_ref.rfind("/keys/");
  if (at == std::string::npos) return {"transit", key_ref};
  return {key_ref.substr(0, at), key_ref.substr(at + 6)};
}

}  // namespace

std::vector<std::string> VaultErrors(std::string_view body) {
  std::vector<std::string> out;
  nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return out;
  auto it = j.find("errors");
  if (it == j.end() || !it->is_array()) return out;
  for (const auto& e : *it) {
    if (e.is_string()) out.push_back(e.get<std::string>());
  }
  return out;
}

VaultErrorClass ClassifyVaultError(long http_status) {
  // The kVaultTransit rows of the error table (common/error_table.h).
  const std::string status = http_status >= 500 ? "5xx" : std::to_string(http_status);
  const ErrorRule* rule = FindErrorRule(ErrorSource::kVaultTransit, status);
  switch (rule ? rule->error_class : ErrorClass::kPermanent) {
    case ErrorClass::kTransient:
      return VaultErrorClass::kTransient;
    case ErrorClass::kKey:
      return VaultErrorClass::kKey;
    default:
      return VaultErrorClass::kPermanent;
  }
}

void ThrowVaultError(long http_status, std::string_view body, const std::string& operation,
                     const std::string& key_ref, const std::string& data_key_id,
                     const std::string& redact) {
  std::string server;
  for (const std::string& e : VaultErrors(body)) {
    if (!server.empty()) server += "; ";
    server += e;
  }
  // Vault wraps multi-errors as "1 error occurred:\n\t* permission denied\n\n".
  std::string flat;
  for (char c : server) {
    if (c == '\n' || c == '\r' || c == '\t') {
      if (!flat.empty() && flat.back() != ' ') flat += ' ';
    } else {
      flat += c;
    }
  }
  while (!flat.empty() && flat.back() == ' ') flat.pop_back();
  if (!redact.empty()) {
    for (size_t at; (at = flat.find(redact)) != std::string::npos;) {
      flat.replace(at, redact.size(), "<redacted>");
    }
  }
  if (flat.size() > 300) flat = flat.substr(0, 300) + "...";
  std::string lower = flat;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));

  const auto [mount, name] = SplitRef(key_ref);
  const std::string what = "Vault Transit " + operation +
                           (data_key_id.empty() ? "" : " for data key " + data_key_id) + " on " +
                           key_ref + " failed (HTTP " + std::to_string(http_status) +
                           (flat.empty() ? "" : ": \"" + flat + "\"") + ")";
  std::string fix;
  if (Contains(lower, "encryption key not found") || Contains(lower, "key not found") ||
      (http_status == 404 && !Contains(lower, "no handler"))) {
    fix = "Transit key " + key_ref + " does not exist; create it (vault write -f " + key_ref +
          " derived=true) or check REKEY_VAULT_TRANSIT_MOUNT and REKEY_VAULT_TRANSIT_KEY";
  } else if (http_status == 404 || Contains(lower, "no handler for route")) {
    fix = "no Transit engine is mounted at " + mount +
          "/; check REKEY_VAULT_TRANSIT_MOUNT (and VAULT_NAMESPACE)";
  } else if (Contains(lower, "message authentication failed")) {
    fix = "the wrapped key does not decrypt under " + key_ref +
          " with its key-id context: it is corrupt, was moved from another row, or the Transit "
          "key was replaced";
  } else if (Contains(lower, "too old") || Contains(lower, "disallowed by policy")) {
    fix = "the wrapped key's version is below the min_decryption_version of " + key_ref +
          "; lower min_decryption_version, then run rekey keys rewrap";
  } else if (Contains(lower, "invalid ciphertext") || Contains(lower, "ciphertext")) {
    fix = "the wrapped key is not a Transit ciphertext of " + key_ref +
          "; check rekey.keys.wrapped_key and kms_key_ref for this key";
  } else if (Contains(lower, "context")) {
    fix = "Transit key " + key_ref +
          " is not set up as rekey expects; rekey needs a derived key (derived=true)";
  } else if (http_status == 403 || http_status == 401) {
    fix = "the Vault token's policy does not allow " + mount + "/" + operation + "/" + name +
          " (or the token expired and could not be renewed or replaced); see docs/kms.md for "
          "the policy";
  } else if (Contains(lower, "sealed")) {
    fix = "Vault is sealed; unseal it";
  } else if (http_status == 429) {
    fix = "Vault's rate-limit quota is exhausted; lower REKEY_KMS_CALLS_PER_SECOND";
  }
  const std::string message = what + (fix.empty() ? "" : ": " + fix);
  switch (ClassifyVaultError(http_status)) {
    case VaultErrorClass::kTransient:
      throw TransientError(message + "; will retry");
    case VaultErrorClass::kKey:
      throw KeyError(message);
    case VaultErrorClass::kPermanent:
      break;
  }
  throw PermanentError(message);
}

}  // namespace rekey::kms
