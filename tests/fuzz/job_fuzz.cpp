// Fuzz target: the parsers of what operators write -- a job definition's flags (key map, stage
// plan, scope, associated-data template: jobs/job.h, crypto/associated_data.h), durations
// (common/duration.h), Transit key refs (kms/vault_transit.h), the KMS providers' environment
// (AWS and Vault configuration), and connection strings with their password redaction
// (db/conninfo.h).
//
// Input: [parser][text]. Invariants: only rekey::Error (ConfigError) escapes, and what a parser
// accepts round-trips: a key map re-serialises to the same map, a scope splits at an '=' of the
// text, a key ref reassembles to the text, a stage plan is a plain numeric[] literal, a duration
// is within [0, kMaxParsedDuration], a redacted connection string no longer holds its password.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/duration.h"
#include "crypto/associated_data.h"
#include "db/conninfo.h"
#include "db/identifiers.h"
#include "fuzz_support.h"
#include "jobs/job.h"
#include "kms/aws_credentials.h"
#include "kms/aws_kms.h"
#include "kms/vault_transit.h"

namespace {

using rekey::fuzz::FuzzCheck;

void KeyMap(const std::string& text) {
  const std::map<uint32_t, uint32_t> map = rekey::jobs::ParseKeyMap(text);
  FuzzCheck(!map.empty(), "an accepted key map without pairs");
  std::string again;
  for (const auto& [from, to] : map) {
    again += (again.empty() ? "" : ",") + std::to_string(from) + ":" + std::to_string(to);
  }
  FuzzCheck(rekey::jobs::ParseKeyMap(again) == map, "key map does not round-trip");
}

void StagePlan(const std::string& text) {
  const std::string literal = rekey::jobs::StagePlanLiteral(text);
  FuzzCheck(literal.size() >= 3 && literal.front() == '{' && literal.back() == '}',
            "stage plan literal not in braces");
  FuzzCheck(literal.find_first_not_of("0123456789.,", 1) == literal.size() - 1,
            "stage plan literal holds more than numbers");
}

void Scope(const std::string& text) {
  const auto [column, value] = rekey::jobs::ParseScope(text);
  FuzzCheck(!column.empty() && column + "=" + value == text, "scope does not split the text");
}

void Duration(const std::string& text) {
  const auto d = rekey::ParseDuration(text, "--max-replication-lag");
  FuzzCheck(d.count() >= 0 && d <= rekey::kMaxParsedDuration, "a duration out of range");
}

void TransitKeyRef(const std::string& text) {
  if (auto ref = rekey::kms::ParseTransitKeyRef(text)) {
    FuzzCheck(ref->mount + "/keys/" + ref->name == text, "key ref does not reassemble");
  }
}

// The environment a provider reads: the text's lines, assigned to the variables in order.
void Environment(const std::string& text) {
  static const char* const kNames[] = {"VAULT_ADDR",
                                       "REKEY_VAULT_TRANSIT_KEY",
                                       "REKEY_VAULT_TRANSIT_MOUNT",
                                       "REKEY_VAULT_K8S_ROLE",
                                       "REKEY_VAULT_K8S_MOUNT",
                                       "VAULT_TOKEN_FILE",
                                       "VAULT_TOKEN",
                                       "AWS_REGION",
                                       "REKEY_AWS_KMS_KEY_ID",
                                       "AWS_ACCESS_KEY_ID",
                                       "AWS_SECRET_ACCESS_KEY",
                                       "AWS_ROLE_ARN",
                                       "AWS_WEB_IDENTITY_TOKEN_FILE",
                                       "REKEY_KMS_CALLS_PER_SECOND"};
  std::map<std::string, std::string> env;
  size_t start = 0;
  for (const char* name : kNames) {
    if (start > text.size()) break;
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) env[name] = text.substr(start, end - start);
    start = end + 1;
  }
  const rekey::kms::GetenvFn getenv = [&env](const char* name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
  rekey::fuzz::Guarded([&] { rekey::kms::VaultTransitConfigFromEnv(getenv, text.size() % 2); });
  rekey::fuzz::Guarded([&] { rekey::kms::AwsKmsConfigFromEnv(getenv); });
  rekey::fuzz::Guarded(
      [&] { rekey::kms::GetenvInteger(getenv, "REKEY_KMS_CALLS_PER_SECOND", 10, 1); });
  rekey::fuzz::Guarded([&] {
    rekey::fuzz::Reader none(nullptr, 0);
    rekey::fuzz::ScriptedTransport transport(
        &none, [](const rekey::kms::HttpRequest&) { return rekey::fuzz::Reply(500, ""); });
    rekey::kms::MakeAwsCredentialsProvider(getenv, transport, "eu-west-1");
  });
}

void ConnInfo(const std::string& text) {
  const std::string redacted = rekey::db::RedactConnInfo(text);
  const std::string secrets = rekey::db::RedactSecrets(text, text);
  for (const std::string& password : rekey::db::PasswordsIn(text)) {
    // A password made of mask characters, or one that is part of the surrounding syntax, can
    // legitimately reappear; anything else left behind is a leak.
    if (password.size() < 4 || password.find_first_of("*=' \t\n\\%@:/?&") != std::string::npos) {
      continue;
    }
    FuzzCheck(secrets.find(password) == std::string::npos, "RedactSecrets leaked a password");
  }
  const std::string quoted = rekey::db::QuoteIdent(text);
  FuzzCheck(quoted.size() >= 2 && quoted.front() == '"' && quoted.back() == '"', "QuoteIdent");
  (void)redacted;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  rekey::fuzz::Reader in(data, size);
  const uint8_t parser = in.Byte();
  const std::string text = in.Rest();
  rekey::fuzz::Guarded([&] {
    switch (parser % 8) {
      case 0:
        KeyMap(text);
        break;
      case 1:
        StagePlan(text);
        break;
      case 2:
        Scope(text);
        break;
      case 3:
        Duration(text);
        break;
      case 4:
        TransitKeyRef(text);
        break;
      case 5:
        rekey::crypto::AssociatedDataTemplate::Compile(text);
        break;
      case 6:
        Environment(text);
        break;
      case 7:
        ConnInfo(text);
        break;
    }
  });
  return 0;
}
