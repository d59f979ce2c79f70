#include "kms/aws_kms.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <iterator>
#include <nlohmann/json.hpp>
#include <utility>

#include "common/error.h"
#include "kms/aws_errors.h"

namespace rekey::kms {

namespace {

using nlohmann::json;

json Context(uint32_t key_id) {
  return json{{kRekeyKeyIdContext, std::to_string(key_id)}};
}

[[noreturn]] void Malformed(const std::string& operation, const std::string& what) {
  throw PermanentError("AWS KMS " + operation + " returned a malformed response (" + what +
                       "); check AWS_ENDPOINT_URL_KMS points at AWS KMS");
}

json ParseObject(const std::string& operation, const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) Malformed(operation, "not a JSON object");
  return j;
}

std::string StringField(const std::string& operation, const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end() || !it->is_string() || it->get_ref<const std::string&>().empty()) {
    Malformed(operation, std::string("no ") + field);
  }
  return it->get<std::string>();
}

Bytes Base64Field(const std::string& operation, const json& j, const char* field) {
  std::optional<Bytes> b = Base64Decode(StringField(operation, j, field));
  if (!b || b->empty()) Malformed(operation, std::string(field) + " is not base64");
  return std::move(*b);
}

// Takes the 32-byte plaintext out of `j` and wipes every copy of its text on the way.
Secret PlaintextField(const std::string& operation, json* j, uint32_t key_id) {
  auto it = j->find("Plaintext");
  if (it == j->end() || !it->is_string()) Malformed(operation, "no Plaintext");
  std::string& text = it->get_ref<std::string&>();
  std::optional<Bytes> b = Base64Decode(text);
  WipeAndClear(&text);
  if (!b) Malformed(operation, "Plaintext is not base64");
  Secret key(b->data(), b->size());
  size_t size = b->size();
  WipeAndClear(&*b);
  if (size != kDataKeySize) {
    throw KeyError("AWS KMS " + operation + " returned " + std::to_string(size) +
                   " bytes for data key " + std::to_string(key_id) +
                   ", not 32: the wrapped key is not a rekey data key");
  }
  return key;
}

// The "message" (or "Message") of a KMS error body, "(no message)" if it has none (KMS sends
// InvalidCiphertextException without one).
std::string ServerMessageOf(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object()) {
    for (const char* field : {"message", "Message"}) {
      auto it = j.find(field);
      if (it != j.end() && it->is_string() && !it->get_ref<const std::string&>().empty()) {
        return it->get<std::string>();
      }
    }
  }
  return "(no message)";
}

}  // namespace

AwsKmsConfig AwsKmsConfigFromEnv(const GetenvFn& getenv) {
  auto env = [&](const char* name) {
    std::optional<std::string> v = getenv(name);
    return v && !v->empty() ? v : std::nullopt;
  };
  AwsKmsConfig c;
  std::optional<std::string> region = env("AWS_REGION");
  if (!region) region = env("AWS_DEFAULT_REGION");
  if (!region) throw ConfigError("aws-kms needs a region: set AWS_REGION (e.g. eu-west-1)");
  c.region = *region;
  std::optional<std::string> key = env(kAwsKmsKeyIdEnv);
  if (!key) {
    throw ConfigError(
        "aws-kms needs the KMS key to wrap data keys under: set REKEY_AWS_KMS_KEY_ID to its key "
        "ARN or alias (e.g. alias/rekey)");
  }
  c.key_id = *key;
  c.endpoint = env("AWS_ENDPOINT_URL_KMS").value_or("https://kms." + c.region + ".amazonaws.com");
  while (!c.endpoint.empty() && c.endpoint.back() == '/') c.endpoint.pop_back();
  c.ca_bundle = env("AWS_CA_BUNDLE").value_or("");
  return c;
}

