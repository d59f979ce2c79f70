#include "db/migrator.h"

#include <openssl/evp.h>

#include <algorithm>
#include <map>
#include <regex>

#include "common/bytes.h"
#include "common/error.h"
#include "db/connection.h"

namespace rekey::db {
namespace {

struct Planned {
  int version;
  std::string name;
  std::string_view content;
  std::string checksum;
};

struct Recorded {
  std::string name;
  std::string checksum;
  std::string applied_at;
  std::string applied_by;
};

std::string Abbrev(const std::string& checksum) {
  return checksum.substr(0, 12) + "...";
}

// Validates names and orders the files by version.
std::vector<Planned> Plan(const std::vector<EmbeddedFile>& files) {
  static const std::regex kName("^[0-9]{4}_[a-z0-9_]+\\.sql$");
  std::vector<Planned> plan;
  std::map<int, std::string> seen;
  for (const EmbeddedFile& f : files) {
    std::string name(f.name);
    if (!std::regex_match(name, kName)) {
      throw ConfigError("migration file name '" + name +
                        "' does not match NNNN_lowercase_name.sql; rename the file");
    }
    int version = std::stoi(name.substr(0, 4));
    auto [it, inserted] = seen.emplace(version, name);
    if (!inserted) {
      throw ConfigError("migrations " + it->second + " and " + name +
                        " have the same version; renumber one of them");
    }
    plan.push_back({version, name, f.content, Sha256Hex(f.content)});
  }
  std::sort(plan.begin(), plan.end(),
            [](const Planned& a, const Planned& b) { return a.version < b.version; });
  return plan;
}

std::map<int, Recorded> ReadRecorded(pqxx::connection& conn) {
  return Classified("reading rekey.schema_migrations", [&] {
    pqxx::nontransaction tx(conn);
    std::map<int, Recorded> recorded;
    if (tx.exec1("SELECT to_regclass('rekey.schema_migrations') IS NULL")[0].as<bool>()) {
      return recorded;
    }
    for (const auto& row : tx.exec("SELECT version, name, checksum, applied_at::text, "
                                   "applied_by FROM rekey.schema_migrations")) {
      recorded[row[0].as<int>()] = {row[1].as<std::string>(""), row[2].as<std::string>(""),
                                    row[3].as<std::string>(""), row[4].as<std::string>("")};
    }
    return recorded;
  });
}

// Holds the session advisory lock for its lifetime. Unlocking on a broken connection is moot:
// the server drops session locks with the session.
class MigrationLock {
 public:
  explicit MigrationLock(pqxx::connection& conn) : conn_(conn) {
    Classified("acquiring the migration lock", [&] {
      pqxx::nontransaction tx(conn_);
      tx.exec("SELECT pg_advisory_lock(" + std::to_string(kMigrationLockKey) + ")");
    });
  }
  ~MigrationLock() {
    try {
      pqxx::nontransaction tx(conn_);
      tx.exec("SELECT pg_advisory_unlock(" + std::to_string(kMigrationLockKey) + ")");
    } catch (...) {
    }
  }
  MigrationLock(const MigrationLock&) = delete;
  MigrationLock& operator=(const MigrationLock&) = delete;

