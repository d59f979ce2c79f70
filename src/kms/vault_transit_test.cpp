// VaultTransitClient and VaultAuth against a scripted HttpTransport: the error classification
// table, the configuration table, the requests sent, the token lifecycle (renewal, re-login after
// 403) under a fake clock, and the refusal of malformed responses.
#include "kms/vault_transit.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "harness/process.h"
#include "kms/vault_errors.h"

namespace rekey::kms {
namespace {

using nlohmann::json;

// Routes each request by its Vault path ("transit/decrypt/rekey") to a scripted handler and
// records every request. Unrouted paths answer 404 like Vault.
class FakeVault : public HttpTransport {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&, const json& body)>;
  HttpResponse Post(const HttpRequest& request) override {
    requests.push_back(request);
    std::string path = request.url.substr(request.url.find("/v1/") + 4);
    paths.push_back(request.method + " " + path);
    auto it = routes.find(path);
    if (it == routes.end()) return {404, {}, R"({"errors":[]})"};
    json body = json::parse(request.body.empty() ? "{}" : request.body, nullptr, false);
    return it->second(request, body);
  }
  std::string Header(size_t i, const std::string& name) const {
    for (const auto& [n, v] : requests.at(i).headers) {
      if (n == name) return v;
    }
    return "";
  }
  std::map<std::string, Handler> routes;
  std::vector<HttpRequest> requests;
  std::vector<std::string> paths;
};

HttpResponse Ok(const json& j) {
  return {200, {}, j.dump()};
}

HttpResponse Err(long status, const std::vector<std::string>& errors) {
  return {status, {}, json{{"errors", errors}}.dump()};
}

std::string TokenOf(const HttpRequest& r) {
  for (const auto& [n, v] : r.headers) {
    if (n == "X-Vault-Token") return v;
  }
  return "";
}

const std::string kKey32 = Base64Encode(Bytes(32, 0x5a));

// A derived aes256-gcm96 key "rekey" at "transit", token "s.good" with TTL `ttl`.
void ScriptHappyVault(FakeVault* v, int ttl = 0) {
  v->routes["auth/token/lookup-self"] = [ttl](const HttpRequest& r, const json&) {
    if (TokenOf(r) != "s.good") return Err(403, {"permission denied"});
    return Ok({{"data", {{"ttl", ttl}, {"renewable", ttl > 0}, {"policies", {"rekey"}}}}});
  };
  v->routes["transit/keys/rekey"] = [](const HttpRequest&, const json&) {
    return Ok({{"data",
                {{"type", "aes256-gcm96"},
                 {"derived", true},
                 {"latest_version", 2},
                 {"supports_encryption", true}}}});
  };
  v->routes["transit/datakey/wrapped/rekey"] = [](const HttpRequest&, const json&) {
    return Ok({{"data", {{"ciphertext", "vault:v2:d3JhcHBlZA=="}, {"key_version", 2}}}});
  };
  v->routes["transit/decrypt/rekey"] = [](const HttpRequest&, const json& b) {
    if (b.value("context", "") != TransitContext(7)) {
      return Err(400, {"cipher: message authentication failed"});
    }
    return Ok({{"data", {{"plaintext", kKey32}}}});
  };
  v->routes["transit/encrypt/rekey"] = [](const HttpRequest&, const json&) {
    return Ok({{"data", {{"ciphertext", "vault:v2:ZW5j"}, {"key_version", 2}}}});
  };
}

VaultTransitConfig Config(VaultAuthConfig auth = {}) {
  VaultTransitConfig c;
  c.connection.addr = "https://vault.example:8200";
  c.connection.name_space = "team-a";
  c.key = "rekey";
  if (auth.token.empty() && auth.method == VaultAuthMethod::kToken) auth.token = "s.good";
  c.auth = auth;
  return c;
}

enum class Kind { kTransient, kKey, kConfig, kPermanent };

Kind KindOf(const std::exception& e) {
  if (dynamic_cast<const TransientError*>(&e)) return Kind::kTransient;
  if (dynamic_cast<const KeyError*>(&e)) return Kind::kKey;
  if (dynamic_cast<const ConfigError*>(&e)) return Kind::kConfig;
  return Kind::kPermanent;
}

struct ErrorCase {
  long status;
  std::vector<std::string> errors;
  Kind kind;
  std::string must_mention;
};

TEST(VaultErrors, TableOfStatusesAndMessages) {
  const std::vector<ErrorCase> cases = {
      {429,
       {"request path \"transit/decrypt/rekey\": rate limit quota exceeded"},
       Kind::kTransient,
       "REKEY_KMS_CALLS_PER_SECOND"},
      {500, {"internal error"}, Kind::kTransient, "will retry"},
      {502, {}, Kind::kTransient, "HTTP 502"},
      {503, {"Vault is sealed"}, Kind::kTransient, "unseal it"},
      {503, {"error performing token check: Vault is sealed"}, Kind::kTransient, "sealed"},
      {504, {}, Kind::kTransient, "will retry"},
      {412, {"required index state not present"}, Kind::kTransient, "will retry"},
      {473, {}, Kind::kTransient, "will retry"},
      {400, {"cipher: message authentication failed"}, Kind::kKey, "moved from another row"},
      {400, {"invalid ciphertext: no prefix"}, Kind::kKey, "not a Transit ciphertext"},
      {400, {"encryption key not found"}, Kind::kKey, "REKEY_VAULT_TRANSIT_KEY"},
      {400,
       {"ciphertext or signature version is disallowed by policy (too old)"},
       Kind::kKey,
       "min_decryption_version"},
      {403, {"permission denied"}, Kind::kKey, "docs/kms.md"},
      {403, {"1 error occurred:\n\t* permission denied\n\n"}, Kind::kKey, "* permission denied"},
      {401, {}, Kind::kKey, "docs/kms.md"},
      {404, {}, Kind::kKey, "does not exist"},
      {404,
       {"no handler for route \"team/transit/decrypt/rekey\""},
       Kind::kKey,
       "REKEY_VAULT_TRANSIT_MOUNT"},
      {405, {"unsupported operation"}, Kind::kPermanent, "unsupported operation"},
      {418, {}, Kind::kPermanent, "HTTP 418"},
  };
  for (const ErrorCase& c : cases) {
    SCOPED_TRACE(std::to_string(c.status) + " " + (c.errors.empty() ? "" : c.errors[0]));
    try {
      ThrowVaultError(c.status, json{{"errors", c.errors}}.dump(), "decrypt", "transit/keys/rekey",
                      "7", "s.secret");
      ADD_FAILURE() << "no exception";
    } catch (const Error& e) {
      std::string what = e.what();
      EXPECT_EQ(KindOf(e), c.kind) << what;
      EXPECT_NE(what.find(c.must_mention), std::string::npos) << what;
      EXPECT_NE(what.find("transit/keys/rekey"), std::string::npos) << what;
      EXPECT_NE(what.find("data key 7"), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
      EXPECT_EQ(what.find('\t'), std::string::npos) << what;
    }
  }
}

TEST(VaultErrors, ServerTextIsSurfacedButNeverTheToken) {
  try {
    ThrowVaultError(400, R"({"errors":["bad token s.secret here", "second"]})", "decrypt",
                    "transit/keys/rekey", "", "s.secret");
    FAIL();
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_EQ(what.find("s.secret"), std::string::npos) << what;
    EXPECT_NE(what.find("bad token <redacted> here; second"), std::string::npos) << what;
  }
}

TEST(VaultErrors, ErrorsArrayParsing) {
  EXPECT_EQ(VaultErrors(R"({"errors":["a","b"]})"), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(VaultErrors("<html>").empty());
  EXPECT_TRUE(VaultErrors(R"({"errors":"x"})").empty());
  EXPECT_TRUE(VaultErrors(R"({"errors":[1, null]})").empty());
  EXPECT_TRUE(VaultErrors("").empty());
}

GetenvFn Env(std::map<std::string, std::string> vars) {
  return [vars](const char* name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(VaultTransitConfig, TableOfEnvironments) {
  const std::map<std::string, std::string> base = {{"VAULT_ADDR", "https://vault:8200/"},
                                                   {"VAULT_TOKEN", "s.tok"},
                                                   {"REKEY_VAULT_TRANSIT_KEY", "rekey"}};
  struct Bad {
    std::string name;
    std::map<std::string, std::string> changes;  // "" value = remove
    std::string must_mention;
  };
  const std::vector<Bad> bad = {
      {"no address", {{"VAULT_ADDR", ""}}, "VAULT_ADDR"},
      {"address without scheme", {{"VAULT_ADDR", "vault:8200"}}, "VAULT_ADDR"},
      {"no key", {{"REKEY_VAULT_TRANSIT_KEY", ""}}, "REKEY_VAULT_TRANSIT_KEY"},
      {"key with slash", {{"REKEY_VAULT_TRANSIT_KEY", "a/b"}}, "REKEY_VAULT_TRANSIT_KEY"},
      {"mount with space",
       {{"REKEY_VAULT_TRANSIT_MOUNT", "my transit"}},
       "REKEY_VAULT_TRANSIT_MOUNT"},
      {"no auth", {{"VAULT_TOKEN", ""}}, "REKEY_VAULT_K8S_ROLE"},
      {"unreadable CA", {{"VAULT_CACERT", "/nonexistent/ca.pem"}}, "VAULT_CACERT"},
      {"bad k8s mount",
       {{"REKEY_VAULT_K8S_ROLE", "r"}, {"REKEY_VAULT_K8S_MOUNT", "a b"}},
       "REKEY_VAULT_K8S_MOUNT"},
  };
  for (const Bad& b : bad) {
    std::map<std::string, std::string> vars = base;
    for (const auto& [k, v] : b.changes) {
      if (v.empty()) {
        vars.erase(k);
      } else {
        vars[k] = v;
      }
    }
    try {
      VaultTransitConfigFromEnv(Env(vars));
      ADD_FAILURE() << b.name << ": accepted";
    } catch (const ConfigError& e) {
      std::string what = e.what();
      EXPECT_NE(what.find(b.must_mention), std::string::npos) << b.name << ": " << what;
      EXPECT_EQ(what.find("s.tok"), std::string::npos) << b.name << ": " << what;
    }
  }

  VaultTransitConfig c = VaultTransitConfigFromEnv(Env(base));
  EXPECT_EQ(c.connection.addr, "https://vault:8200");
  EXPECT_EQ(c.mount, "transit");
  EXPECT_EQ(c.auth.method, VaultAuthMethod::kToken);

  auto k8s = base;
  k8s["REKEY_VAULT_K8S_ROLE"] = "rekey";
  k8s["VAULT_TOKEN_FILE"] = "/tmp/t";
  k8s["REKEY_VAULT_TRANSIT_MOUNT"] = "/team/transit/";
  k8s["VAULT_NAMESPACE"] = "ns1";
  c = VaultTransitConfigFromEnv(Env(k8s));
  EXPECT_EQ(c.auth.method, VaultAuthMethod::kKubernetes);
  EXPECT_EQ(c.auth.k8s_mount, "kubernetes");
  EXPECT_EQ(c.auth.k8s_jwt_file, "/var/run/secrets/kubernetes.io/serviceaccount/token");
  EXPECT_EQ(c.mount, "team/transit");
  EXPECT_EQ(c.connection.name_space, "ns1");
  k8s.erase("REKEY_VAULT_K8S_ROLE");
  EXPECT_EQ(VaultTransitConfigFromEnv(Env(k8s)).auth.method, VaultAuthMethod::kTokenFile);
}

TEST(VaultTransitKeyRef, ParsesMountAndName) {
  auto r = ParseTransitKeyRef("team/transit/keys/rekey");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->mount, "team/transit");
  EXPECT_EQ(r->name, "rekey");
  for (const char* bad : {"", "rekey", "/keys/rekey", "transit/keys/", "transit/keys/a b",
                          "local:abcd", "arn:aws:kms:us-east-1:1:key/x"}) {
    EXPECT_FALSE(ParseTransitKeyRef(bad)) << bad;
  }
}

TEST(VaultTransitClient, GenerateDataKeySendsDatakeyWrappedThenDecrypt) {
  auto v = std::make_shared<FakeVault>();
  ScriptHappyVault(v.get());
  VaultTransitClient client(Config(), v);
  GeneratedDataKey k = client.GenerateDataKey(7);
  EXPECT_EQ(HexEncode(k.plaintext.data(), 32), HexEncode(Bytes(32, 0x5a)));
  EXPECT_EQ(std::string(k.wrapped.begin(), k.wrapped.end()), "vault:v2:d3JhcHBlZA==");
  EXPECT_EQ(k.kms_key_ref, "transit/keys/rekey");
  EXPECT_EQ(v->paths, (std::vector<std::string>{
                          "GET auth/token/lookup-self", "GET transit/keys/rekey",
                          "POST transit/datakey/wrapped/rekey", "POST transit/decrypt/rekey"}));
  EXPECT_EQ(v->requests[2].url, "https://vault.example:8200/v1/transit/datakey/wrapped/rekey");
  EXPECT_EQ(json::parse(v->requests[2].body),
            (json{{"bits", 256}, {"context", TransitContext(7)}}));
  EXPECT_EQ(json::parse(v->requests[3].body),
            (json{{"ciphertext", "vault:v2:d3JhcHBlZA=="}, {"context", TransitContext(7)}}));
  for (size_t i = 0; i < v->requests.size(); i++) {
    EXPECT_EQ(v->Header(i, "X-Vault-Token"), "s.good") << i;
    EXPECT_EQ(v->Header(i, "X-Vault-Namespace"), "team-a") << i;
  }
  // The derived check is made once per process; unwrapping is a single call.
  v->paths.clear();
  Secret s = client.UnwrapDataKey(7, "transit/keys/rekey", k.wrapped);
  EXPECT_EQ(s.size(), 32u);
  EXPECT_EQ(v->paths, (std::vector<std::string>{"POST transit/decrypt/rekey"}));
  client.WrapDataKey(7, s);
  EXPECT_EQ(v->paths.back(), "POST transit/encrypt/rekey");
  EXPECT_EQ(v->paths.size(), 2u);
}

TEST(VaultTransitClient, ContextBindsTheKeyId) {
  EXPECT_EQ(TransitContext(42), Base64Encode(ToBytes("rekey_key_id=42")));
  auto v = std::make_shared<FakeVault>();
  ScriptHappyVault(v.get());
  VaultTransitClient client(Config(), v);
  try {
    client.UnwrapDataKey(8, "transit/keys/rekey", ToBytes("vault:v1:abcd"));
    FAIL();
  } catch (const KeyError& e) {
    EXPECT_NE(std::string(e.what()).find("moved from another row"), std::string::npos) << e.what();
  }
}

// tink-go-hcvault's Aead: plaintext in base64, "context" = base64(ad) only for non-empty
// associated data, the ciphertext the bytes of the vault:vN: string; no derived-key check (a
// keyset's key is not derived, Tink sends no context).
TEST(VaultTransitClient, BlobsAreWhatTinkGoHcvaultSends) {
  auto v = std::make_shared<FakeVault>();
  ScriptHappyVault(v.get());
  json seen;
  v->routes["transit/encrypt/keysets"] = [&seen](const HttpRequest&, const json& b) {
    seen = b;
    return Ok({{"data", {{"ciphertext", "vault:v1:c2VhbGVk"}, {"key_version", 1}}}});
  };
  v->routes["transit/decrypt/keysets"] = [&seen](const HttpRequest&, const json& b) {
    seen = b;
    return Ok({{"data", {{"plaintext", "CAESAA=="}}}});
  };
  VaultTransitClient client(Config(), v);
  const Bytes keyset = {0x08, 0x01, 0x12, 0x00};
  EXPECT_EQ(
      client.EncryptBlob("transit/keys/keysets", Secret(keyset.data(), keyset.size()), Bytes()),
      ToBytes("vault:v1:c2VhbGVk"));
  EXPECT_EQ(seen, (json{{"plaintext", "CAESAA=="}}));
  EXPECT_EQ(v->paths.back(), "POST transit/encrypt/keysets");
  client.EncryptBlob("transit/keys/keysets", Secret(keyset.data(), keyset.size()), ToBytes("ad"));
  EXPECT_EQ(seen, (json{{"plaintext", "CAESAA=="}, {"context", "YWQ="}}));

  Secret plain = client.DecryptBlob("transit/keys/keysets", ToBytes("vault:v1:c2VhbGVk"), Bytes());
  EXPECT_EQ(Bytes(plain.data(), plain.data() + plain.size()), keyset);
  EXPECT_EQ(seen, (json{{"ciphertext", "vault:v1:c2VhbGVk"}}));
  client.DecryptBlob("transit/keys/keysets", ToBytes("vault:v1:c2VhbGVk"), ToBytes("ad"));
  EXPECT_EQ(seen, (json{{"ciphertext", "vault:v1:c2VhbGVk"}, {"context", "YWQ="}}));
  for (const std::string& path : v->paths) {
    EXPECT_NE(path, "GET transit/keys/keysets");  // never read: no derived check
  }

  // Not a Transit ciphertext: KeyError without a call. A malformed ref: ConfigError.
  const size_t calls = v->requests.size();
  EXPECT_THROW(client.DecryptBlob("transit/keys/keysets", Bytes{1, 2, 3}, Bytes()), KeyError);
  EXPECT_EQ(v->requests.size(), calls);
  EXPECT_THROW(client.EncryptBlob("keysets", Secret(4), Bytes()), ConfigError);
  // Errors classified as every call's: a missing key, a derived key without context.
  v->routes["transit/decrypt/keysets"] = [](const HttpRequest&, const json&) {
    return Err(400, {"cipher: message authentication failed"});
  };
  EXPECT_THROW(client.DecryptBlob("transit/keys/keysets", ToBytes("vault:v1:c2VhbGVk"), Bytes()),
               KeyError);
  v->routes["transit/encrypt/keysets"] = [](const HttpRequest&, const json&) {
    return Err(503, {"Vault is sealed"});
  };
  EXPECT_THROW(client.EncryptBlob("transit/keys/keysets", Secret(4), Bytes()), TransientError);
  v->routes["transit/decrypt/keysets"] = [](const HttpRequest&, const json&) {
    return Ok({{"data", {{"plaintext", "%%"}}}});
  };
  EXPECT_THROW(client.DecryptBlob("transit/keys/keysets", ToBytes("vault:v1:c2VhbGVk"), Bytes()),
               PermanentError);
}

TEST(VaultTransitClient, NonDerivedKeyIsRefusedBeforeWrapping) {
  auto v = std::make_shared<FakeVault>();
  ScriptHappyVault(v.get());
  v->routes["transit/keys/rekey"] = [](const HttpRequest&, const json&) {
    return Ok({{"data", {{"type", "aes256-gcm96"}, {"derived", false}}}});
  };
  VaultTransitClient client(Config(), v);
  try {
    client.GenerateDataKey(1);
    FAIL();
  } catch (const KeyError& e) {
    EXPECT_NE(std::string(e.what()).find("derived=true"), std::string::npos) << e.what();
  }
  EXPECT_THROW(client.Describe(), KeyError);
  for (const std::string& p : v->paths) EXPECT_EQ(p.find("datakey"), std::string::npos) << p;
}

TEST(VaultTransitClient, ForeignWrappedKeysAreKeyErrorsWithoutACall) {
  auto v = std::make_shared<FakeVault>();
  ScriptHappyVault(v.get());
  VaultTransitClient client(Config(), v);
  EXPECT_THROW(client.UnwrapDataKey(7, "local:abcd", ToBytes("vault:v1:x")), KeyError);
  for (const char* bad : {"", "vault:", "vault:v:abc", "vault:vx:abc", "vault:v1:", "RKMS1abc",
                          "vault:v1:ab\xff", "vault:v1:a\"b"}) {
    EXPECT_THROW(client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes(bad)), KeyError) << bad;
  }
  EXPECT_TRUE(v->paths.empty());
}

TEST(VaultTransitClient, MalformedResponsesAreErrorsNeverCrashes) {
  const std::vector<std::string> bodies = {"",
                                           "not json",
                                           "[]",
                                           "{}",
                                           R"({"data":null})",
                                           R"({"data":{"plaintext":5}})",
                                           R"({"data":{"plaintext":"%%%"}})",
                                           R"({"data":{"plaintext":"AAAA"}})",
                                           R"({"data":{"ciphertext":"plain"}})"};
  for (const std::string& body : bodies) {
    SCOPED_TRACE(body);
    auto v = std::make_shared<FakeVault>();
    ScriptHappyVault(v.get());
    v->routes["transit/decrypt/rekey"] = [body](const HttpRequest&, const json&) {
      return HttpResponse{200, {}, body};
    };
    v->routes["transit/datakey/wrapped/rekey"] = v->routes["transit/decrypt/rekey"];
    v->routes["transit/keys/rekey"] = [body](const HttpRequest&, const json&) {
      return HttpResponse{200, {}, body};
    };
    VaultTransitClient client(Config(), v);
    EXPECT_THROW(client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc")),
                 PermanentError);
    EXPECT_THROW(client.GenerateDataKey(7), PermanentError);
    EXPECT_THROW(client.Describe(), PermanentError);
  }
}

TEST(VaultTransitClient, RewrapInsideOneKeyOrAcrossKeys) {
  auto v = std::make_shared<FakeVault>();
  ScriptHappyVault(v.get());
  v->routes["transit/rewrap/rekey"] = [](const HttpRequest&, const json& b) {
    EXPECT_EQ(b.value("context", ""), TransitContext(7));
    return Ok({{"data", {{"ciphertext", "vault:v3:bmV3"}, {"key_version", 3}}}});
  };
  v->routes["transit/keys/other"] = v->routes["transit/keys/rekey"];
  v->routes["transit/encrypt/other"] = [](const HttpRequest&, const json& b) {
    EXPECT_EQ(b.value("plaintext", ""), kKey32);
    return Ok({{"data", {{"ciphertext", "vault:v1:b3RoZXI="}}}});
  };
  VaultTransitClient client(Config(), v);
  ReWrappedKey same =
      client.Rewrap(7, "transit/keys/rekey", ToBytes("vault:v2:abc"), "transit/keys/rekey");
  EXPECT_EQ(std::string(same.wrapped.begin(), same.wrapped.end()), "vault:v3:bmV3");
  EXPECT_EQ(same.kms_key_ref, "transit/keys/rekey");
  v->paths.clear();
  ReWrappedKey other =
      client.Rewrap(7, "transit/keys/rekey", ToBytes("vault:v2:abc"), "transit/keys/other");
  EXPECT_EQ(other.kms_key_ref, "transit/keys/other");
  EXPECT_EQ(v->paths,
            (std::vector<std::string>{"GET transit/keys/other", "POST transit/decrypt/rekey",
                                      "POST transit/encrypt/other"}));
}

TEST(VaultTransitClient, RewrapValuesInBatchesWithPerItemOutcomes) {
  auto v = std::make_shared<FakeVault>();
  ScriptHappyVault(v.get());
  std::vector<size_t> batch_sizes;
  v->routes["transit/rewrap/app"] = [&](const HttpRequest&, const json& b) {
    json results = json::array();
    bool failed = false;
    for (const json& item : b["batch_input"]) {
      EXPECT_EQ(item.value("context", ""), "Y3R4");
      if (item["ciphertext"] == "vault:v1:YmFk") {
        results.push_back(
            {{"reference", item["reference"]}, {"error", "cipher: message authentication failed"}});
        failed = true;
      } else {
        results.push_back({{"reference", item["reference"]},
                           {"ciphertext", "vault:v2:bmV3"},
                           {"key_version", 2}});
      }
    }
    batch_sizes.push_back(results.size());
    return HttpResponse{
        failed ? 400 : 200, {}, json{{"data", {{"batch_results", results}}}}.dump()};
  };
  VaultTransitClient client(Config(), v);
  std::vector<TransitRewrapItem> items(600, {"vault:v1:b2xk", "Y3R4"});
  items[3].ciphertext = "vault:v1:YmFk";
  items[4].ciphertext = "plaintext!";  // not a Transit value: never sent
  std::vector<TransitRewrapResult> r = client.RewrapValues("transit/keys/app", items);
  ASSERT_EQ(r.size(), 600u);
  EXPECT_EQ(batch_sizes, (std::vector<size_t>{249, 250, 100}));
  EXPECT_EQ(r[0].ciphertext, "vault:v2:bmV3");
  EXPECT_EQ(r[0].key_version, 2);
  EXPECT_TRUE(r[0].error.empty());
  EXPECT_TRUE(r[3].ciphertext.empty());
  EXPECT_EQ(r[3].error, "cipher: message authentication failed");
  EXPECT_TRUE(r[4].ciphertext.empty());
  EXPECT_NE(r[4].error.find("invalid ciphertext"), std::string::npos);
  EXPECT_EQ(r[599].ciphertext, "vault:v2:bmV3");

  // A failure of the whole request is thrown, classified as usual.
  v->routes["transit/rewrap/app"] = [](const HttpRequest&, const json&) {
    return Err(400, {"context should be set either in all the request blocks or in none"});
  };
  EXPECT_THROW(client.RewrapValues("transit/keys/app", items), KeyError);
  v->routes["transit/rewrap/app"] = [](const HttpRequest&, const json&) {
    return Err(429, {"rate limit quota exceeded"});
  };
  EXPECT_THROW(client.RewrapValues("transit/keys/app", items), TransientError);
  v->routes["transit/rewrap/app"] = [](const HttpRequest&, const json&) {
    return Ok({{"data", {{"batch_results", json::array()}}}});
  };
  EXPECT_THROW(client.RewrapValues("transit/keys/app", items), PermanentError);
  EXPECT_THROW(client.RewrapValues("app", items), ConfigError);
}

TEST(VaultTransitCiphertext, Version) {
  EXPECT_EQ(TransitCiphertextVersion("vault:v12:abc="), 12);
  EXPECT_EQ(TransitCiphertextVersion("vault:v1:a"), 1);
  for (const char* bad :
       {"", "vault:v:a", "vault:v1:", "vault:v99999999999:a", "v1:abc", "vault:vx:a"}) {
    EXPECT_FALSE(TransitCiphertextVersion(bad)) << bad;
  }
}

// A clock the test moves by hand.
struct FakeClock {
  std::chrono::steady_clock::time_point now{};
  VaultClock fn() {
    return [this] { return now; };
  }
};

TEST(VaultAuth, TokenIsRenewedAtTwoThirdsOfItsTtl) {
  auto v = std::make_shared<FakeVault>();
  ScriptHappyVault(v.get(), /*ttl=*/30);
  int renewals = 0;
  v->routes["auth/token/renew-self"] = [&](const HttpRequest& r, const json&) {
    EXPECT_EQ(TokenOf(r), "s.good");
    renewals++;
    return Ok(
        {{"auth", {{"client_token", "s.good"}, {"lease_duration", 30}, {"renewable", true}}}});
  };
  FakeClock clock;
  VaultTransitClient client(Config(), v, clock.fn());
  client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc"));
  clock.now += std::chrono::seconds(19);
  client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc"));
  EXPECT_EQ(renewals, 0);
  clock.now += std::chrono::seconds(2);  // 21 s >= 2/3 of 30
  client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc"));
  EXPECT_EQ(renewals, 1);
  clock.now += std::chrono::seconds(19);  // the renewal restarted the clock
  client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc"));
  EXPECT_EQ(renewals, 1);
  EXPECT_EQ(client.auth().renewals(), 1);
  EXPECT_EQ(client.auth().TokenExpiresIn(), std::chrono::seconds(11));
  clock.now += std::chrono::seconds(60);
  EXPECT_EQ(client.auth().TokenExpiresIn(), std::chrono::seconds(0));
}

// Found by tests/fuzz/vault_fuzz: a TTL of 276480064800 s overflowed the clock arithmetic
// (undefined behaviour) when the token was next checked.
TEST(VaultAuth, AnAbsurdTtlIsCappedNotOverflowed) {
  for (const json& ttl : {json(int64_t{276480064800}), json(uint64_t{18446744073709551615u})}) {
    auto v = std::make_shared<FakeVault>();
    ScriptHappyVault(v.get());
    v->routes["auth/token/lookup-self"] = [ttl](const HttpRequest&, const json&) {
      return Ok({{"data", {{"ttl", ttl}, {"renewable", true}}}});
    };
    FakeClock clock;
    VaultTransitClient client(Config(), v, clock.fn());
    client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc"));
    clock.now += std::chrono::hours(24 * 365);
    client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc"));
    EXPECT_EQ(client.auth().renewals(), 0) << ttl;
    EXPECT_EQ(client.auth().TokenExpiresIn(),
              std::chrono::hours(24 * 366 * 10) - std::chrono::hours(24 * 365))
        << ttl;
  }
}

class KubernetesAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = rekey::testing::MakeTempDir("rekey-vault-unit-");
    jwt_file_ = dir_ + "/jwt";
    std::ofstream(jwt_file_) << "jwt-1\n";
    ScriptHappyVault(v_.get());
    v_->routes["auth/kubernetes/login"] = [this](const HttpRequest& r, const json& b) {
      EXPECT_TRUE(TokenOf(r).empty());
      jwts_.push_back(b.value("jwt", ""));
      if (b.value("role", "") != "rekey") return Err(400, {"invalid role name \"x\""});
      std::string token = "s.login" + std::to_string(jwts_.size());
      return Ok(
          {{"auth", {{"client_token", token}, {"lease_duration", 60}, {"renewable", false}}}});
    };
    v_->routes["transit/decrypt/rekey"] = [this](const HttpRequest& r, const json&) {
      if (TokenOf(r) != valid_token_) return Err(403, {"permission denied"});
      return Ok({{"data", {{"plaintext", kKey32}}}});
    };
  }
  void TearDown() override { rekey::testing::RunProcess({"rm", "-rf", dir_}); }

  VaultAuthConfig K8s(const std::string& role = "rekey") {
    VaultAuthConfig a;
    a.method = VaultAuthMethod::kKubernetes;
    a.k8s_role = role;
    a.k8s_jwt_file = jwt_file_;
    return a;
  }

  std::string dir_, jwt_file_;
  std::shared_ptr<FakeVault> v_ = std::make_shared<FakeVault>();
  std::vector<std::string> jwts_;
  std::string valid_token_ = "s.login1";
};

TEST_F(KubernetesAuthTest, PermissionDeniedTriggersOneReLoginAndRetry) {
  FakeClock clock;
  VaultTransitClient client(Config(K8s()), v_, clock.fn());
  client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc"));
  EXPECT_EQ(jwts_, (std::vector<std::string>{"jwt-1"}));
  // The token is revoked; the kubelet rotated the JWT meanwhile.
  valid_token_ = "s.login2";
  std::ofstream(jwt_file_) << "jwt-2";
  client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc"));
  EXPECT_EQ(jwts_, (std::vector<std::string>{"jwt-1", "jwt-2"}));
  EXPECT_EQ(client.auth().logins(), 2);
  // Still denied after the re-login: a KeyError, and exactly one retry.
  valid_token_ = "nobody";
  size_t before = v_->paths.size();
  EXPECT_THROW(client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc")), KeyError);
  EXPECT_EQ(v_->paths.size() - before, 3u);  // decrypt, login, decrypt
}

TEST_F(KubernetesAuthTest, NonRenewableTokenIsReplacedByLoginBeforeItExpires) {
  FakeClock clock;
  VaultTransitClient client(Config(K8s()), v_, clock.fn());
  client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc"));
  clock.now += std::chrono::seconds(41);  // > 2/3 of 60
  valid_token_ = "s.login2";
  client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc"));
  EXPECT_EQ(client.auth().logins(), 2);
  for (const std::string& p : v_->paths) EXPECT_EQ(p.find("renew"), std::string::npos) << p;
}

TEST_F(KubernetesAuthTest, RefusedLoginIsAKeyErrorNamingTheRole) {
  VaultTransitClient client(Config(K8s("x")), v_);
  try {
    client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc"));
    FAIL();
  } catch (const KeyError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("REKEY_VAULT_K8S_ROLE"), std::string::npos) << what;
    EXPECT_EQ(what.find("jwt-1"), std::string::npos) << what;
  }
  VaultAuthConfig missing = K8s();
  missing.k8s_jwt_file = dir_ + "/nope";
  VaultTransitClient no_jwt(Config(missing), v_);
  EXPECT_THROW(no_jwt.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc")), ConfigError);
}

TEST_F(KubernetesAuthTest, TokenFileIsReReadOnceAfterPermissionDenied) {
  std::string file = dir_ + "/token";
  std::ofstream(file) << "s.good\n";
  v_->routes["auth/token/lookup-self"] = [](const HttpRequest& r, const json&) {
    if (TokenOf(r).rfind("s.", 0) != 0) return Err(403, {"permission denied"});
    return Ok({{"data", {{"ttl", 0}, {"renewable", false}}}});
  };
  valid_token_ = "s.good";
  VaultAuthConfig a;
  a.method = VaultAuthMethod::kTokenFile;
  a.token_file = file;
  VaultTransitClient client(Config(a), v_);
  client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc"));
  std::ofstream(file) << "s.agent2";
  valid_token_ = "s.agent2";
  client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc"));
  // Unchanged file: no second retry, the 403 is a KeyError.
  valid_token_ = "s.other";
  try {
    client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc"));
    FAIL();
  } catch (const KeyError& e) {
    EXPECT_EQ(std::string(e.what()).find("s.agent2"), std::string::npos) << e.what();
  }
}

TEST(VaultAuth, RejectedStaticTokenIsAKeyErrorAndTransportFailuresAreTransient) {
  auto v = std::make_shared<FakeVault>();
  ScriptHappyVault(v.get());
  VaultAuthConfig a;
  a.token = "s.bad";
  VaultTransitClient client(Config(a), v);
  try {
    client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc"));
    FAIL();
  } catch (const KeyError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("VAULT_TOKEN"), std::string::npos) << what;
    EXPECT_EQ(what.find("s.bad"), std::string::npos) << what;
  }
  v->routes["auth/token/lookup-self"] = [](const HttpRequest&, const json&) {
    return Err(503, {"Vault is sealed"});
  };
  EXPECT_THROW(client.UnwrapDataKey(7, "transit/keys/rekey", ToBytes("vault:v1:abc")),
               TransientError);
}

}  // namespace
}  // namespace rekey::kms