AwsKmsClient::AwsKmsClient(AwsKmsConfig config, std::shared_ptr<HttpTransport> transport,
                           std::shared_ptr<AwsCredentialsProvider> credentials)
    : config_(std::move(config)),
      transport_(std::move(transport)),
      credentials_(std::move(credentials)) {}

std::string AwsKmsClient::Call(const std::string& operation, const std::string& body,
                               const std::string& kms_key, const std::string& data_key_id,
                               std::string* refusal) {
  AwsCredentials creds = credentials_->Get();
  HttpRequest request;
  request.url = config_.endpoint + "/";
  request.headers = {{"Content-Type", "application/x-amz-json-1.1"},
                     {"X-Amz-Target", "TrentService." + operation}};
  request.body = body;
  request.timeout = config_.timeout;
  request.ca_bundle = config_.ca_bundle;
  request.sigv4 = SigV4Signing{config_.region, "kms", creds.access_key_id, creds.secret_access_key,
                               creds.session_token};
  WipeAndClear(&creds.secret_access_key);
  HttpResponse response;
  try {
    response = transport_->Post(request);
  } catch (...) {
    WipeAndClear(&request.body);
    WipeAndClear(&request.sigv4->secret_access_key);
    throw;
  }
  WipeAndClear(&request.body);
  WipeAndClear(&request.sigv4->secret_access_key);
  if (response.status == 200) return std::move(response.body);
  std::string type = AwsErrorType(response.body, response.Header("x-amzn-errortype"));
  // Temporary credentials the server considers expired (clock skew, revoked session): fetch
  // new ones before the retry -- unless they came from the environment, where a retry reads the
  // same expired token again.
  if (type == "ExpiredTokenException") {
    if (!credentials_->Refreshable()) {
      throw ConfigError(
          "AWS KMS " + operation + (data_key_id.empty() ? "" : " for data key " + data_key_id) +
          " on " + kms_key + " failed: ExpiredTokenException (HTTP " +
          std::to_string(response.status) + "): the session token from " + credentials_->Source() +
          " has expired; export fresh temporary credentials (AWS_ACCESS_KEY_ID, "
          "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or use a web identity role");
    }
    credentials_->Invalidate();
  }
  if (refusal && std::find(std::begin(kBlobRefusals), std::end(kBlobRefusals), type) !=
                     std::end(kBlobRefusals)) {
    *refusal = type + ": " + ServerMessageOf(response.body);
    return "";
  }
  ThrowAwsError(response.status, response.body, response.Header("x-amzn-errortype"), operation,
                kms_key, data_key_id);
}

GeneratedDataKey AwsKmsClient::GenerateDataKey(uint32_t key_id) {
  const std::string op = "GenerateDataKey";
  json request = {
      {"KeyId", config_.key_id}, {"KeySpec", "AES_256"}, {"EncryptionContext", Context(key_id)}};
  std::string body = Call(op, request.dump(), config_.key_id, std::to_string(key_id));
  json j = ParseObject(op, body);
  WipeAndClear(&body);
  GeneratedDataKey result;
  result.plaintext = PlaintextField(op, &j, key_id);
  result.wrapped = Base64Field(op, j, "CiphertextBlob");
  result.kms_key_ref = StringField(op, j, "KeyId");
  return result;
}

GeneratedDataKey AwsKmsClient::WrapDataKey(uint32_t key_id, const Secret& plaintext) {
  const std::string op = "Encrypt";
  if (plaintext.size() != kDataKeySize) {
    throw KeyError("data key " + std::to_string(key_id) + " is " +
                   std::to_string(plaintext.size()) + " bytes; data keys must be exactly 32 bytes");
  }
  json request = {{"KeyId", config_.key_id},
                  {"Plaintext", Base64Encode(plaintext.data(), plaintext.size())},
                  {"EncryptionContext", Context(key_id)}};
  std::string request_body = request.dump();
  WipeAndClear(&request["Plaintext"].get_ref<std::string&>());
  std::string body;
  try {
    body = Call(op, request_body, config_.key_id, std::to_string(key_id));
  } catch (...) {
    WipeAndClear(&request_body);
    throw;
  }
  WipeAndClear(&request_body);
  json j = ParseObject(op, body);
  GeneratedDataKey result;
  result.plaintext = plaintext.Clone();
  result.wrapped = Base64Field(op, j, "CiphertextBlob");
  result.kms_key_ref = StringField(op, j, "KeyId");
  return result;
}

