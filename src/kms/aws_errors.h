// How AWS KMS error responses map onto rekey's error hierarchy (common/error.h).
//
// KMS (JSON 1.1 protocol) reports an error as an HTTP 4xx/5xx whose JSON body has "__type" (the
// exception name, possibly prefixed "com.amazonaws.kms#") and "message". The classification
// decides whether the resilient layer retries (TransientError), a person must fix the key or its
// policy (KeyError), or the process is misconfigured (ConfigError). See docs/kms.md for the table.
#pragma once

#include <string>
#include <string_view>

namespace rekey::kms {

enum class AwsErrorClass { kTransient, kKey, kConfig, kUnknown };

// The exception name from a KMS error body: the "__type" field with any "prefix#" stripped, else
// the x-amzn-ErrorType header value (same stripping, and anything after ':' dropped), else "".
// Never throws, whatever the body holds.
std::string AwsErrorType(std::string_view body, std::string_view error_type_header = "");

// Classifies by exception name first, then by HTTP status (any 5xx is transient).
AwsErrorClass ClassifyAwsError(long http_status, const std::string& type);

// Throws the rekey::Error for a failed KMS call: `operation` is e.g. "Decrypt", `kms_key` the key
// the call named, `data_key_id` the rekey key id involved (or empty). The message is one line
// naming the key and the likely fix; it includes the server's message, never key material.
[[noreturn]] void ThrowAwsError(long http_status, std::string_view body,
                                std::string_view error_type_header, const std::string& operation,
                                const std::string& kms_key, const std::string& data_key_id);

}  // namespace rekey::kms
