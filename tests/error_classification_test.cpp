// The error table (common/error_table.h), row by row: every row is reached by the error it
// names, through the classifier of its boundary -- db::Classify and db::Classified for database
// errors, db::Connect's rule for libpq's reasons, the KMS providers' own classifiers for their
// errors, ExitCodeFor for rekey's -- and docs/ARCHITECTURE.md shows exactly this table.
// Here rather than beside common/ because it reaches every layer.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <tuple>

#include "common/error.h"
#include "common/error_table.h"
#include "db/connection.h"
#include "kms/aws_errors.h"
#include "kms/vault_errors.h"

namespace rekey {
namespace {

// A server error as libpqxx reports it, with `message` in its primary line.
pqxx::sql_error SqlError(const std::string& sqlstate, const std::string& message) {
  return pqxx::sql_error("ERROR:  " + message + "\nCONTEXT:  PL/pgSQL function\n", "SELECT 1",
                         sqlstate.c_str());
}

// A code of the class or range a row names: "40" -> "40000", "5xx" -> "503".
std::string Example(std::string_view code) {
  if (code == "5xx") return "503";
  if (code.size() == 2) return std::string(code) + "000";
  return std::string(code);
}

std::string Describe(const ErrorRule& rule) {
  return std::string(ErrorSourceName(rule.source)) + " " + std::string(rule.code) + " '" +
         std::string(rule.message) + "'";
}

// The exception the CLI would see for `c`: what db::Classified throws, what the KMS throws.
int ExitOfThrown(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return ExitCodeFor(e);
  }
  return -1;
}

TEST(ErrorTable, EveryRowIsReachedThroughItsBoundary) {
  for (const ErrorRule& rule : ErrorTable()) {
    SCOPED_TRACE(Describe(rule));
    const std::string message = rule.message.empty() ? "something" : std::string(rule.message);
    switch (rule.source) {
      case ErrorSource::kSqlState: {
        const pqxx::sql_error e = SqlError(Example(rule.code), message);
        const db::Classification c = db::Classify(e);
        EXPECT_EQ(c.rule, &rule);
        EXPECT_EQ(c.error_class, rule.error_class);
        EXPECT_EQ(c.batch, rule.batch);
        EXPECT_EQ(db::IsTransient(e), rule.error_class == ErrorClass::kTransient);
        EXPECT_EQ(ExitOfThrown([&] { db::Classified("ctx", [&] { throw e; }); }),
                  ExitCodeOf(rule.error_class));
        break;
      }
      case ErrorSource::kLibpqxx: {
        ASSERT_EQ(rule.code, "in_doubt_error");
        const pqxx::in_doubt_error e("connection lost during COMMIT");
        EXPECT_EQ(db::Classify(e).rule, &rule);
        EXPECT_EQ(ExitOfThrown([&] { db::Classified("ctx", [&] { throw e; }); }),
                  ExitCodeOf(rule.error_class));
        break;
      }
      case ErrorSource::kConnect:
        EXPECT_EQ(FindErrorRule(ErrorSource::kConnect, "",
                                rule.message.empty() ? "Connection refused" : message),
                  &rule);
        break;
      case ErrorSource::kAwsKms: {
        const long status = rule.code == "5xx" ? 503 : rule.code == "429" ? 429 : 400;
        const std::string name =
            rule.code == "5xx" || rule.code == "429" ? "" : std::string(rule.code);
        const kms::AwsErrorClass aws = kms::ClassifyAwsError(status, name);
        const kms::AwsErrorClass expected =
            rule.error_class == ErrorClass::kTransient ? kms::AwsErrorClass::kTransient
            : rule.error_class == ErrorClass::kKey     ? kms::AwsErrorClass::kKey
            : rule.error_class == ErrorClass::kConfig  ? kms::AwsErrorClass::kConfig
                                                       : kms::AwsErrorClass::kUnknown;
        EXPECT_EQ(aws, expected);
        const std::string body = name.empty() ? "{}" : "{\"__type\":\"" + name + "\"}";
        EXPECT_EQ(ExitOfThrown([&] { kms::ThrowAwsError(status, body, "", "Decrypt", "k", "1"); }),
                  ExitCodeOf(rule.error_class));
        break;
      }
      case ErrorSource::kVaultTransit: {
        const long status = std::stol(Example(rule.code));
        const kms::VaultErrorClass expected =
            rule.error_class == ErrorClass::kTransient ? kms::VaultErrorClass::kTransient
            : rule.error_class == ErrorClass::kKey     ? kms::VaultErrorClass::kKey
                                                       : kms::VaultErrorClass::kPermanent;
        EXPECT_EQ(kms::ClassifyVaultError(status), expected);
        EXPECT_EQ(ExitOfThrown([&] {
                    kms::ThrowVaultError(status, "{\"errors\":[\"x\"]}", "decrypt",
                                         "transit/keys/rekey", "1");
                  }),
                  ExitCodeOf(rule.error_class));
        break;
      }
      case ErrorSource::kRekey: {
        std::unique_ptr<std::exception> e;
        if (rule.code == "ConfigError") e = std::make_unique<ConfigError>("x");
        if (rule.code == "KeyError") e = std::make_unique<KeyError>("x");
        if (rule.code == "StateError") e = std::make_unique<StateError>("x");
        if (rule.code == "TransientError") e = std::make_unique<TransientError>("x");
        if (rule.code == "PermanentError") e = std::make_unique<PermanentError>("x");
        ASSERT_NE(e, nullptr) << "a kRekey row names no rekey::Error type";
        EXPECT_EQ(db::Classify(*e).rule, &rule);
        EXPECT_EQ(ExitCodeFor(*e), ExitCodeOf(rule.error_class));
        break;
      }
    }
  }
}

TEST(ErrorTable, NoRowIsRepeatedOrUnexplained) {
  std::set<std::tuple<ErrorSource, std::string_view, std::string_view>> seen;
  for (const ErrorRule& rule : ErrorTable()) {
    EXPECT_TRUE(seen.emplace(rule.source, rule.code, rule.message).second) << Describe(rule);
    EXPECT_FALSE(rule.why.empty()) << Describe(rule);
    EXPECT_EQ(rule.summary.empty(), rule.remedy.empty()) << Describe(rule);
  }
}

TEST(ErrorTable, ExitCodesFollowTheClass) {
  const std::vector<std::pair<ErrorClass, int>> table = {{ErrorClass::kTransient, 3},
                                                         {ErrorClass::kConfig, 2},
                                                         {ErrorClass::kKey, 4},
                                                         {ErrorClass::kState, 5},
                                                         {ErrorClass::kPermanent, 1}};
  for (const auto& [c, code] : table) EXPECT_EQ(ExitCodeOf(c), code) << ErrorClassName(c);
  EXPECT_EQ(ExitCodeFor(NoSuchKeyError("x")), kExitKey);
  EXPECT_EQ(ExitCodeFor(std::runtime_error("x")), kExitFailure);
}

// The cases the two classifiers of old disagreed on, and the ones libpqxx 6 throws without a
// SQLSTATE.
TEST(ErrorTable, DecisionsThatMatter) {
  struct Case {
    std::string name;
    std::function<void()> raise;
    ErrorClass error_class;
    BatchAction batch;
  };
  const std::vector<Case> cases = {
      {"a missing grant is a person's fix: exit 2, the worker stops",
       [] { throw SqlError("42501", "permission denied for table cards"); }, ErrorClass::kConfig,
       BatchAction::kStop},
      {"libpqxx 6's insufficient_privilege without SQLSTATE",
       [] { throw pqxx::insufficient_privilege("ERROR:  permission denied for table cards"); },
       ErrorClass::kConfig, BatchAction::kStop},
      {"the keyring's rule against a worker retiring keys",
       [] { throw SqlError("42501", "role w is a rekey_worker: workers may promote keys"); },
       ErrorClass::kState, BatchAction::kStop},
      {"the audit log is append-only",
       [] { throw SqlError("42501", "rekey.audit is append-only: UPDATE is not allowed"); },
       ErrorClass::kState, BatchAction::kStop},
      {"no longer claimed, as libpqxx 6 throws it",
       [] {
         throw pqxx::serialization_failure("ERROR:  batch 1/2 is no longer claimed by worker 3");
       },
       ErrorClass::kTransient, BatchAction::kLost},
      {"a genuine serialization failure",
       [] { throw pqxx::serialization_failure("ERROR:  could not serialize access"); },
       ErrorClass::kTransient, BatchAction::kRetry},
      {"a deadlock", [] { throw pqxx::deadlock_detected("ERROR:  deadlock detected"); },
       ErrorClass::kTransient, BatchAction::kRetry},
      {"a broken connection", [] { throw pqxx::broken_connection("server closed the connection"); },
       ErrorClass::kTransient, BatchAction::kRetry},
      {"a table gone", [] { throw pqxx::undefined_table("ERROR:  relation \"x\" does not exist"); },
       ErrorClass::kConfig, BatchAction::kStop},
      {"a statement timeout",
       [] { throw SqlError("57014", "canceling statement due to statement timeout"); },
       ErrorClass::kTransient, BatchAction::kRetry},
      {"a cancel on purpose",
       [] { throw SqlError("57014", "canceling statement due to user request"); },
       ErrorClass::kPermanent, BatchAction::kFail},
      {"an unknown code", [] { throw SqlError("XX000", "internal error"); }, ErrorClass::kPermanent,
       BatchAction::kFail},
      {"not an error rekey knows", [] { throw std::runtime_error("boom"); }, ErrorClass::kPermanent,
       BatchAction::kFail},
  };
  for (const Case& c : cases) {
    try {
      c.raise();
    } catch (const std::exception& e) {
      const db::Classification verdict = db::Classify(e);
      EXPECT_EQ(verdict.error_class, c.error_class) << c.name;
      EXPECT_EQ(verdict.batch, c.batch) << c.name;
      EXPECT_EQ(db::IsNoLongerClaimed(e), c.batch == BatchAction::kLost) << c.name;
    }
  }
}

// docs/ARCHITECTURE.md shows the table the code reads, not a copy that drifts.
TEST(ErrorTable, ArchitectureDocShowsThisTable) {
  std::ifstream in(std::string(REKEY_SOURCE_DIR) + "/docs/ARCHITECTURE.md");
  ASSERT_TRUE(in) << "docs/ARCHITECTURE.md is missing";
  std::stringstream doc;
  doc << in.rdbuf();
  const std::string rendered = RenderErrorTable();
  if (doc.str().find(rendered) == std::string::npos) {
    std::ofstream("error_table.md") << rendered;
    ADD_FAILURE() << "docs/ARCHITECTURE.md does not hold the error table as the code has it; "
                     "the rendering is in error_table.md of the test's working directory:\n"
                  << rendered;
  }
}

}  // namespace
}  // namespace rekey