Secret AwsKmsClient::UnwrapDataKey(uint32_t key_id, const std::string& kms_key_ref,
                                   const Bytes& wrapped) {
  const std::string op = "Decrypt";
  if (kms_key_ref.rfind("local:", 0) == 0) {
    throw KeyError("cannot unwrap data key " + std::to_string(key_id) + ": it is wrapped by " +
                   kms_key_ref + ", not by AWS KMS; use the KMS provider it was created with");
  }
  json request = {{"KeyId", kms_key_ref},
                  {"CiphertextBlob", Base64Encode(wrapped)},
                  {"EncryptionContext", Context(key_id)}};
  std::string body = Call(op, request.dump(), kms_key_ref, std::to_string(key_id));
  json j = ParseObject(op, body);
  WipeAndClear(&body);
  Secret key = PlaintextField(op, &j, key_id);
  StringField(op, j, "KeyId");  // KMS always names the key it used; a reply without is not KMS
  return key;
}

namespace {

// Tink's AwsKmsAead: the context is set only for non-empty associated data, so a keyset Tink
// encrypted (ad empty) decrypts with no context, as KMS demands.
void AddTinkContext(json* request, const Bytes& associated_data) {
  if (associated_data.empty()) return;
  (*request)["EncryptionContext"] = {{kTinkAssociatedDataContext, HexEncode(associated_data)}};
}

bool IsKeyArn(const std::string& key_ref) {
  return key_ref.rfind("arn:", 0) == 0 && key_ref.find(":key/") != std::string::npos;
}

}  // namespace

Bytes AwsKmsClient::EncryptBlob(const std::string& key_ref, const Secret& plaintext,
                                const Bytes& associated_data) {
  const std::string op = "Encrypt";
  json request = {{"KeyId", key_ref},
                  {"Plaintext", Base64Encode(plaintext.data(), plaintext.size())}};
  AddTinkContext(&request, associated_data);
  std::string request_body = request.dump();
  WipeAndClear(&request["Plaintext"].get_ref<std::string&>());
  std::string body;
  try {
    body = Call(op, request_body, key_ref, "");
  } catch (...) {
    WipeAndClear(&request_body);
    throw;
  }
  WipeAndClear(&request_body);
  return Base64Field(op, ParseObject(op, body), "CiphertextBlob");
}

Secret AwsKmsClient::DecryptBlob(const std::string& key_ref, const Bytes& ciphertext,
                                 const Bytes& associated_data) {
  const std::string op = "Decrypt";
  json request = {{"KeyId", key_ref}, {"CiphertextBlob", Base64Encode(ciphertext)}};
  AddTinkContext(&request, associated_data);
  std::string body = Call(op, request.dump(), key_ref, "");
  json j = ParseObject(op, body);
  WipeAndClear(&body);
  auto it = j.find("Plaintext");
  if (it == j.end() || !it->is_string()) Malformed(op, "no Plaintext");
  std::string& text = it->get_ref<std::string&>();
  std::optional<Bytes> b = Base64Decode(text);
  WipeAndClear(&text);
  if (!b) Malformed(op, "Plaintext is not base64");
  Secret plaintext(b->data(), b->size());
  WipeAndClear(&*b);
  const std::string used = StringField(op, j, "KeyId");
  if (IsKeyArn(key_ref) && used != key_ref) {
    throw KeyError("AWS KMS decrypted it with " + used + ", not " + key_ref +
                   ": wrong key id (as Tink's AwsKmsAead refuses); pass the key that encrypted it");
  }
  return plaintext;
}

