// Fuzz target: everything rekey parses from AWS -- KMS JSON replies and errors (kms/aws_kms.cpp,
// kms/aws_errors.cpp) and STS AssumeRoleWithWebIdentity XML (kms/aws_credentials.cpp) -- driven
// through the real AwsKmsClient and WebIdentityCredentialsProvider over a ScriptedTransport.
//
// Input: [operation][script...]. The script holds the HTTP replies in call order (see
// fuzz_support.h); calls past its end get the reply a real server would send. With bit 0x40 of
// the operation the client uses web identity credentials, so the first call is STS.
// Invariants: only rekey::Error escapes; a data key that comes back is exactly 32 bytes.

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "common/bytes.h"
#include "fuzz_support.h"
#include "kms/aws_credentials.h"
#include "kms/aws_errors.h"
#include "kms/aws_kms.h"

namespace {

using rekey::fuzz::FuzzCheck;
using rekey::fuzz::Reply;
using rekey::kms::HttpRequest;
using rekey::kms::HttpResponse;

constexpr char kArn[] =
    "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
constexpr char kBlob[] = "AQIDAHhBmE0qgRmlV5pbkBYYZbsH8qyVXnbN0aYZgPvz6lmVBwAAAH4wfAYJKoZIhvcN";
constexpr char kPlain[] = "F3JTeKj9tUs7lOviLSHFuN7DPbFcFQaRpzIlpqt9dQM=";  // 32 bytes

// What AWS answers to a well-formed request (shapes as in tests/kms/aws_kms_server.py).
HttpResponse RealServer(const HttpRequest& request) {
  if (request.body.find("Action=AssumeRoleWithWebIdentity") != std::string::npos) {
    return Reply(200,
                 "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>"
                 "<SessionToken>FQoGZXIvYXdzEJr</SessionToken><SecretAccessKey>wJalrXUtnFEMI"
                 "</SecretAccessKey><Expiration>2099-01-01T00:00:00Z</Expiration><AccessKeyId>"
                 "ASIAEXAMPLE</AccessKeyId></Credentials></AssumeRoleWithWebIdentityResult>"
                 "</AssumeRoleWithWebIdentityResponse>");
  }
  std::string target;
  for (const auto& [name, value] : request.headers) {
    if (name == "X-Amz-Target") target = value;
  }
  const std::string key = std::string("\"KeyId\":\"") + kArn + "\"";
  if (target == "TrentService.GenerateDataKey") {
    return Reply(200, "{\"CiphertextBlob\":\"" + std::string(kBlob) + "\",\"Plaintext\":\"" +
                          kPlain + "\"," + key + "}");
  }
  if (target == "TrentService.Decrypt") {
    return Reply(200, "{\"Plaintext\":\"" + std::string(kPlain) + "\"," + key +
                          ",\"EncryptionAlgorithm\":\"SYMMETRIC_DEFAULT\"}");
  }
  if (target == "TrentService.DescribeKey") {
    return Reply(200, "{\"KeyMetadata\":{\"KeyId\":\"1234abcd\",\"Arn\":\"" + std::string(kArn) +
                          "\",\"KeyState\":\"Enabled\",\"Enabled\":true}}");
  }
  return Reply(200, "{\"CiphertextBlob\":\"" + std::string(kBlob) + "\"," + key + "}");
}

const std::string& TokenFile() {
  static const rekey::fuzz::TempFile token("web-identity-token",
                                           "eyJhbGciOiJSUzI1NiJ9.fuzz.token\n");
  return token.path();
}

void CheckKey(const rekey::Secret& key) {
  FuzzCheck(key.size() == rekey::kms::kDataKeySize, "a data key that is not 32 bytes");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  rekey::fuzz::QuietLogs();
  rekey::fuzz::Reader in(data, size);
  const uint8_t op = in.Byte();
  auto transport = std::make_shared<rekey::fuzz::ScriptedTransport>(&in, RealServer);

  std::shared_ptr<rekey::kms::AwsCredentialsProvider> credentials;
  if (op & 0x40) {
    credentials = std::make_shared<rekey::kms::WebIdentityCredentialsProvider>(
        "arn:aws:iam::111122223333:role/rekey", TokenFile(), "rekey", "https://sts.test",
        *transport);
  } else {
    rekey::kms::AwsCredentials c{"AKIDEXAMPLE", "wJalrXUtnFEMI", "", std::nullopt};
    credentials = std::make_shared<rekey::kms::StaticCredentialsProvider>(c);
  }
  rekey::kms::AwsKmsConfig config;
  config.region = "eu-west-1";
  config.endpoint = "https://kms.test";
  config.key_id = "alias/rekey";
  rekey::kms::AwsKmsClient client(config, transport, credentials);
  const rekey::Bytes wrapped = rekey::ToBytes(kBlob);

  rekey::fuzz::Guarded([&] {
    switch (op & 7) {
      case 0: {
        rekey::kms::GeneratedDataKey k = client.GenerateDataKey(7);
        CheckKey(k.plaintext);
        FuzzCheck(!k.wrapped.empty() && !k.kms_key_ref.empty(), "GenerateDataKey half a result");
        break;
      }
      case 1: {
        const rekey::Secret plain(32);
        rekey::kms::GeneratedDataKey k = client.WrapDataKey(7, plain);
        FuzzCheck(!k.wrapped.empty(), "Encrypt without a blob");
        break;
      }
      case 2:
        CheckKey(client.UnwrapDataKey(7, kArn, wrapped));
        break;
      case 3:
        client.RewrapDataKey(7, kArn, wrapped, "alias/rekey-next");
        break;
      case 4:
        client.Describe();
        break;
      case 5:
        credentials->Get();
        credentials->Invalidate();
        credentials->Get();
        break;
      case 6: {
        // The parsers on their own, for bodies no status byte gets through to them.
        const std::string body = in.Rest();
        (void)rekey::kms::AwsErrorType(body, body);
        (void)rekey::kms::ParseIso8601Utc(body);
        rekey::kms::ParseAssumeRoleWithWebIdentityResponse(body);
        break;
      }
      case 7: {
        const long status = rekey::fuzz::StatusFor(in.Byte());
        const std::string body = in.Rest();
        rekey::kms::ThrowAwsError(status, body, body.substr(0, 60), "Decrypt", kArn, "7");
      }
    }
  });
  return 0;
}
