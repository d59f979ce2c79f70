#include "db/migrator.h"

#include <openssl/evp.h>

#include <algorithm>
#include <map>
#include <regex>

#include "common/bytes.h"
#include "common/error.h"
#include "db/connection.h"
#include "db/named_query.h"

namespace rekey::db {
namespace {

// Earlier texts of migrations that were rewritten without changing what they leave in a
// database, accepted in place of the current text's checksum. Never add a migration whose
// rewrite changes the schema or the data it produces: that is drift, and needs a new migration.
//
// Issue #16 moved every function, view and trigger out of migrations 0001..0016 into
// sql/schema/*.sql, which the migrator applies after them; a database migrated by an earlier
// rekey holds the very same objects (tests/schema_upgrade_pg_test.cpp compares the schemas).
// These are the SHA-256s of the files as of commit 2eeffa1.
struct EquivalentText {
  std::string_view name;
  std::string_view checksum;
};
constexpr EquivalentText kEquivalentEarlierTexts[] = {
    {"0001_keyring.sql", "16ec404d2f08dfcdc5dc67f76ff79955786a2e4354399d221082cd3e581c952d"},
    {"0002_jobs.sql", "19de69e8986d2e47c58201a782f5678b05fc7d3653cb8371ba408bdf102ae11b"},
    {"0003_batch_checkpoints.sql",
     "b6d1ff5e18eba96bd87aff587ac5b303a59251f580a0a75e1e03387435bc98af"},
    {"0005_operations.sql", "74c0441c4ee085ffbc078df7c29607174a90dee71b768946145eebf4f8ae1e1d"},
    {"0006_audit_chain.sql", "7edff2867ede0eec8a6c7e4e4525f21b07daadaa3db0f26e7175caa41863818a"},
    {"0007_vault_codec.sql", "e8d31f1b1398d7da9afb90dabb1b2e192dd0fa01d542b9e19b585dd8e3c55a11"},
    {"0008_one_pass_planning.sql",
     "619171d101b9903aec29d8f33ce3b474a5da4728c9d95e2235cf3ab8c74784de"},
    {"0009_control_plane_speed.sql",
     "104b7c3c8d1b9e1bc23bcdef84895468afbc836034376a1d4c59151908d1480b"},
    {"0010_planning_speed.sql", "08cd6a6c7c57098c72fd0e0fa33002382f132428449e235bd02f08ecdc4b1999"},
    {"0012_key_locks.sql", "dcfde8e66af23e228c00ac07db8cb5986a60be5c184e3bb121e55992b4f6eb71"},
    {"0013_key_safety_keyring.sql",
     "51f524242598bc6f3f80c10d0210115f1d4d2fa58ec528efbd2101e7937286ab"},
    {"0014_key_safety_jobs.sql",
     "f47fe5c22ef41afdb51c1cf15ef1e230a81186fb9f3c924cf8ef6567694ee53c"},
    {"0016_key_safety_audit.sql",
     "41ee90a88e0c8472577ef62047f0ddd7360a74de8c137a050fb2d1bdc8641472"},
};

bool IsEquivalentEarlierText(const std::string& name, const std::string& checksum) {
  return std::any_of(
      std::begin(kEquivalentEarlierTexts), std::end(kEquivalentEarlierTexts),
      [&](const EquivalentText& e) { return e.name == name && e.checksum == checksum; });
}

struct Planned {
  int version;
  std::string name;
  std::string_view content;
  std::string checksum;
};

struct Definition {
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

// Validates names and orders the definition files by name, which is their apply order.
std::vector<Definition> PlanDefinitions(const std::vector<EmbeddedFile>& files) {
  static const std::regex kName("^[0-9]{2}_[a-z0-9_]+\\.sql$");
  std::vector<Definition> defs;
  for (const EmbeddedFile& f : files) {
    std::string name(f.name);
    if (!std::regex_match(name, kName)) {
      throw ConfigError("definition file name '" + name +
                        "' does not match NN_lowercase_name.sql; rename the file");
    }
    defs.push_back({name, f.content, Sha256Hex(f.content)});
  }
  std::sort(defs.begin(), defs.end(),
            [](const Definition& a, const Definition& b) { return a.name < b.name; });
  return defs;
}

const Definition* FindDefinition(const std::vector<Definition>& defs, const std::string& name) {
  for (const Definition& d : defs) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

constexpr std::string_view kApplyDefinitions = "-- apply-definitions:";

// The migration's text with each `-- apply-definitions: NN_name.sql` line replaced by that
// definition file's text. Throws ConfigError for a file `defs` does not have.
std::string Expand(const Planned& m, const std::vector<Definition>& defs) {
  std::string out;
  std::string_view rest = m.content;
  while (!rest.empty()) {
    size_t end = rest.find('\n');
    std::string_view line = rest.substr(0, end == std::string_view::npos ? rest.size() : end + 1);
    rest.remove_prefix(line.size());
    if (line.substr(0, kApplyDefinitions.size()) != kApplyDefinitions) {
      out.append(line);
      continue;
    }
    std::string name(line.substr(kApplyDefinitions.size()));
    name.erase(0, name.find_first_not_of(" \t"));
    name.erase(name.find_last_not_of(" \t\r\n") + 1);
    const Definition* d = FindDefinition(defs, name);
    if (d == nullptr) {
      throw ConfigError("migration " + m.name + " applies definition file '" + name +
                        "', which is not in sql/schema");
    }
    out += "-- sql/schema/" + d->name + "\n";
    out.append(d->content);
    out += "\n";
  }
  return out;
}

// A text of a definition file applied here once and since replaced by another.
struct ReplacedText {
  std::string first_applied_at;
  std::string replaced_by_applied_at;  // when the file's current text was applied
};

struct RecordedState {
  std::map<int, Recorded> migrations;
  std::map<std::string, Recorded> definitions;
  std::map<std::pair<std::string, std::string>, ReplacedText> replaced;  // by (name, checksum)
};

Recorded ReadRecord(const pqxx::row& row) {
  return {row["name"].as<std::string>(""), row["checksum"].as<std::string>(""),
          row["applied_at"].as<std::string>(""), row["applied_by"].as<std::string>("")};
}

RecordedState ReadRecorded(pqxx::connection& conn) {
  return Classified("reading rekey.schema_migrations", [&] {
    pqxx::nontransaction tx(conn);
    RecordedState state;
    pqxx::row tables = tx.exec1(Query("db/migrator.bookkeeping_tables"));
    if (tables["has_migrations"].as<bool>()) {
      for (const auto& row : tx.exec(Query("db/migrator.applied_migrations"))) {
        state.migrations[row["version"].as<int>()] = ReadRecord(row);
      }
    }
    if (tables["has_definitions"].as<bool>()) {
      for (const auto& row : tx.exec(Query("db/migrator.applied_definitions"))) {
        state.definitions[row["name"].as<std::string>()] = ReadRecord(row);
      }
    }
    if (tables["has_definitions"].as<bool>() && tables["has_definition_texts"].as<bool>()) {
      for (const auto& row : tx.exec(Query("db/migrator.replaced_definition_texts"))) {
        state.replaced[{row["name"].as<std::string>(), row["checksum"].as<std::string>()}] = {
            row["first_applied_at"].as<std::string>(),
            row["replaced_by_applied_at"].as<std::string>()};
      }
    }
    return state;
  });
}

// Holds the session advisory lock for its lifetime. Unlocking on a broken connection is moot:
// the server drops session locks with the session.
class MigrationLock {
 public:
  explicit MigrationLock(pqxx::connection& conn) : conn_(conn) {
    Classified("acquiring the migration lock", [&] {
      pqxx::nontransaction tx(conn_);
      tx.exec_params(Query("db/migrator.lock"), kMigrationLockKey);
    });
  }
  ~MigrationLock() {
    try {
      pqxx::nontransaction tx(conn_);
      tx.exec_params(Query("db/migrator.unlock"), kMigrationLockKey);
    } catch (...) {
    }
  }
  MigrationLock(const MigrationLock&) = delete;
  MigrationLock& operator=(const MigrationLock&) = delete;

 private:
  pqxx::connection& conn_;
};

bool SameText(const Planned& p, const Recorded& rec) {
  return p.name == rec.name &&
         (p.checksum == rec.checksum || IsEquivalentEarlierText(rec.name, rec.checksum));
}

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
    if (!SameText(*it, rec)) {
      throw StateError("migration " + it->name + " was changed after it was applied (" +
                       (it->name != rec.name ? "applied as " + rec.name + ", " : std::string()) +
                       "checksum " + Abbrev(rec.checksum) + " in the database, " +
                       Abbrev(it->checksum) +
                       " in this binary); restore the original file or add a new migration "
                       "instead of editing an applied one");
    }
  }
}

// Refuses (StateError) if a definition file of this binary has a text the database applied once
// and has since replaced: the binary is older than the schema (a rolling deploy's old pod), and
// applying it would put back functions without the checks the newer text added. Runs before
// anything is applied. A binary older than the schema by its migrations is refused by
// CheckNoDrift; this catches the definition changes no migration accompanied.
void CheckNoReplacedText(const std::vector<Definition>& defs, const RecordedState& recorded) {
  for (const Definition& d : defs) {
    auto it = recorded.replaced.find({d.name, d.checksum});
    if (it == recorded.replaced.end()) continue;
    throw StateError("definition file " + d.name + " of this rekey binary is an older text (" +
                     Abbrev(d.checksum) + ", first applied " + it->second.first_applied_at +
                     ") than the one the database has had since " +
                     it->second.replaced_by_applied_at +
                     ": this binary is older than the schema; run rekey migrate with the newest "
                     "rekey binary (to revert a definition on purpose, change its text)");
  }
}

[[noreturn]] void ThrowFailed(const std::string& what, const pqxx::failure& e) {
  std::string message = what + " failed and was rolled back: " + PrimaryMessage(e);
  if (IsTransient(e)) throw TransientError(message + "; retry rekey migrate");
  throw StateError(message + "; fix the cause and rerun rekey migrate");
}

// Applies and records `defs` in tx, in order.
void ApplyDefinitions(pqxx::work& tx, const std::vector<const Definition*>& defs,
                      const std::string& with) {
  for (const Definition* d : defs) {
    try {
      tx.exec(std::string(d->content));
      tx.exec_params(Query("db/migrator.record_definition"), d->name, d->checksum);
    } catch (const pqxx::failure& e) {
      ThrowFailed("schema definition file " + d->name + with, e);
    }
  }
}

// Applies migration m, then (if any) the changed definition files, in one transaction.
void Apply(pqxx::connection& conn, const Planned& m, const std::vector<Definition>& all_defs,
           const std::vector<const Definition*>& changed_defs) {
  std::string text = Expand(m, all_defs);
  pqxx::work tx(conn, "migrate");
  try {
    tx.exec(text);
    tx.exec_params(Query("db/migrator.record_migration"), m.version, m.name, m.checksum);
  } catch (const pqxx::failure& e) {
    ThrowFailed("migration " + m.name, e);
  }
  ApplyDefinitions(tx, changed_defs, " (applied with migration " + m.name + ")");
  try {
    tx.commit();
  } catch (const pqxx::failure& e) {
    ThrowFailed("migration " + m.name, e);
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

MigrationReport Migrate(pqxx::connection& conn, const std::vector<EmbeddedFile>& files,
                        const std::vector<EmbeddedFile>& definitions) {
  std::vector<Planned> plan = Plan(files);
  std::vector<Definition> defs = PlanDefinitions(definitions);
  for (const Planned& m : plan) Expand(m, defs);  // refuses unknown definition files up front
  MigrationLock lock(conn);
  Classified("creating rekey.schema_migrations", [&] {
    pqxx::work tx(conn);
    tx.exec(Query("db/migrator.create_bookkeeping"));
    tx.commit();
  });
  RecordedState recorded = ReadRecorded(conn);
  CheckNoDrift(plan, recorded.migrations);
  CheckNoReplacedText(defs, recorded);
  MigrationReport report;
  std::vector<const Planned*> pending;
  for (const Planned& m : plan) {
    if (recorded.migrations.count(m.version) != 0) {
      ++report.already_applied;
    } else {
      pending.push_back(&m);
    }
  }
  // With a migration pending, every file is applied again, changed or not: the migration may have
  // dropped what a file defines (a view over a column whose type it changes), and the files are
  // re-runnable by contract, so this costs a few milliseconds and removes a trap.
  std::vector<const Definition*> changed;
  for (const Definition& d : defs) {
    auto it = recorded.definitions.find(d.name);
    if (pending.empty() && it != recorded.definitions.end() && it->second.checksum == d.checksum) {
      ++report.definitions_unchanged;
    } else {
      changed.push_back(&d);
      report.definitions_applied.push_back(d.name);
    }
  }
  static const std::vector<const Definition*> kNone;
  for (size_t i = 0; i < pending.size(); ++i) {
    Apply(conn, *pending[i], defs, i + 1 == pending.size() ? changed : kNone);
    report.applied.push_back(pending[i]->name);
  }
  if (pending.empty() && !changed.empty()) {
    pqxx::work tx(conn, "migrate");
    ApplyDefinitions(tx, changed, "");
    try {
      tx.commit();
    } catch (const pqxx::failure& e) {
      ThrowFailed("schema definitions", e);
    }
  }
  return report;
}

std::vector<MigrationStatus> MigrationStatusList(pqxx::connection& conn,
                                                 const std::vector<EmbeddedFile>& files) {
  std::vector<Planned> plan = Plan(files);
  std::map<int, Recorded> recorded = ReadRecorded(conn).migrations;
  std::map<int, MigrationStatus> merged;
  for (const Planned& p : plan) {
    MigrationStatus& s = merged[p.version];
    s.version = p.version;
    s.name = p.name;
    s.in_binary = true;
    auto it = recorded.find(p.version);
    if (it != recorded.end()) {
      s.applied = true;
      s.checksum_matches = SameText(p, it->second);
      s.earlier_text = s.checksum_matches && it->second.checksum != p.checksum;
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

std::vector<DefinitionStatus> DefinitionStatusList(pqxx::connection& conn,
                                                   const std::vector<EmbeddedFile>& definitions) {
  std::vector<Definition> defs = PlanDefinitions(definitions);
  RecordedState state = ReadRecorded(conn);
  const std::map<std::string, Recorded>& recorded = state.definitions;
  std::map<std::string, DefinitionStatus> merged;
  for (const Definition& d : defs) {
    DefinitionStatus& s = merged[d.name];
    s.name = d.name;
    s.in_binary = true;
    s.replaced = state.replaced.count({d.name, d.checksum}) != 0;
    auto it = recorded.find(d.name);
    if (it != recorded.end()) {
      s.applied = true;
      s.current = it->second.checksum == d.checksum;
    }
  }
  for (const auto& [name, rec] : recorded) {
    DefinitionStatus& s = merged[name];
    s.name = name;
    s.applied = true;
    s.applied_at = rec.applied_at;
    s.applied_by = rec.applied_by;
  }
  std::vector<DefinitionStatus> out;
  for (auto& [name, s] : merged) out.push_back(std::move(s));
  return out;
}

}  // namespace rekey::db
