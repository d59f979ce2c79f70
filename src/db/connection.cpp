#include "db/connection.h"

#include <libpq-fe.h>

#include <algorithm>
#include <cctype>

#include "db/conninfo.h"

namespace rekey::db {
namespace {

// Collapses a multi-line libpq message ("...failed: Connection refused\n\tIs the server
// running...") into one line.
std::string OneLine(std::string_view text) {
  std::string out;
  bool space = false;
  for (char c : text) {
    if (c == '\n' || c == '\t' || c == '\r' || c == ' ') {
      space = true;
      continue;
    }
    if (space && !out.empty()) out.push_back(' ');
    space = false;
    out.push_back(c);
  }
  return out;
}

std::string QuoteValue(const char* value) {
  std::string out = "'";
  for (const char* p = value; *p != '\0'; ++p) {
    if (*p == '\'' || *p == '\\') out.push_back('\\');
    out.push_back(*p);
  }
  out.push_back('\'');
  return out;
}

// The SQLSTATE of a libpqxx exception. libpqxx 6 throws some types without one (the
// transaction_rollback family is no sql_error at all): theirs is used, most derived first.
std::string SqlState(const std::exception& e) {
  if (auto* sql = dynamic_cast<const pqxx::sql_error*>(&e); sql && !sql->sqlstate().empty()) {
    return sql->sqlstate();
  }
  if (dynamic_cast<const pqxx::serialization_failure*>(&e)) return "40001";
  if (dynamic_cast<const pqxx::deadlock_detected*>(&e)) return "40P01";
  if (dynamic_cast<const pqxx::statement_completion_unknown*>(&e)) return "40003";
  if (dynamic_cast<const pqxx::transaction_rollback*>(&e)) return "40000";
  if (dynamic_cast<const pqxx::too_many_connections*>(&e)) return "53300";
  if (dynamic_cast<const pqxx::broken_connection*>(&e)) return "08006";
  if (dynamic_cast<const pqxx::insufficient_privilege*>(&e)) return "42501";
  if (dynamic_cast<const pqxx::undefined_table*>(&e)) return "42P01";
  if (dynamic_cast<const pqxx::undefined_column*>(&e)) return "42703";
  return "";
}

// Where we tried to connect, from the parsed options: never the string itself, which may hold
// a password in a form the redactor does not recognise.
std::string Target(PQconninfoOption* options) {
  std::string target;
  for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    std::string_view key = o->keyword;
    if (o->val == nullptr ||
        (key != "host" && key != "hostaddr" && key != "port" && key != "dbname" && key != "user")) {
      continue;
    }
    target += (target.empty() ? "" : " ") + std::string(key) + "=" + o->val;
  }
  return target.empty() ? "the libpq defaults (PGHOST, PGPORT, ...)" : "'" + target + "'";
}

}  // namespace

std::unique_ptr<pqxx::connection> Connect(const std::string& conninfo,
                                          const std::string& application_name) {
  const std::string hint = "; check --db / DATABASE_URL / PG* and that the server is up";
  char* parse_error = nullptr;
  PQconninfoOption* options = PQconninfoParse(conninfo.c_str(), &parse_error);
  if (options == nullptr) {
    std::string why = parse_error != nullptr ? OneLine(parse_error) : "out of memory";
    PQfreemem(parse_error);
    // Not echoed back: a malformed string cannot be redacted reliably.
    throw ConfigError("invalid PostgreSQL connection string: " + RedactSecrets(why, conninfo) +
                      hint);
  }
  // Re-serialise as key=value so application_name can be added to URLs as well.
  const std::string target = Target(options);
  std::string normalized;
  for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    if (o->val == nullptr || std::string_view(o->keyword) == "application_name") continue;
    normalized += std::string(o->keyword) + "=" + QuoteValue(o->val) + " ";
  }
  PQconninfoFree(options);
  normalized += "application_name=" + QuoteValue(application_name.c_str());
  std::unique_ptr<pqxx::connection> conn;
  try {
    conn = std::make_unique<pqxx::connection>(normalized);
  } catch (const std::exception& e) {
    std::string why = RedactSecrets(OneLine(e.what()), conninfo);
    std::string message = "cannot connect to PostgreSQL at " + target + ": " + why;
    // The kConnect rows of the error table: what a person has to fix (credentials, names,
    // options, TLS) is a ConfigError; anything else (refused, timeouts, starting up) may pass.
    const ErrorRule* rule = FindErrorRule(ErrorSource::kConnect, "", why);
    if (rule != nullptr && rule->error_class == ErrorClass::kConfig) {
      throw ConfigError(message + hint);
    }
    throw TransientError(message + hint);
  }
  // Here, for every rekey session: the audit chain is sealed only in READ COMMITTED
  // (rekey.seal_audit), and a database or role whose default isolation is stricter would stop
  // every seal rekey makes (sql/schema/20_audit.sql). A SET after connecting rather
  // than `options=-c ...` in the startup packet, which connection poolers refuse. Transactions
  // that need a stronger isolation ask for it explicitly (audit::Verify).
  Classified("cannot configure the PostgreSQL session", [&] {
    pqxx::nontransaction txn(*conn);
    txn.exec0("SET default_transaction_isolation = 'read committed'");
  });
  return conn;
}

Classification Classify(const std::exception& e) {
  Classification c;
  const ErrorRule* rule = FindRekeyErrorRule(e);
  if (rule == nullptr) {
    if (dynamic_cast<const pqxx::in_doubt_error*>(&e) != nullptr) {
      rule = FindErrorRule(ErrorSource::kLibpqxx, "in_doubt_error");
    } else {
      c.sqlstate = SqlState(e);
      if (!c.sqlstate.empty()) rule = FindErrorRule(ErrorSource::kSqlState, c.sqlstate, e.what());
    }
  }
  if (rule != nullptr) {
    c.rule = rule;
    c.error_class = rule->error_class;
    c.batch = rule->batch;
  }
  return c;
}

bool IsTransient(const std::exception& e) {
  return Classify(e).error_class == ErrorClass::kTransient;
}

bool IsNoLongerClaimed(const std::exception& e) {
  return Classify(e).batch == BatchAction::kLost;
}

std::string PrimaryMessage(const std::exception& e) {
  std::string_view text = e.what();
  size_t start = text.find_first_not_of(" \t\n");
  if (start == std::string_view::npos) return "";
  text = text.substr(start);
  text = text.substr(0, text.find('\n'));
  for (std::string_view prefix : {"ERROR:", "FATAL:", "PANIC:"}) {
    if (text.substr(0, prefix.size()) == prefix) {
      text = text.substr(prefix.size());
      break;
    }
  }
  size_t first = text.find_first_not_of(' ');
  return first == std::string_view::npos ? "" : std::string(text.substr(first));
}

void ThrowClassified(std::string_view context, const std::exception& e) {
  if (dynamic_cast<const pqxx::pqxx_exception*>(&e) == nullptr) {
    if (std::current_exception()) throw;
    throw PermanentError(std::string(context) + ": " + e.what());
  }
  const std::string message = std::string(context) + ": " + PrimaryMessage(e);
  switch (Classify(e).error_class) {
    case ErrorClass::kTransient:
      throw TransientError(message);
    case ErrorClass::kConfig:
      throw ConfigError(message);
    case ErrorClass::kKey:
      throw KeyError(message);
    case ErrorClass::kState:
      throw StateError(message);
    case ErrorClass::kPermanent:
      break;
  }
  throw PermanentError(message);
}

}  // namespace rekey::db
