#include "kms/vault_transit.h"

#include <openssl/crypto.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <utility>

#include "common/error.h"
#include "kms/vault_errors.h"

namespace rekey::kms {

namespace {

using nlohmann::json;

std::string RefString(const TransitKeyRef& key) {
  return key.mount + "/keys/" + key.name;
}

[[noreturn]] void Malformed(const std::string& operation, const std::string& what) {
  throw PermanentError("Vault Transit " + operation + " returned a malformed response (" + what +
                       "); check VAULT_ADDR points at Vault");
}

const json& Data(const std::string& operation, const json& j) {
  auto it = j.find("data");
  if (it == j.end() || !it->is_object()) Malformed(operation, "no data");
  return *it;
}

std::string Ciphertext(const std::string& operation, const json& j) {
  const json& data = Data(operation, j);
  auto it = data.find("ciphertext");
  if (it == data.end() || !it->is_string() ||
      it->get_ref<const std::string&>().rfind("vault:v", 0) != 0) {
    Malformed(operation, "no vault:v ciphertext");
  }
  return it->get<std::string>();
}

// The plaintext of a decrypt reply (base64 in data.plaintext), its text in `j` wiped.
Secret DecryptedPlaintext(const std::string& operation, json& j) {
  auto data = j.find("data");
  if (data == j.end() || !data->is_object()) Malformed(operation, "no data");
  auto it = data->find("plaintext");
  if (it == data->end() || !it->is_string()) Malformed(operation, "no plaintext");
  std::string& text = it->get_ref<std::string&>();
  std::optional<Bytes> b = Base64Decode(text);
  WipeAndClear(&text);
  if (!b) Malformed(operation, "plaintext is not base64");
  Secret plaintext(b->data(), b->size());
  WipeAndClear(&*b);
  return plaintext;
}

bool NameChars(const std::string& s, bool allow_slash) {
  if (s.empty()) return false;
  for (unsigned char c : s) {
    if (!(std::isalnum(c) || c == '_' || c == '-' || c == '.' || (allow_slash && c == '/'))) {
      return false;
    }
  }
  return true;
}

// A Transit ciphertext "vault:v<N>:<base64>" (what wrapped_key holds); false for anything else,
// e.g. a key wrapped by another provider, or bytes that are not even text (which could not be sent
// in JSON).
bool LooksLikeTransitCiphertext(const std::string& s) {
  if (s.rfind("vault:v", 0) != 0) return false;
  size_t colon = s.find(':', 7);
  if (colon == std::string::npos || colon == 7 || colon + 1 >= s.size()) return false;
  for (size_t i = 7; i < colon; i++) {
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  for (size_t i = colon + 1; i < s.size(); i++) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (!(std::isalnum(c) || c == '+' || c == '/' || c == '=')) return false;
  }
  return true;
}

bool BoolOr(const json& j, const char* field, bool fallback) {
  auto it = j.find(field);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

std::string StringOr(const json& j, const char* field, const std::string& fallback) {
  auto it = j.find(field);
  return it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
}

}  // namespace

VaultTransitConfig VaultTransitConfigFromEnv(const GetenvFn& getenv, bool require_key) {
  auto env = [&](const char* name) {
    std::optional<std::string> v = getenv(name);
    return v && !v->empty() ? v : std::nullopt;
  };
  VaultTransitConfig c;
  std::optional<std::string> addr = env("VAULT_ADDR");
  if (!addr) {
    throw ConfigError(
        "vault-transit needs the Vault address: set VAULT_ADDR (e.g. "
        "https://vault.example:8200)");
  }
  if (addr->rfind("https://", 0) != 0 && addr->rfind("http://", 0) != 0) {
    throw ConfigError("VAULT_ADDR='" + *addr +
                      "' is not an http(s) URL; set it like https://vault.example:8200");
  }
  c.connection.addr = *addr;
  while (!c.connection.addr.empty() && c.connection.addr.back() == '/') {
    c.connection.addr.pop_back();
  }
  c.connection.name_space = env("VAULT_NAMESPACE").value_or("");
  c.connection.ca_cert = env("VAULT_CACERT").value_or("");
  if (!c.connection.ca_cert.empty() && access(c.connection.ca_cert.c_str(), R_OK) != 0) {
    throw ConfigError("VAULT_CACERT=" + c.connection.ca_cert +
                      " is not a readable file; point it at the PEM bundle of Vault's CA");
  }

  std::optional<std::string> key = env("REKEY_VAULT_TRANSIT_KEY");
  if (!key && !require_key) key = "unset";
  if (!key) {
    throw ConfigError(
        "vault-transit needs the Transit key to wrap data keys under: set "
        "REKEY_VAULT_TRANSIT_KEY to its name (create it with vault write -f "
        "transit/keys/rekey derived=true)");
  }
  if (!NameChars(*key, false)) {
    throw ConfigError("REKEY_VAULT_TRANSIT_KEY='" + *key +
                      "' is not a Transit key name (letters, digits, '_', '-', '.')");
  }
  c.key = *key;
  std::string mount = env("REKEY_VAULT_TRANSIT_MOUNT").value_or("transit");
  while (!mount.empty() && mount.back() == '/') mount.pop_back();
  while (!mount.empty() && mount.front() == '/') mount.erase(0, 1);
  if (!NameChars(mount, true) || mount.find("//") != std::string::npos) {
    throw ConfigError("REKEY_VAULT_TRANSIT_MOUNT='" + mount +
                      "' is not a mount path (e.g. transit or team/transit)");
  }
  c.mount = mount;

  if (std::optional<std::string> role = env("REKEY_VAULT_K8S_ROLE")) {
    c.auth.method = VaultAuthMethod::kKubernetes;
    c.auth.k8s_role = *role;
    c.auth.k8s_mount = env("REKEY_VAULT_K8S_MOUNT").value_or("kubernetes");
    while (!c.auth.k8s_mount.empty() && c.auth.k8s_mount.back() == '/') c.auth.k8s_mount.pop_back();
    if (!NameChars(c.auth.k8s_mount, true)) {
      throw ConfigError("REKEY_VAULT_K8S_MOUNT='" + c.auth.k8s_mount +
                        "' is not an auth mount path (e.g. kubernetes)");
    }
    c.auth.k8s_jwt_file = env("REKEY_VAULT_K8S_JWT_FILE").value_or(c.auth.k8s_jwt_file);
  } else if (std::optional<std::string> file = env("VAULT_TOKEN_FILE")) {
    c.auth.method = VaultAuthMethod::kTokenFile;
    c.auth.token_file = *file;
  } else if (std::optional<std::string> token = env("VAULT_TOKEN")) {
    c.auth.method = VaultAuthMethod::kToken;
    c.auth.token = *token;
  } else {
    throw ConfigError(
        "vault-transit needs a way to authenticate: set REKEY_VAULT_K8S_ROLE (Kubernetes auth), "
        "VAULT_TOKEN_FILE or VAULT_TOKEN");
  }
  return c;
}

std::optional<TransitKeyRef> ParseTransitKeyRef(const std::string& kms_key_ref) {
  size_t at = kms_key_ref.rfind("/keys/");
  if (at == std::string::npos || at == 0) return std::nullopt;
  TransitKeyRef ref{kms_key_ref.substr(0, at), kms_key_ref.substr(at + 6)};
  if (!NameChars(ref.mount, true) || !NameChars(ref.name, false)) return std::nullopt;
  return ref;
}

std::string TransitContext(uint32_t key_id) {
  std::string context = "rekey_key_id=" + std::to_string(key_id);
  return Base64Encode(reinterpret_cast<const uint8_t*>(context.data()), context.size());
}

VaultTransitClient::VaultTransitClient(VaultTransitConfig config,
                                       std::shared_ptr<HttpTransport> transport, VaultClock clock)
    : config_(std::move(config)),
      default_key_{config_.mount, config_.key},
      transport_(std::move(transport)),
      auth_(config_.connection, config_.auth, transport_, std::move(clock)) {}

std::string VaultTransitClient::default_key_ref() const {
  return RefString(default_key_);
}

json VaultTransitClient::Call(const std::string& method, const TransitKeyRef& key,
                              const std::string& operation, std::string body,
                              const std::string& data_key_id, bool batch) {
  const std::string path = key.mount + "/" + operation + "/" + key.name;
  std::string token = auth_.Token();
  HttpResponse response;
  try {
    response = transport_->Post(VaultRequest(config_.connection, method, path, body, token));
    if (response.status == 403 && auth_.Refresh(token)) {
      WipeAndClear(&token);
      token = auth_.Token();
      response = transport_->Post(VaultRequest(config_.connection, method, path, body, token));
    }
  } catch (...) {
    WipeAndClear(&body);
    WipeAndClear(&token);
    throw;
  }
  WipeAndClear(&body);
  if (batch && response.status == 400) {
    // Vault answers 400 when any batch item failed, with every item's outcome in the data.
    json j = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("data") && j["data"].is_object() &&
        j["data"].contains("batch_results")) {
      WipeAndClear(&token);
      return j;
    }
  }
  if (response.status < 200 || response.status > 299) {
    std::string redact = std::move(token);
    ThrowVaultError(response.status, response.body, operation, RefString(key), data_key_id, redact);
  }
  WipeAndClear(&token);
  json j = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  WipeAndClear(&response.body);
  if (!j.is_object()) Malformed(operation, "not a JSON object");
  return j;
}

json VaultTransitClient::ReadKey(const TransitKeyRef& key) {
  json j = Call("GET", key, "keys", "", "");
  return Data("keys", j);
}

void VaultTransitClient::RequireDerived(const TransitKeyRef& key, const json& data) const {
  const std::string ref = RefString(key);
  if (!BoolOr(data, "derived", false)) {
    throw KeyError("Transit key " + ref +
                   " is not derived, so it cannot bind data keys to their key id; create a "
                   "dedicated key with vault write -f " +
                   ref +
                   " derived=true and point "
                   "REKEY_VAULT_TRANSIT_KEY at it");
  }
  if (!BoolOr(data, "supports_encryption", true)) {
    throw KeyError("Transit key " + ref + " (type " + StringOr(data, "type", "?") +
                   ") cannot encrypt; use an aes256-gcm96 key");
  }
}

void VaultTransitClient::CheckDefaultKeyDerived() {
  if (default_key_checked_.load()) return;
  RequireDerived(default_key_, ReadKey(default_key_));
  default_key_checked_.store(true);
}

std::string VaultTransitClient::Encrypt(const TransitKeyRef& key, uint32_t key_id,
                                        const Secret& plaintext) {
  json request = {{"plaintext", Base64Encode(plaintext.data(), plaintext.size())},
                  {"context", TransitContext(key_id)}};
  std::string body = request.dump();
  WipeAndClear(&request["plaintext"].get_ref<std::string&>());
  return Ciphertext("encrypt",
                    Call("POST", key, "encrypt", std::move(body), std::to_string(key_id)));
}

Secret VaultTransitClient::Decrypt(const TransitKeyRef& key, uint32_t key_id,
                                   const std::string& ciphertext) {
  const std::string op = "decrypt";
  json request = {{"ciphertext", ciphertext}, {"context", TransitContext(key_id)}};
  json j = Call("POST", key, op, request.dump(), std::to_string(key_id));
  Secret secret = DecryptedPlaintext(op, j);
  const size_t size = secret.size();
  if (size != kDataKeySize) {
    throw KeyError("Vault Transit decrypt returned " + std::to_string(size) +
                   " bytes for data key " + std::to_string(key_id) + " under " + RefString(key) +
                   ", not 32: the wrapped key is not a rekey data key");
  }
  return secret;
}

GeneratedDataKey VaultTransitClient::GenerateDataKey(uint32_t key_id) {
  CheckDefaultKeyDerived();
  json request = {{"bits", 256}, {"context", TransitContext(key_id)}};
  std::string ciphertext = Ciphertext(
      "datakey/wrapped",
      Call("POST", default_key_, "datakey/wrapped", request.dump(), std::to_string(key_id)));
  GeneratedDataKey result;
  result.plaintext = Decrypt(default_key_, key_id, ciphertext);
  result.wrapped = ToBytes(ciphertext);
  result.kms_key_ref = default_key_ref();
  return result;
}

GeneratedDataKey VaultTransitClient::WrapDataKey(uint32_t key_id, const Secret& plaintext) {
  if (plaintext.size() != kDataKeySize) {
    throw KeyError("data key " + std::to_string(key_id) + " is " +
                   std::to_string(plaintext.size()) + " bytes; data keys must be exactly 32 bytes");
  }
  CheckDefaultKeyDerived();
  GeneratedDataKey result;
  result.wrapped = ToBytes(Encrypt(default_key_, key_id, plaintext));
  result.plaintext = plaintext.Clone();
  result.kms_key_ref = default_key_ref();
  return result;
}

Secret VaultTransitClient::UnwrapDataKey(uint32_t key_id, const std::string& kms_key_ref,
                                         const Bytes& wrapped) {
  std::optional<TransitKeyRef> key = ParseTransitKeyRef(kms_key_ref);
  if (!key) {
    throw KeyError("cannot unwrap data key " + std::to_string(key_id) + ": its kms_key_ref '" +
                   kms_key_ref +
                   "' is not a Vault Transit key (<mount>/keys/<name>); use the KMS provider it "
                   "was created with");
  }
  std::string ciphertext(wrapped.begin(), wrapped.end());
  if (!LooksLikeTransitCiphertext(ciphertext)) {
    throw KeyError("cannot unwrap data key " + std::to_string(key_id) +
                   ": its wrapped key is not a Transit ciphertext (vault:vN:...); check "
                   "rekey.keys.wrapped_key for this key");
  }
  return Decrypt(*key, key_id, ciphertext);
}

GeneratedDataKey VaultTransitClient::RewrapDataKey(uint32_t key_id,
                                                   const std::string& source_key_ref,
                                                   const Bytes& wrapped,
                                                   const std::string& destination_key_ref) {
  ReWrappedKey re = Rewrap(key_id, source_key_ref, wrapped, destination_key_ref);
  GeneratedDataKey result;
  result.wrapped = std::move(re.wrapped);
  result.kms_key_ref = std::move(re.kms_key_ref);
  return result;
}

ReWrappedKey VaultTransitClient::Rewrap(uint32_t key_id, const std::string& source_key_ref,
                                        const Bytes& wrapped,
                                        const std::string& destination_key_ref) {
  std::optional<TransitKeyRef> source = ParseTransitKeyRef(source_key_ref);
  std::optional<TransitKeyRef> destination = ParseTransitKeyRef(destination_key_ref);
  if (!source || !destination) {
    throw KeyError("cannot rewrap data key " + std::to_string(key_id) + " from '" + source_key_ref +
                   "' to '" + destination_key_ref +
                   "': both must be Vault Transit key refs (<mount>/keys/<name>)");
  }
  std::string ciphertext(wrapped.begin(), wrapped.end());
  if (!LooksLikeTransitCiphertext(ciphertext)) {
    throw KeyError("cannot rewrap data key " + std::to_string(key_id) +
                   ": its wrapped key is not a Transit ciphertext (vault:vN:...)");
  }
  ReWrappedKey result;
  result.kms_key_ref = RefString(*destination);
  if (source->mount == destination->mount && source->name == destination->name) {
    json request = {{"ciphertext", ciphertext}, {"context", TransitContext(key_id)}};
    result.wrapped = ToBytes(Ciphertext(
        "rewrap", Call("POST", *source, "rewrap", request.dump(), std::to_string(key_id))));
    return result;
  }
  RequireDerived(*destination, ReadKey(*destination));
  Secret plaintext = Decrypt(*source, key_id, ciphertext);
  result.wrapped = ToBytes(Encrypt(*destination, key_id, plaintext));
  return result;
}

namespace {

TransitKeyRef BlobKey(const std::string& key_ref) {
  std::optional<TransitKeyRef> key = ParseTransitKeyRef(key_ref);
  if (!key) {
    throw ConfigError("'" + key_ref +
                      "' is not a Vault Transit key path; write <mount>/keys/<name>, e.g. "
                      "transit/keys/keysets");
  }
  return *key;
}

// tink-go-hcvault sends the associated data as the derivation context, and only when there is
// some.
void AddTinkContext(json* request, const Bytes& associated_data) {
  if (!associated_data.empty()) (*request)["context"] = Base64Encode(associated_data);
}

}  // namespace

Bytes VaultTransitClient::EncryptBlob(const std::string& key_ref, const Secret& plaintext,
                                      const Bytes& associated_data) {
  const TransitKeyRef key = BlobKey(key_ref);
  json request = {{"plaintext", Base64Encode(plaintext.data(), plaintext.size())}};
  AddTinkContext(&request, associated_data);
  std::string body = request.dump();
  WipeAndClear(&request["plaintext"].get_ref<std::string&>());
  try {
    return ToBytes(Ciphertext("encrypt", Call("POST", key, "encrypt", std::move(body), "")));
  } catch (const KeyError& e) {
    // rekey's own data-key wrapping key is derived (bound to key ids); Tink reads a keyset with
    // no context, so its key must be another, non-derived one.
    if (!associated_data.empty() ||
        std::string(e.what()).find("missing 'context'") == std::string::npos) {
      throw;
    }
    throw KeyError("Transit key " + key_ref +
                   " is derived, and Tink's Vault Aead sends no context for a keyset, so Tink "
                   "could not read it back; create a non-derived key (vault write -f " +
                   key.mount + "/keys/keysets) and pass --kms-key " + key.mount + "/keys/keysets");
  }
}

Secret VaultTransitClient::DecryptBlob(const std::string& key_ref, const Bytes& ciphertext,
                                       const Bytes& associated_data) {
  const std::string op = "decrypt";
  const TransitKeyRef key = BlobKey(key_ref);
  const std::string sealed(ciphertext.begin(), ciphertext.end());
  if (!LooksLikeTransitCiphertext(sealed)) {
    throw KeyError("it is not a Vault Transit ciphertext (vault:vN:...), so " + key_ref +
                   " did not encrypt it; pass the KMS and key it was encrypted with");
  }
  json request = {{"ciphertext", sealed}};
  AddTinkContext(&request, associated_data);
  json j = Call("POST", key, op, request.dump(), "");
  return DecryptedPlaintext(op, j);
}

std::vector<TransitRewrapResult> VaultTransitClient::RewrapValues(
    const std::string& key_ref, const std::vector<TransitRewrapItem>& items) {
  const std::string op = "rewrap";
  std::optional<TransitKeyRef> key = ParseTransitKeyRef(key_ref);
  if (!key) {
    throw ConfigError("'" + key_ref + "' is not a Vault Transit key ref (<mount>/keys/<name>)");
  }
  std::vector<TransitRewrapResult> results(items.size());
  for (size_t begin = 0; begin < items.size(); begin += kTransitBatchSize) {
    const size_t end = std::min(items.size(), begin + kTransitBatchSize);
    json batch = json::array();
    std::vector<size_t> sent;  // indexes of the items in this request
    for (size_t i = begin; i < end; i++) {
      if (!LooksLikeTransitCiphertext(items[i].ciphertext)) {
        results[i].error = "invalid ciphertext: not a vault:vN: value";
        continue;
      }
      json item = {{"ciphertext", items[i].ciphertext}, {"reference", std::to_string(i)}};
      if (!items[i].context.empty()) item["context"] = items[i].context;
      batch.push_back(std::move(item));
      sent.push_back(i);
    }
    if (sent.empty()) continue;
    json request = {{"batch_input", std::move(batch)}};
    json j = Call("POST", *key, op, request.dump(), "", /*batch=*/true);
    const json& data = Data(op, j);
    auto it = data.find("batch_results");
    if (it == data.end() || !it->is_array() || it->size() != sent.size()) {
      Malformed(op, "batch_results do not match the batch");
    }
    for (size_t k = 0; k < sent.size(); k++) {
      const json& r = (*it)[k];
      TransitRewrapResult& out = results[sent[k]];
      if (!r.is_object()) Malformed(op, "a batch result is not an object");
      out.error = StringOr(r, "error", "");
      if (!out.error.empty()) continue;
      out.ciphertext = StringOr(r, "ciphertext", "");
      if (!LooksLikeTransitCiphertext(out.ciphertext)) Malformed(op, "no vault:v ciphertext");
      out.key_version = TransitCiphertextVersion(out.ciphertext).value_or(0);
    }
  }
  return results;
}

VaultTransitClient::KeyInfo VaultTransitClient::ReadTransitKey(const std::string& key_ref) {
  std::optional<TransitKeyRef> key = ParseTransitKeyRef(key_ref);
  if (!key) {
    throw ConfigError("'" + key_ref +
                      "' is not a Vault Transit key path; write <mount>/keys/<name>, e.g. "
                      "transit/keys/app");
  }
  json data;
  try {
    data = ReadKey(*key);
  } catch (const KeyError& e) {
    // ThrowVaultError's advice is about the data-key provider's variables; a column job names
    // the application's key itself.
    if (std::string(e.what()).find(" does not exist") == std::string::npos) throw;
    throw KeyError("Transit key " + key_ref + " does not exist at " + config_.connection.addr +
                   "; check --transit-key: it is the key the application encrypts with");
  }
  if (!BoolOr(data, "supports_encryption", true)) {
    throw KeyError("Transit key " + key_ref + " (type " + StringOr(data, "type", "?") +
                   ") cannot encrypt, so it cannot rewrap; rotate values of an aes256-gcm96 key");
  }
  KeyInfo info;
  info.derived = BoolOr(data, "derived", false);
  auto number = [&data](const char* name, int fallback) {
    auto it = data.find(name);
    return it != data.end() && it->is_number_integer() ? it->get<int>() : fallback;
  };
  info.latest_version = number("latest_version", 0);
  info.min_decryption_version = number("min_decryption_version", 1);
  if (info.latest_version < 1) Malformed("keys", "no latest_version");
  return info;
}

std::optional<int> TransitCiphertextVersion(std::string_view value) {
  if (!LooksLikeTransitCiphertext(std::string(value))) return std::nullopt;
  size_t colon = value.find(':', 7);
  if (colon - 7 > 9) return std::nullopt;
  return std::stoi(std::string(value.substr(7, colon - 7)));
}

std::string VaultTransitClient::Describe() {
  json data = ReadKey(default_key_);
  RequireDerived(default_key_, data);
  std::string line = std::string(kVaultTransitProvider) + " (key " + default_key_ref() + ", " +
                     StringOr(data, "type", "?") + ", derived";
  if (data.contains("latest_version") && data["latest_version"].is_number_integer()) {
    line += ", latest version " + std::to_string(data["latest_version"].get<int64_t>());
  }
  line += ", at " + config_.connection.addr;
  if (!config_.connection.name_space.empty()) {
    line += ", namespace " + config_.connection.name_space;
  }
  return line + ", " + auth_.Source() + ")";
}

}  // namespace rekey::kms