 private:
  pqxx::connection& conn_;
};

// Refuses (StateError) if the database records a migration this plan does not have or has
// with different content. Runs before anything is applied.
void CheckNoDrift(const std::vector<Planned>& plan, const std::map<int, Recorded>& recorded) {
  int newest_known = plan.empty() ? 0 : plan.back().version;
  for (const auto& [version, rec] : recorded) {
    auto it = std::find_if(plan.begin(), plan.end(),
                           [&](const Planned& p) { return p.version == version; });
    if (it == plan.end()) {
      if (version > newest_known) {
        throw StateError("the database has migration " + rec.name +
                         " applied, which this rekey binary does not know (it knows up to " +
                         std::to_string(newest_known) +
                         "); the binary is older than the schema: upgrade rekey");
      }
      throw StateError("the database has migration " + rec.name +
                       " applied, which is missing from this rekey binary; use the binary "
                       "that applied it or restore the migration file");
    }
    if (it->name != rec.name || it->checksum != rec.checksum) {
      throw StateError("migration " + it->name + " was changed after it was applied (" +
                       (it->name != rec.name ? "applied as " + rec.name + ", " : std::string()) +
                       "checksum " + Abbrev(rec.checksum) + " in the database, " +
                       Abbrev(it->checksum) +
                       " in this binary); restore the original file or add a new migration "
                       "instead of editing an applied one");
    }
  }
}

void Apply(pqxx::connection& conn, const Planned& m) {
  try {
    pqxx::work tx(conn, "migrate");
    tx.exec(std::string(m.content));
    tx.exec_params(
        "INSERT INTO rekey.schema_migrations (version, name, checksum) "
        "VALUES ($1, $2, $3)",
        m.version, m.name, m.checksum);
    tx.commit();
  } catch (const pqxx::failure& e) {
    std::string message =
        "migration " + m.name + " failed and was rolled back: " + PrimaryMessage(e);
    if (IsTransient(e)) throw TransientError(message + "; retry rekey migrate");
    throw StateError(message + "; fix the cause and rerun rekey migrate");
  }
}

}  // namespace

std::string Sha256Hex(std::string_view content) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (EVP_Digest(content.data(), content.size(), digest, &size, EVP_sha256(), nullptr) != 1) {
    throw PermanentError("SHA-256 failed (OpenSSL)");
  }
  return HexEncode(digest, size);
}

MigrationReport Migrate(pqxx::connection& conn, const std::vector<EmbeddedFile>& files) {
  std::vector<Planned> plan = Plan(files);
  MigrationLock lock(conn);
  Classified("creating rekey.schema_migrations", [&] {
    pqxx::work tx(conn);
    tx.exec(
        "CREATE SCHEMA IF NOT EXISTS rekey;"
        "CREATE TABLE IF NOT EXISTS rekey.schema_migrations ("
        "  version int PRIMARY KEY,"
        "  name text NOT NULL,"
        "  checksum text NOT NULL,"
        "  applied_at timestamptz NOT NULL DEFAULT now(),"
        "  applied_by text NOT NULL DEFAULT current_user)");
    tx.commit();
  });
  std::map<int, Recorded> recorded = ReadRecorded(conn);
  CheckNoDrift(plan, recorded);
  MigrationReport report;
  for (const Planned& m : plan) {
    if (recorded.count(m.version) != 0) {
      ++report.already_applied;
      continue;
    }
    Apply(conn, m);
    report.applied.push_back(m.name);
  }
  return report;
}

std::vector<MigrationStatus> MigrationStatusList(pqxx::connection& conn,
                                                 const std::vector<EmbeddedFile>& files) {
  std::vector<Planned> plan = Plan(files);
  std::map<int, Recorded> recorded = ReadRecorded(conn);
  std::map<int, MigrationStatus> merged;
  for (const Planned& p : plan) {
    MigrationStatus& s = merged[p.version];
    s.version = p.version;
    s.name = p.name;
    s.in_binary = true;
    auto it = recorded.find(p.version);
    if (it != recorded.end()) {
      s.applied = true;
      s.checksum_matches = it->second.checksum == p.checksum && it->second.name == p.name;
      s.applied_at = it->second.applied_at;
      s.applied_by = it->second.applied_by;
    }
  }
  for (const auto& [version, rec] : recorded) {
    if (merged.count(version) != 0) continue;
    MigrationStatus& s = merged[version];
    s.version = version;
    s.name = rec.name;
    s.applied = true;
    s.applied_at = rec.applied_at;
    s.applied_by = rec.applied_by;
  }
  std::vector<MigrationStatus> out;
  for (auto& [version, s] : merged) out.push_back(std::move(s));
  return out;
}

}  // namespace rekey::db
