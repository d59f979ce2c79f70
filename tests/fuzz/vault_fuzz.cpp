// Fuzz target: everything rekey parses from Vault -- Transit replies (kms/vault_transit.cpp),
// error bodies (kms/vault_errors.cpp) and token lookup, renewal and Kubernetes login replies
// (kms/vault_auth.cpp) -- driven through the real VaultTransitClient and VaultAuth over a
// ScriptedTransport.
//
// Input: [operation][clock step][script...]. The operation's low 4 bits pick the call, bits 4-5
// the authentication method (VAULT_TOKEN, VAULT_TOKEN_FILE, Kubernetes). The fake clock advances
// by `clock step` minutes at every reading, so token renewals and re-logins happen. The script
// holds the HTTP replies in call order (fuzz_support.h); calls past its end get the reply a real
// Vault would send. Every operation runs twice, the second time on a token that may be due.
// Invariants: only rekey::Error escapes; a data key that comes back is exactly 32 bytes; batch
// results match the items one to one.

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "fuzz_support.h"
#include "kms/vault_errors.h"
#include "kms/vault_transit.h"

namespace {

using rekey::fuzz::FuzzCheck;
using rekey::fuzz::Reply;
using rekey::kms::HttpRequest;
using rekey::kms::HttpResponse;

constexpr char kPlain[] = "F3JTeKj9tUs7lOviLSHFuN7DPbFcFQaRpzIlpqt9dQM=";  // 32 bytes
constexpr char kCiphertext[] = "vault:v2:bWFkZSB1cCBidXQgd2VsbC1mb3JtZWQ=";

bool EndsWith(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// What Vault answers to a well-formed request (shapes as in tests/kms/vault_server.py).
HttpResponse RealVault(const HttpRequest& request) {
  const std::string& url = request.url;
  const std::string lease = "\"lease_duration\":3600,\"renewable\":true";
  if (EndsWith(url, "/auth/token/lookup-self")) {
    return Reply(200, "{\"data\":{\"ttl\":3600,\"renewable\":true,\"policies\":[\"rekey\"]}}");
  }
  if (EndsWith(url, "/auth/token/renew-self") || EndsWith(url, "/login")) {
    return Reply(200, "{\"auth\":{\"client_token\":\"hvs.fuzz\"," + lease + "}}");
  }
  if (url.find("/keys/") != std::string::npos) {
    return Reply(200,
                 "{\"data\":{\"type\":\"aes256-gcm96\",\"derived\":true,\"latest_version\":2,"
                 "\"min_decryption_version\":1,\"supports_encryption\":true}}");
  }
  if (url.find("/decrypt/") != std::string::npos) {
    return Reply(200, "{\"data\":{\"plaintext\":\"" + std::string(kPlain) + "\"}}");
  }
  if (url.find("/rewrap/") != std::string::npos &&
      request.body.find("batch_input") != std::string::npos) {
    const nlohmann::json body = nlohmann::json::parse(request.body);
    nlohmann::json results = nlohmann::json::array();
    for (size_t i = 0; i < body["batch_input"].size(); i++) {
      results.push_back({{"ciphertext", kCiphertext}, {"key_version", 2}});
    }
    return Reply(200, nlohmann::json{{"data", {{"batch_results", results}}}}.dump());
  }
  return Reply(
      200, "{\"data\":{\"ciphertext\":\"" + std::string(kCiphertext) + "\",\"key_version\":2}}");
}

void CheckKey(const rekey::Secret& key) {
  FuzzCheck(key.size() == rekey::kms::kDataKeySize, "a data key that is not 32 bytes");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const rekey::fuzz::TempFile token_file("vault-token", "hvs.fromfile\n");
  static const rekey::fuzz::TempFile jwt_file("k8s-jwt", "eyJhbGciOiJSUzI1NiJ9.fuzz.jwt\n");
  rekey::fuzz::QuietLogs();

  rekey::fuzz::Reader in(data, size);
  const uint8_t op = in.Byte();
  const std::chrono::minutes step(in.Byte());
  auto transport = std::make_shared<rekey::fuzz::ScriptedTransport>(&in, RealVault);

  rekey::kms::VaultTransitConfig config;
  config.connection.addr = "https://vault.test:8200";
  config.key = "rekey";
  switch ((op >> 4) % 3) {
    case 0:
      config.auth.method = rekey::kms::VaultAuthMethod::kToken;
      config.auth.token = "hvs.fromenv";
      break;
    case 1:
      config.auth.method = rekey::kms::VaultAuthMethod::kTokenFile;
      config.auth.token_file = token_file.path();
      break;
    case 2:
      config.auth.method = rekey::kms::VaultAuthMethod::kKubernetes;
      config.auth.k8s_role = "rekey";
      config.auth.k8s_jwt_file = jwt_file.path();
      break;
  }
  auto now = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
  rekey::kms::VaultTransitClient client(config, transport, [&now, step] {
    now += step;
    return now;
  });
  const rekey::Bytes wrapped = rekey::ToBytes(kCiphertext);

  auto run = [&] {
    switch (op & 15) {
      case 0:
        CheckKey(client.GenerateDataKey(7).plaintext);
        break;
      case 1:
        client.WrapDataKey(7, rekey::Secret(32));
        break;
      case 2:
        CheckKey(client.UnwrapDataKey(7, "transit/keys/rekey", wrapped));
        break;
      case 3:
        client.RewrapDataKey(7, "transit/keys/rekey", wrapped, "transit/keys/rekey");
        break;
      case 4:
        client.RewrapDataKey(7, "transit/keys/rekey", wrapped, "team/transit/keys/next");
        break;
      case 5:
        client.Describe();
        break;
      case 6: {
        const std::vector<rekey::kms::TransitRewrapItem> items = {
            {kCiphertext, ""}, {"not transit", ""}, {"vault:v1:AAAA", "cmVrZXk="}};
        const auto results = client.RewrapValues("transit/keys/app", items);
        FuzzCheck(results.size() == items.size(), "RewrapValues lost items");
        FuzzCheck(!results[1].error.empty(), "a non-Transit value was rewrapped");
        for (const auto& r : results) {
          FuzzCheck(r.error.empty() != r.ciphertext.empty(), "a result both failed and not");
        }
        break;
      }
      case 7:
        client.ReadTransitKey("transit/keys/app");
        break;
      default: {
        // The parsers on their own, for bodies no status byte gets through to them.
        const std::string body = in.Rest();
        (void)rekey::kms::VaultErrors(body);
        (void)rekey::kms::ParseTransitKeyRef(body);
        (void)rekey::kms::TransitCiphertextVersion(body);
        rekey::kms::ThrowVaultError(rekey::fuzz::StatusFor(op), body, "decrypt", body.substr(0, 40),
                                    "7", "hvs.fromenv");
      }
    }
  };
  rekey::fuzz::Guarded(run);
  rekey::fuzz::Guarded(run);
  (void)client.auth().TokenExpiresIn();
  return 0;
}
