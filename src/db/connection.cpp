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

bool Contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// Connection failures that a person has to fix (credentials, names, options); everything else
// (refused, timeouts, server starting up or overloaded) may go away on its own.
bool IsConfigFailure(std::string_view message) {
  for (std::string_view marker :
       {"authentication failed", "no password supplied", "password is required", "does not exist",
        "no pg_hba.conf entry", "invalid connection option", "invalid sslmode", "invalid port",
        "invalid integer value", "invalid value for", "SSL was required", "permission denied",
        // TLS: the server's pg_hba.conf refuses this sslmode ("... no encryption"), or the
        // server's certificate fails sslmode=verify-ca/verify-full (another CA, another name).
        "pg_hba.conf rejects", "certificate verify failed", "does not match host name"}) {
    if (Contains(message, marker)) return true;
  }
  return false;
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
    if (IsConfigFailure(why)) throw ConfigError(message + hint);
    throw TransientError(message + hint);
  }
  // Here, for every rekey session: the audit chain is sealed only in READ COMMITTED
  // (rekey.seal_audit), and a database or role whose default isolation is stricter would stop
  // every seal rekey makes (migrations/0016_key_safety_audit.sql). A SET after connecting rather
  // than `options=-c ...` in the startup packet, which connection poolers refuse. Transactions
  // that need a stronger isolation ask for it explicitly (audit::Verify).
  Classified("cannot configure the PostgreSQL session", [&] {
    pqxx::nontransaction txn(*conn);
    txn.exec0("SET default_transaction_isolation = 'read committed'");
  });
  return conn;
}

bool IsTransient(const std::exception& e) {
  if (auto* err = dynamic_cast<const rekey::Error*>(&e)) return err->transient();
  if (dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr) return true;
  if (dynamic_cast<const pqxx::in_doubt_error*>(&e) != nullptr) return true;
  // serialization_failure, deadlock_detected, statement_completion_unknown and plain 40000.
  if (dynamic_cast<const pqxx::transaction_rollback*>(&e) != nullptr) return true;
  if (auto* sql = dynamic_cast<const pqxx::sql_error*>(&e)) {
    const std::string& code = sql->sqlstate();
    if (code == "40001" || code == "40P01" || code == "55P03" || code == "53300" ||
        code == "57P01" || code == "57P02" || code == "57P03" || code.rfind("08", 0) == 0) {
      return true;
    }
    // query_canceled is transient when a timeout fired, not when someone cancelled on purpose.
    if (code == "57014") return Contains(e.what(), "timeout");
  }
  return false;
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
  std::string message = std::string(context) + ": " + PrimaryMessage(e);
  if (IsTransient(e)) throw TransientError(message);
  if (auto* sql = dynamic_cast<const pqxx::sql_error*>(&e)) {
    const std::string& code = sql->sqlstate();
    // rekey's control functions raise with these codes when they refuse a request: a definition
    // that does not fit the catalog is the caller's input to fix (exit 2); a state that forbids
    // the step is StateError (exit 5).
    static const char* const kBadDefinition[] = {"22023", "22P02", "42P01", "42703", "42804",
                                                 "42602", "42P16", "0A000", "42704"};
    for (const char* bad : kBadDefinition) {
      if (code == bad) throw ConfigError(message);
    }
    if (code.rfind("23", 0) == 0 || code == "55000" || code == "P0001" || code == "P0002" ||
        code == "42501") {
      throw StateError(message);
    }
  }
  throw PermanentError(message);
}

}  // namespace rekey::db
