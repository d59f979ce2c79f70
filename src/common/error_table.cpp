#include "common/error_table.h"

#include <string>

namespace rekey {
namespace {

using C = ErrorClass;
using B = BatchAction;
using S = ErrorSource;

constexpr std::string_view kGrantSummary = "the worker's database role lacks a privilege";
constexpr std::string_view kGrantRemedy =
    "grant it with sql/roles.sql and SELECT rekey.worker_grants(job)";
constexpr std::string_view kTargetSummary = "a job's target no longer matches its definition";
constexpr std::string_view kTargetRemedy = "cancel the job or restore the table";

std::vector<ErrorRule> BuildTable() {
  return {
      // PostgreSQL. A code rekey's own SQL raises to say something specific comes first, with
      // the wording that tells it apart.
      {S::kSqlState, "40001", "no longer claimed", C::kTransient, B::kLost,
       "rekey.require_open_stage_batch (checkpoint, completion) refuses a batch this worker no "
       "longer holds or whose stage closed: another worker or a rollback owns it now, and the "
       "chunk's transaction wrote nothing"},
      {S::kSqlState, "40001", "", C::kTransient, B::kRetry, "serialization_failure"},
      {S::kSqlState, "40P01", "", C::kTransient, B::kRetry, "deadlock_detected"},
      {S::kSqlState, "40", "", C::kTransient, B::kRetry,
       "transaction_rollback: the server rolled the transaction back; run it again"},
      {S::kSqlState, "08", "", C::kTransient, B::kRetry,
       "connection_exception: the connection broke; reconnect"},
      {S::kSqlState, "53300", "", C::kTransient, B::kRetry, "too_many_connections"},
      {S::kSqlState, "55P03", "", C::kTransient, B::kRetry,
       "lock_not_available (lock_timeout, NOWAIT)"},
      {S::kSqlState, "57014", "timeout", C::kTransient, B::kRetry,
       "query_canceled by statement_timeout or lock_timeout; a cancel on purpose is not retried"},
      {S::kSqlState, "57P01", "", C::kTransient, B::kRetry, "admin_shutdown"},
      {S::kSqlState, "57P02", "", C::kTransient, B::kRetry, "crash_shutdown"},
      {S::kSqlState, "57P03", "", C::kTransient, B::kRetry, "cannot_connect_now (starting up)"},
      {S::kSqlState, "42501", "is append-only", C::kState, B::kStop,
       "rekey's triggers refuse changing the audit log or a stored report: no grant makes that "
       "legal"},
      {S::kSqlState, "42501", "is a rekey_worker", C::kState, B::kStop,
       "the key lifecycle trigger refuses a worker role a retire or destroy (a rule of the "
       "keyring, docs/keyring.md)"},
      {S::kSqlState, "42501", "", C::kConfig, B::kStop,
       "insufficient_privilege: a missing GRANT is a person's fix (docs/operations.md, \"Least "
       "privilege\")",
       kGrantSummary, kGrantRemedy},
      {S::kSqlState, "42P01", "", C::kConfig, B::kStop,
       "undefined_table: the job's table is gone or renamed", kTargetSummary, kTargetRemedy},
      {S::kSqlState, "42703", "", C::kConfig, B::kStop,
       "undefined_column: the job's column is gone or renamed", kTargetSummary, kTargetRemedy},
      {S::kSqlState, "22023", "", C::kConfig, B::kFail,
       "invalid_parameter_value: rekey's control functions reject a definition"},
      {S::kSqlState, "22P02", "", C::kConfig, B::kFail, "invalid_text_representation"},
      {S::kSqlState, "42804", "", C::kConfig, B::kFail,
       "datatype_mismatch: a definition that does not fit the catalog"},
      {S::kSqlState, "42602", "", C::kConfig, B::kFail, "invalid_name"},
      {S::kSqlState, "42P16", "", C::kConfig, B::kFail, "invalid_table_definition"},
      {S::kSqlState, "42704", "", C::kConfig, B::kFail, "undefined_object"},
      {S::kSqlState, "0A000", "", C::kConfig, B::kFail, "feature_not_supported"},
      {S::kSqlState, "23", "", C::kState, B::kFail,
       "integrity_constraint_violation: rekey's constraints refuse the step"},
      {S::kSqlState, "55000", "", C::kState, B::kFail,
       "object_not_in_prerequisite_state: e.g. a key still in use, a job in another state"},
      {S::kSqlState, "P0001", "", C::kState, B::kFail,
       "raise_exception: rekey's functions and triggers refuse the step"},
      {S::kSqlState, "P0002", "", C::kState, B::kFail, "no_data_found: e.g. no such job"},

      // libpqxx exceptions with no SQLSTATE equivalent (db::Classify maps the others to theirs).
      {S::kLibpqxx, "in_doubt_error", "", C::kTransient, B::kRetry,
       "the connection broke during COMMIT; the next attempt sees what was committed"},

      // db::Connect: libpq's reason for a failed connection. What a person has to fix comes
      // first; anything else (refused, timeouts, starting up) may pass on its own.
      {S::kConnect, "", "authentication failed", C::kConfig, B::kStop, "wrong credentials"},
      {S::kConnect, "", "no password supplied", C::kConfig, B::kStop, "missing password"},
      {S::kConnect, "", "password is required", C::kConfig, B::kStop, "missing password"},
      {S::kConnect, "", "does not exist", C::kConfig, B::kStop, "no such database or role"},
      {S::kConnect, "", "no pg_hba.conf entry", C::kConfig, B::kStop, "pg_hba.conf refuses"},
      {S::kConnect, "", "pg_hba.conf rejects", C::kConfig, B::kStop,
       "pg_hba.conf refuses this sslmode (\"... no encryption\")"},
      {S::kConnect, "", "invalid connection option", C::kConfig, B::kStop, "malformed conninfo"},
      {S::kConnect, "", "invalid sslmode", C::kConfig, B::kStop, "malformed conninfo"},
      {S::kConnect, "", "invalid port", C::kConfig, B::kStop, "malformed conninfo"},
      {S::kConnect, "", "invalid integer value", C::kConfig, B::kStop, "malformed conninfo"},
      {S::kConnect, "", "invalid value for", C::kConfig, B::kStop, "malformed conninfo"},
      {S::kConnect, "", "SSL was required", C::kConfig, B::kStop, "the server offers no TLS"},
      {S::kConnect, "", "permission denied", C::kConfig, B::kStop, "no CONNECT privilege"},
      {S::kConnect, "", "certificate verify failed", C::kConfig, B::kStop,
       "sslmode=verify-ca/verify-full: the server's certificate is from another CA"},
      {S::kConnect, "", "does not match host name", C::kConfig, B::kStop,
       "sslmode=verify-full: the server's certificate names another host"},
      {S::kConnect, "", "", C::kTransient, B::kRetry,
       "refused, timed out, starting up, overloaded: may pass on its own"},

      // AWS KMS (kms/aws_errors.h): the exception name decides, then the HTTP status.
      {S::kAwsKms, "ThrottlingException", "", C::kTransient, B::kRetry, "rate limited"},
      {S::kAwsKms, "KMSInternalException", "", C::kTransient, B::kRetry, "KMS-side failure"},
      {S::kAwsKms, "DependencyTimeoutException", "", C::kTransient, B::kRetry, "KMS timeout"},
      {S::kAwsKms, "KeyUnavailableException", "", C::kTransient, B::kRetry, "key briefly away"},
      {S::kAwsKms, "ServiceUnavailableException", "", C::kTransient, B::kRetry, "KMS away"},
      {S::kAwsKms, "InternalFailure", "", C::kTransient, B::kRetry, "KMS-side failure"},
      {S::kAwsKms, "RequestTimeoutException", "", C::kTransient, B::kRetry, "KMS timeout"},
      {S::kAwsKms, "ExpiredTokenException", "", C::kTransient, B::kRetry,
       "credentials expired: refreshed on retry"},
      {S::kAwsKms, "LimitExceededException", "", C::kTransient, B::kRetry, "quota"},
      {S::kAwsKms, "RequestExpired", "", C::kTransient, B::kRetry, "signature too old: re-signed"},
      {S::kAwsKms, "AccessDeniedException", "", C::kKey, B::kStop, "the key policy refuses"},
      {S::kAwsKms, "DisabledException", "", C::kKey, B::kStop, "the KMS key is disabled"},
      {S::kAwsKms, "KMSInvalidStateException", "", C::kKey, B::kStop,
       "the KMS key is pending deletion or import"},
      {S::kAwsKms, "NotFoundException", "", C::kKey, B::kStop, "no such KMS key"},
      {S::kAwsKms, "InvalidCiphertextException", "", C::kKey, B::kStop,
       "the wrapped key is corrupt or moved"},
      {S::kAwsKms, "IncorrectKeyException", "", C::kKey, B::kStop, "wrapped by another key"},
      {S::kAwsKms, "InvalidKeyUsageException", "", C::kKey, B::kStop, "key not for encryption"},
      {S::kAwsKms, "InvalidGrantTokenException", "", C::kKey, B::kStop, "bad grant token"},
      {S::kAwsKms, "KMSInvalidMacException", "", C::kKey, B::kStop, "MAC check failed"},
      {S::kAwsKms, "UnrecognizedClientException", "", C::kConfig, B::kStop, "bad credentials"},
      {S::kAwsKms, "InvalidSignatureException", "", C::kConfig, B::kStop, "bad secret or clock"},
      {S::kAwsKms, "IncompleteSignature", "", C::kConfig, B::kStop, "bad signature"},
      {S::kAwsKms, "MissingAuthenticationToken", "", C::kConfig, B::kStop, "no credentials"},
      {S::kAwsKms, "InvalidClientTokenId", "", C::kConfig, B::kStop, "bad credentials"},
      {S::kAwsKms, "SignatureDoesNotMatch", "", C::kConfig, B::kStop, "bad secret or clock"},
      {S::kAwsKms, "ValidationException", "", C::kConfig, B::kStop, "malformed request"},
      {S::kAwsKms, "InvalidArnException", "", C::kConfig, B::kStop, "malformed key id"},
      {S::kAwsKms, "OptInRequired", "", C::kConfig, B::kStop, "account not subscribed"},
      {S::kAwsKms, "5xx", "", C::kTransient, B::kRetry, "any other server error"},
      {S::kAwsKms, "429", "", C::kTransient, B::kRetry, "too many requests"},

      // Vault Transit (kms/vault_errors.h): the HTTP status decides.
      {S::kVaultTransit, "429", "", C::kTransient, B::kRetry, "rate-limit quota, standby"},
      {S::kVaultTransit, "412", "", C::kTransient, B::kRetry, "Enterprise replication lag"},
      {S::kVaultTransit, "473", "", C::kTransient, B::kRetry, "performance standby"},
      {S::kVaultTransit, "5xx", "", C::kTransient, B::kRetry, "sealed, standby, unavailable"},
      {S::kVaultTransit, "400", "", C::kKey, B::kStop,
       "message authentication failed, invalid ciphertext, key not found"},
      {S::kVaultTransit, "401", "", C::kKey, B::kStop, "token refused after a new login"},
      {S::kVaultTransit, "403", "", C::kKey, B::kStop, "the token's policy refuses"},
      {S::kVaultTransit, "404", "", C::kKey, B::kStop, "no such key or mount"},

      // rekey's own errors (common/error.h), the local KMS's included (a malformed
      // REKEY_MASTER_KEY is a ConfigError, a key wrapped under another master key a KeyError).
      {S::kRekey, "ConfigError", "", C::kConfig, B::kStop,
       "bad flag, environment variable, master key or job definition"},
      {S::kRekey, "KeyError", "", C::kKey, B::kStop,
       "unknown key, wrong master key, disabled key, KMS denied"},
      {S::kRekey, "StateError", "", C::kState, B::kFail,
       "illegal lifecycle step, migration drift, job state (a key not writable pauses the job)"},
      {S::kRekey, "TransientError", "", C::kTransient, B::kRetry,
       "KMS throttled or unreachable after the resilient layer's retries"},
      {S::kRekey, "PermanentError", "", C::kPermanent, B::kFail, "anything else rekey names"},
  };
}

bool CodeMatches(const ErrorRule& rule, std::string_view code) {
  if (rule.code.empty()) return true;
  if (rule.code == code) return true;
  if (rule.source == S::kSqlState && rule.code.size() == 2) return code.substr(0, 2) == rule.code;
  if (rule.code == "5xx") return code.size() == 3 && code[0] == '5';
  return false;
}

}  // namespace

const std::vector<ErrorRule>& ErrorTable() {
  static const std::vector<ErrorRule> table = BuildTable();
  return table;
}

const ErrorRule* FindErrorRule(ErrorSource source, std::string_view code,
                               std::string_view message) {
  for (const ErrorRule& rule : ErrorTable()) {
    if (rule.source != source || !CodeMatches(rule, code)) continue;
    if (!rule.message.empty() && message.find(rule.message) == std::string_view::npos) continue;
    return &rule;
  }
  return nullptr;
}

// Indexed by the enums' values, in their order of declaration.
constexpr ExitCode kExitCodes[] = {kExitTransient, kExitUsage, kExitKey, kExitState, kExitFailure};
constexpr std::string_view kClassNames[] = {"transient", "config", "key", "state", "permanent"};
constexpr std::string_view kBatchActionNames[] = {"retry", "stop the worker", "fail the attempt",
                                                  "lost"};
constexpr std::string_view kSourceNames[] = {"SQLSTATE", "libpqxx", "connect",
                                             "AWS KMS",  "Vault",   "rekey"};

ExitCode ExitCodeOf(ErrorClass c) {
  return kExitCodes[static_cast<int>(c)];
}

std::string_view ErrorClassName(ErrorClass c) {
  return kClassNames[static_cast<int>(c)];
}

std::string_view BatchActionName(BatchAction a) {
  return kBatchActionNames[static_cast<int>(a)];
}

std::string_view ErrorSourceName(ErrorSource s) {
  return kSourceNames[static_cast<int>(s)];
}

const ErrorRule* FindRekeyErrorRule(const std::exception& e) {
  const char* type = nullptr;
  if (dynamic_cast<const ConfigError*>(&e)) {
    type = "ConfigError";
  } else if (dynamic_cast<const KeyError*>(&e)) {
    type = "KeyError";
  } else if (dynamic_cast<const StateError*>(&e)) {
    type = "StateError";
  } else if (dynamic_cast<const TransientError*>(&e)) {
    type = "TransientError";
  } else if (dynamic_cast<const PermanentError*>(&e)) {
    type = "PermanentError";
  }
  return type ? FindErrorRule(S::kRekey, type) : nullptr;
}

std::string RenderErrorTable() {
  std::string out =
      "| source | code | message contains | class | exit | batch in hand | why |\n"
      "| --- | --- | --- | --- | --- | --- | --- |\n";
  auto cell = [](std::string_view text) {
    std::string escaped;
    for (char c : text) {
      if (c == '|') escaped += '\\';
      escaped += c;
    }
    return escaped;
  };
  for (const ErrorRule& rule : ErrorTable()) {
    out += "| " + std::string(ErrorSourceName(rule.source)) + " | " +
           (rule.code.empty() ? std::string("any") : "`" + std::string(rule.code) + "`") + " | " +
           (rule.message.empty() ? std::string() : "`" + cell(rule.message) + "`") + " | " +
           std::string(ErrorClassName(rule.error_class)) + " | " +
           std::to_string(ExitCodeOf(rule.error_class)) + " | " +
           std::string(BatchActionName(rule.batch)) + " | " + cell(rule.why) + " |\n";
  }
  return out;
}

}  // namespace rekey