ReWrappedKey AwsKmsClient::ReEncrypt(uint32_t key_id, const std::string& source_key_ref,
                                     const Bytes& wrapped, const std::string& destination_key_ref) {
  const std::string op = "ReEncrypt";
  json request = {{"CiphertextBlob", Base64Encode(wrapped)},
                  {"SourceKeyId", source_key_ref},
                  {"SourceEncryptionContext", Context(key_id)},
                  {"DestinationKeyId", destination_key_ref},
                  {"DestinationEncryptionContext", Context(key_id)}};
  std::string body = Call(op, request.dump(), source_key_ref + " -> " + destination_key_ref,
                          std::to_string(key_id));
  json j = ParseObject(op, body);
  ReWrappedKey result;
  result.wrapped = Base64Field(op, j, "CiphertextBlob");
  result.kms_key_ref = StringField(op, j, "KeyId");
  return result;
}

ReEncryptedBlob AwsKmsClient::ReEncryptBlob(const Bytes& blob, const std::string& source_key_ref,
                                            const std::string& destination_key_ref,
                                            const std::string& context) {
  const std::string op = "ReEncrypt";
  json request = {{"CiphertextBlob", Base64Encode(blob)},
                  {"DestinationKeyId", destination_key_ref}};
  if (!source_key_ref.empty()) request["SourceKeyId"] = source_key_ref;
  if (!context.empty()) {
    json ctx = json::parse(context, nullptr, /*allow_exceptions=*/false);
    if (!ctx.is_object()) throw ConfigError("the encryption context is not a JSON object");
    if (!ctx.empty()) {
      request["SourceEncryptionContext"] = ctx;
      request["DestinationEncryptionContext"] = ctx;
    }
  }
  ReEncryptedBlob result;
  const std::string body = Call(op, request.dump(), destination_key_ref, "", &result.refusal);
  if (!result.refusal.empty()) return result;
  json j = ParseObject(op, body);
  result.blob = Base64Field(op, j, "CiphertextBlob");
  result.source_key_arn = StringField(op, j, "SourceKeyId");
  result.key_arn = StringField(op, j, "KeyId");
  return result;
}

GeneratedDataKey AwsKmsClient::RewrapDataKey(uint32_t key_id, const std::string& source_key_ref,
                                             const Bytes& wrapped,
                                             const std::string& destination_key_ref) {
  ReWrappedKey re = ReEncrypt(key_id, source_key_ref, wrapped, destination_key_ref);
  GeneratedDataKey result;
  result.wrapped = std::move(re.wrapped);
  result.kms_key_ref = std::move(re.kms_key_ref);
  return result;
}

std::string AwsKmsClient::CanonicalKeyRef(const std::string& key_ref) {
  const std::string op = "DescribeKey";
  json request = {{"KeyId", key_ref}};
  json j = ParseObject(op, Call(op, request.dump(), key_ref, ""));
  auto meta = j.find("KeyMetadata");
  if (meta == j.end() || !meta->is_object()) Malformed(op, "no KeyMetadata");
  std::string arn = meta->contains("Arn") && (*meta)["Arn"].is_string()
                        ? (*meta)["Arn"].get<std::string>()
                        : StringField(op, *meta, "KeyId");
  std::string state = StringField(op, *meta, "KeyState");
  if (state != "Enabled") {
    throw KeyError("KMS key " + key_ref + " (" + arn + ") is " + state +
                   "; enable it (aws kms enable-key --key-id " + arn + ") or use an enabled key");
  }
  return arn;
}

std::string AwsKmsClient::Describe() {
  std::string arn = CanonicalKeyRef(config_.key_id);
  return std::string(kAwsKmsProvider) + " (key " + arn + ", " + config_.region +
         ", Enabled, credentials from " + credentials_->Source() + ")";
}

}  // namespace rekey::kms
