// AwsKmsClient against a scripted HttpTransport: the error mapping table, the requests it sends,
// and its refusal of every malformed response (without crashing).
#include "kms/aws_kms.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <typeinfo>

#include "common/error.h"
#include "kms/aws_errors.h"

namespace rekey::kms {
namespace {

using nlohmann::json;

// Answers every Post with the scripted response and records the requests.
class FakeTransport : public HttpTransport {
 public:
  HttpResponse Post(const HttpRequest& request) override {
    requests.push_back(request);
    if (throw_transient) throw TransientError("cannot reach " + request.url + ": timed out");
    return response;
  }
  HttpResponse response;
  bool throw_transient = false;
  std::vector<HttpRequest> requests;
};

constexpr char kKeyArn[] = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd";

std::unique_ptr<AwsKmsClient> Client(std::shared_ptr<FakeTransport> transport) {
  AwsKmsConfig config;
  config.region = "eu-west-1";
  config.endpoint = "https://kms.eu-west-1.amazonaws.com";
  config.key_id = "alias/rekey";
  AwsCredentials creds{"AKID", "SECRET", "", std::nullopt};
  return std::make_unique<AwsKmsClient>(config, transport,
                                        std::make_shared<StaticCredentialsProvider>(creds));
}

HttpResponse Json(long status, const json& body) {
  return HttpResponse{status, {}, body.dump()};
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
  std::string type;  // as sent in __type
  Kind kind;
  std::string must_mention;
};

TEST(AwsKmsErrors, TableOfErrorTypes) {
  const std::vector<ErrorCase> cases = {
      {400, "ThrottlingException", Kind::kTransient, "will retry"},
      {400, "com.amazonaws.kms#ThrottlingException", Kind::kTransient, "ThrottlingException"},
      {500, "KMSInternalException", Kind::kTransient, "KMSInternalException"},
      {500, "DependencyTimeoutException", Kind::kTransient, "DependencyTimeoutException"},
      {500, "KeyUnavailableException", Kind::kTransient, "KeyUnavailableException"},
      {503, "", Kind::kTransient, "HTTP 503"},
      {502, "SomethingNew", Kind::kTransient, "SomethingNew"},
      {400, "AccessDeniedException", Kind::kKey, "lacks kms:Decrypt on alias/x"},
      {400, "DisabledException", Kind::kKey, "enable-key"},
      {400, "KMSInvalidStateException", Kind::kKey, "pending deletion"},
      {400, "NotFoundException", Kind::kKey, "REKEY_AWS_KMS_KEY_ID"},
      {400, "InvalidCiphertextException", Kind::kKey, "corrupt"},
      {400, "IncorrectKeyException", Kind::kKey, "kms_key_ref"},
      {400, "UnrecognizedClientException", Kind::kConfig, "AWS_REGION"},
      {400, "InvalidSignatureException", Kind::kConfig, "clock"},
      {403, "", Kind::kPermanent, "HTTP 403"},
      {400, "SomethingNew", Kind::kPermanent, "SomethingNew"},
  };
  for (const ErrorCase& c : cases) {
    SCOPED_TRACE(c.type + " " + std::to_string(c.status));
    std::string body = c.type.empty()
                           ? "<html>bad gateway</html>"
                           : json{{"__type", c.type}, {"message", "server says hi"}}.dump();
    try {
      ThrowAwsError(c.status, body, "", "Decrypt", "alias/x", "7");
      ADD_FAILURE() << "no exception";
    } catch (const Error& e) {
      EXPECT_EQ(KindOf(e), c.kind) << e.what();
      std::string what = e.what();
      EXPECT_NE(what.find(c.must_mention), std::string::npos) << what;
      EXPECT_NE(what.find("alias/x"), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
      if (!c.type.empty()) {
        EXPECT_NE(what.find("server says hi"), std::string::npos) << what;
      }
    }
  }
}

TEST(AwsKmsErrors, TypeFromBodyOrHeader) {
  EXPECT_EQ(AwsErrorType(R"({"__type":"com.amazonaws.kms#DisabledException"})"),
            "DisabledException");
  EXPECT_EQ(AwsErrorType("not json", "ThrottlingException:http://internal.amazon.com/"),
            "ThrottlingException");
  EXPECT_EQ(AwsErrorType(R"({"__type": 7})"), "");
  EXPECT_EQ(AwsErrorType(""), "");
  EXPECT_EQ(AwsErrorType("[1,2"), "");
}

TEST(AwsKmsClient, GenerateDataKeySendsJson11WithContext) {
  auto t = std::make_shared<FakeTransport>();
  Bytes plain(32, 0xab);
  t->response = Json(200, {{"Plaintext", Base64Encode(plain)},
                           {"CiphertextBlob", Base64Encode(Bytes{1, 2, 3})},
                           {"KeyId", kKeyArn}});
  GeneratedDataKey k = Client(t)->GenerateDataKey(42);
  EXPECT_EQ(Bytes(k.plaintext.data(), k.plaintext.data() + 32), plain);
  EXPECT_EQ(k.wrapped, (Bytes{1, 2, 3}));
  EXPECT_EQ(k.kms_key_ref, kKeyArn);
  ASSERT_EQ(t->requests.size(), 1u);
  const HttpRequest& r = t->requests[0];
  EXPECT_EQ(r.url, "https://kms.eu-west-1.amazonaws.com/");
  ASSERT_TRUE(r.sigv4);
  EXPECT_EQ(r.sigv4->service, "kms");
  EXPECT_EQ(r.sigv4->region, "eu-west-1");
  bool target = false, type = false;
  for (const auto& [name, value] : r.headers) {
    if (name == "X-Amz-Target") target = value == "TrentService.GenerateDataKey";
    if (name == "Content-Type") type = value == "application/x-amz-json-1.1";
  }
  EXPECT_TRUE(target && type);
  EXPECT_EQ(json::parse(r.body), (json{{"KeyId", "alias/rekey"},
                                       {"KeySpec", "AES_256"},
                                       {"EncryptionContext", {{"rekey_key_id", "42"}}}}));
}

TEST(AwsKmsClient, DecryptPinsKeyIdAndContext) {
  auto t = std::make_shared<FakeTransport>();
  t->response = Json(200, {{"Plaintext", Base64Encode(Bytes(32, 7))}, {"KeyId", kKeyArn}});
  Secret s = Client(t)->UnwrapDataKey(9, kKeyArn, Bytes{5, 6});
  EXPECT_EQ(s.size(), 32u);
  EXPECT_EQ(json::parse(t->requests[0].body),
            (json{{"KeyId", kKeyArn},
                  {"CiphertextBlob", Base64Encode(Bytes{5, 6})},
                  {"EncryptionContext", {{"rekey_key_id", "9"}}}}));
}

// Tink's AwsKmsAead (tink-java AwsKmsAead, tink-go awskms): KeyId and Plaintext, and the
// EncryptionContext {"associatedData": lowercase hex(ad)} only for non-empty associated data.
TEST(AwsKmsClient, EncryptBlobSendsWhatTinksAwsKmsAeadSends) {
  auto t = std::make_shared<FakeTransport>();
  t->response = Json(200, {{"CiphertextBlob", Base64Encode(Bytes{9, 8, 7})}, {"KeyId", kKeyArn}});
  auto c = Client(t);
  const Bytes keyset = {0x08, 0x01, 0x12, 0x00};
  EXPECT_EQ(c->EncryptBlob(kKeyArn, Secret(keyset.data(), keyset.size()), Bytes()),
            (Bytes{9, 8, 7}));
  ASSERT_EQ(t->requests.size(), 1u);
  EXPECT_EQ(t->requests[0].headers[1].second, "TrentService.Encrypt");
  EXPECT_EQ(json::parse(t->requests[0].body),
            (json{{"KeyId", kKeyArn}, {"Plaintext", "CAESAA=="}}));

  c->EncryptBlob("alias/keysets", Secret(keyset.data(), keyset.size()), ToBytes("ad\xff"));
  EXPECT_EQ(json::parse(t->requests[1].body),
            (json{{"KeyId", "alias/keysets"},
                  {"Plaintext", "CAESAA=="},
                  {"EncryptionContext", {{"associatedData", "6164ff"}}}}));
}

TEST(AwsKmsClient, DecryptBlobPinsTheKeyAndRefusesAnotherKeyArn) {
  auto t = std::make_shared<FakeTransport>();
  t->response = Json(200, {{"Plaintext", "CAESAA=="}, {"KeyId", kKeyArn}});
  auto c = Client(t);
  Secret plain = c->DecryptBlob(kKeyArn, Bytes{9, 8, 7}, ToBytes("ad"));
  EXPECT_EQ(Bytes(plain.data(), plain.data() + plain.size()), (Bytes{0x08, 0x01, 0x12, 0x00}));
  EXPECT_EQ(json::parse(t->requests[0].body),
            (json{{"KeyId", kKeyArn},
                  {"CiphertextBlob", "CQgH"},
                  {"EncryptionContext", {{"associatedData", "6164"}}}}));
  EXPECT_EQ(t->requests[0].headers[1].second, "TrentService.Decrypt");
  // Empty associated data: no EncryptionContext at all, as Tink sends for keysets.
  c->DecryptBlob("alias/keysets", Bytes{9, 8, 7}, Bytes());
  EXPECT_EQ(json::parse(t->requests[1].body),
            (json{{"KeyId", "alias/keysets"}, {"CiphertextBlob", "CQgH"}}));
  // A key ARN must be the key KMS used ("decryption failed: wrong key id" in Tink).
  EXPECT_THROW(c->DecryptBlob("arn:aws:kms:eu-west-1:111122223333:key/other", Bytes{9}, Bytes()),
               KeyError);
  // Replies that are not KMS's: PermanentError, never a crash.
  for (const char* body : {"", "[]", R"({"KeyId": "x"})", R"({"Plaintext": "%%", "KeyId": "x"})",
                           R"({"Plaintext": "CAESAA=="})"}) {
    SCOPED_TRACE(body);
    t->response = HttpResponse{200, {}, body};
    EXPECT_THROW(c->DecryptBlob(kKeyArn, Bytes{9}, Bytes()), PermanentError);
  }
  // Errors are classified as every call's: a key the caller may not use is a KeyError.
  t->response = Json(400, {{"__type", "AccessDeniedException"}, {"message", "no"}});
  EXPECT_THROW(c->EncryptBlob(kKeyArn, Secret(4), Bytes()), KeyError);
  t->response = Json(400, {{"__type", "ThrottlingException"}});
  EXPECT_THROW(c->DecryptBlob(kKeyArn, Bytes{9}, Bytes()), TransientError);
}

TEST(AwsKmsClient, MalformedResponsesAreErrorsNeverCrashes) {
  const std::vector<std::string> bodies = {
      "",
      "not json",
      "[]",
      "null",
      R"({"Plaintext": 5})",
      R"({"KeyId": "x"})",
      R"({"Plaintext": "!!!not base64!!!", "KeyId": "x"})",
      R"({"Plaintext": "AAAA", "KeyId": "x"})",  // 3 bytes
      R"({"Plaintext": ")" + Base64Encode(Bytes(31, 1)) + R"(", "KeyId": "x"})",
      R"({"Plaintext": ")" + Base64Encode(Bytes(33, 1)) + R"(", "KeyId": "x"})",
      R"({"Plaintext": ")" + Base64Encode(Bytes(32, 1)) + R"(", "CiphertextBlob": "%%"})",
      R"({"Plaintext": ")" + Base64Encode(Bytes(32, 1)) + R"(", "CiphertextBlob": ""})",
      R"({"Plaintext": ")" + Base64Encode(Bytes(32, 1)) + R"(", "CiphertextBlob": "AQID"})",
      std::string(100000, '{'),
  };
  for (const std::string& body : bodies) {
    SCOPED_TRACE(body.substr(0, 80));
    auto t = std::make_shared<FakeTransport>();
    t->response = HttpResponse{200, {}, body};
    auto c = Client(t);
    EXPECT_THROW(c->GenerateDataKey(1), PermanentError);
    EXPECT_THROW(c->UnwrapDataKey(1, kKeyArn, Bytes{1}), PermanentError);
    EXPECT_THROW(c->WrapDataKey(1, Secret(32)), PermanentError);
    EXPECT_THROW(c->Describe(), PermanentError);
  }
}

TEST(AwsKmsClient, EveryTruncationOfAGoodResponseIsHandled) {
  Bytes plain(32, 0x5a);
  std::string good = json{
      {"Plaintext", Base64Encode(plain)},
      {"CiphertextBlob", Base64Encode(Bytes{1, 2, 3})},
      {"KeyId", kKeyArn}}.dump();
  for (size_t n = 0; n <= good.size(); n++) {
    auto t = std::make_shared<FakeTransport>();
    t->response = HttpResponse{200, {}, good.substr(0, n)};
    try {
      GeneratedDataKey k = Client(t)->GenerateDataKey(1);
      EXPECT_EQ(n, good.size());
      EXPECT_EQ(Bytes(k.plaintext.data(), k.plaintext.data() + k.plaintext.size()), plain);
    } catch (const PermanentError&) {
      EXPECT_LT(n, good.size());
    }
  }
}

TEST(AwsKmsClient, DescribeReportsKeyState) {
  auto t = std::make_shared<FakeTransport>();
  t->response = Json(
      200, {{"KeyMetadata", {{"KeyId", "1234abcd"}, {"Arn", kKeyArn}, {"KeyState", "Enabled"}}}});
  std::string line = Client(t)->Describe();
  EXPECT_NE(line.find(kKeyArn), std::string::npos) << line;
  EXPECT_NE(line.find("Enabled"), std::string::npos) << line;
  t->response = Json(
      200, {{"KeyMetadata", {{"KeyId", "1234abcd"}, {"Arn", kKeyArn}, {"KeyState", "Disabled"}}}});
  try {
    Client(t)->Describe();
    ADD_FAILURE();
  } catch (const KeyError& e) {
    EXPECT_NE(std::string(e.what()).find("alias/rekey"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Disabled"), std::string::npos) << e.what();
  }
}

TEST(AwsKmsClient, TransportFailureStaysTransientAndLocalRefsAreRefused) {
  auto t = std::make_shared<FakeTransport>();
  t->throw_transient = true;
  EXPECT_THROW(Client(t)->GenerateDataKey(1), TransientError);
  EXPECT_THROW(Client(t)->UnwrapDataKey(1, "local:0011223344556677", Bytes{1}), KeyError);
}

TEST(AwsKmsConfig, FromEnvironment) {
  std::map<std::string, std::string> env = {{"AWS_DEFAULT_REGION", "ap-south-1"},
                                            {"REKEY_AWS_KMS_KEY_ID", "alias/rekey"}};
  GetenvFn getenv = [&](const char* n) -> std::optional<std::string> {
    auto it = env.find(n);
    return it == env.end() ? std::nullopt : std::optional<std::string>(it->second);
  };
  AwsKmsConfig c = AwsKmsConfigFromEnv(getenv);
  EXPECT_EQ(c.endpoint, "https://kms.ap-south-1.amazonaws.com");
  env["AWS_ENDPOINT_URL_KMS"] = "http://127.0.0.1:9/";
  EXPECT_EQ(AwsKmsConfigFromEnv(getenv).endpoint, "http://127.0.0.1:9");
  env.erase("REKEY_AWS_KMS_KEY_ID");
  EXPECT_THROW(AwsKmsConfigFromEnv(getenv), ConfigError);
  env["REKEY_AWS_KMS_KEY_ID"] = "k";
  env.erase("AWS_DEFAULT_REGION");
  EXPECT_THROW(AwsKmsConfigFromEnv(getenv), ConfigError);
}

}  // namespace
}  // namespace rekey::kms
