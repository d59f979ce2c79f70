#include "kms/aws_errors.h"

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/error_table.h"

namespace rekey::kms {

namespace {

std::string StripPrefix(std::string type) {
  size_t hash = type.rfind('#');
  if (hash != std::string::npos) type = type.substr(hash + 1);
  size_t colon = type.find(':');
  if (colon != std::string::npos) type = type.substr(0, colon);
  return type;
}

// The server's "message" (or "Message"), cut to one short line.
std::string ServerMessage(std::string_view body) {
  nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  std::string message;
  if (j.is_object()) {
    for (const char* field : {"message", "Message"}) {
      auto it = j.find(field);
      if (it != j.end() && it->is_string()) message = it->get<std::string>();
    }
  }
  for (char& c : message) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  if (message.size() > 300) message = message.substr(0, 300) + "...";
  return message;
}

}  // namespace

std::string AwsErrorType(std::string_view body, std::string_view error_type_header) {
  nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object()) {
    auto it = j.find("__type");
    if (it != j.end() && it->is_string()) return StripPrefix(it->get<std::string>());
  }
  return StripPrefix(std::string(error_type_header));
}

AwsErrorClass ClassifyAwsError(long http_status, const std::string& type) {
  // The kAwsKms rows of the error table (common/error_table.h): the name, then the status.
  const ErrorRule* rule = type.empty() ? nullptr : FindErrorRule(ErrorSource::kAwsKms, type);
  if (rule == nullptr && (http_status >= 500 || http_status == 429)) {
    rule = FindErrorRule(ErrorSource::kAwsKms, http_status == 429 ? "429" : "5xx");
  }
  switch (rule ? rule->error_class : ErrorClass::kPermanent) {
    case ErrorClass::kTransient:
      return AwsErrorClass::kTransient;
    case ErrorClass::kKey:
      return AwsErrorClass::kKey;
    case ErrorClass::kConfig:
      return AwsErrorClass::kConfig;
    case ErrorClass::kState:
    case ErrorClass::kPermanent:
      break;
  }
  return AwsErrorClass::kUnknown;
}

void ThrowAwsError(long http_status, std::string_view body, std::string_view error_type_header,
                   const std::string& operation, const std::string& kms_key,
                   const std::string& data_key_id) {
  const std::string type = AwsErrorType(body, error_type_header);
  const std::string server = ServerMessage(body);
  const std::string what = "AWS KMS " + operation +
                           (data_key_id.empty() ? "" : " for data key " + data_key_id) + " on " +
                           kms_key + " failed: " + (type.empty() ? "HTTP " : type + " (HTTP ") +
                           std::to_string(http_status) + (type.empty() ? "" : ")");
  const std::string detail = server.empty() ? "" : " [" + server + "]";
  std::string fix;
  if (type == "AccessDeniedException") {
    fix = "the IAM role lacks kms:" + operation + " on " + kms_key +
          " (or the encryption-context condition does not match); see docs/kms.md for the policy";
  } else if (type == "DisabledException") {
    fix = "KMS key " + kms_key + " is disabled; enable it (aws kms enable-key --key-id " + kms_key +
          ") before rekey can use it";
  } else if (type == "KMSInvalidStateException") {
    fix = "KMS key " + kms_key +
          " is not usable in its current state (pending deletion or import?); cancel the "
          "deletion or pick another key";
  } else if (type == "NotFoundException") {
    fix = "KMS key " + kms_key +
          " does not exist in this region/account; check "
          "REKEY_AWS_KMS_KEY_ID and AWS_REGION";
  } else if (type == "InvalidCiphertextException") {
    fix = "the wrapped key does not decrypt under " + kms_key +
          " with its encryption context: it is corrupt or was moved from another row";
  } else if (type == "IncorrectKeyException") {
    fix = "the wrapped key was not produced by " + kms_key +
          "; check rekey.keys.kms_key_ref for this key";
  } else if (type == "UnrecognizedClientException" || type == "InvalidClientTokenId") {
    fix =
        "AWS rejected the credentials; check AWS_ACCESS_KEY_ID / the web identity role and "
        "AWS_REGION";
  } else if (type == "InvalidSignatureException" || type == "SignatureDoesNotMatch" ||
             type == "IncompleteSignature") {
    fix =
        "AWS rejected the request signature; check AWS_SECRET_ACCESS_KEY, AWS_REGION and the "
        "system clock";
  }
  std::string message = what + (fix.empty() ? "" : ": " + fix) + detail;
  switch (ClassifyAwsError(http_status, type)) {
    case AwsErrorClass::kTransient:
      throw TransientError(message + "; will retry");
    case AwsErrorClass::kKey:
      throw KeyError(message);
    case AwsErrorClass::kConfig:
      throw ConfigError(message);
    case AwsErrorClass::kUnknown:
      break;
  }
  throw PermanentError(message);
}

}  // namespace rekey::kms
