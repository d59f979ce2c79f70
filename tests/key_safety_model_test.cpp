// The key-safety model test (ctest label `model`): random sequences of operations against a real
// PostgreSQL -- application inserts, updates and deletes; `rekey job create` with scopes in varied
// spellings; `rekey work` run to the end, SIGKILLed after a random delay or left running in the
// background (the worker to be SIGKILLed is a real `rekey work` child; the others run the same
// rotation::WorkerPool in-process, tests/model/model_worker.h, which saves a process, its
// connections and key unwraps per step); advance, rollback, cancel, retry-failed; renames and
// schema moves of the tables; key-age policy and `rekey rotate-due`; `rekey keys retire` and
// `destroy --yes` attempts -- and after every step an independent model checks the invariants of
// docs/safety.md:
//   I1 no stored value is under a destroyed key;
//   I2 no value is lost: every row the application wrote is there, and each of its values
//      decrypts (AES-256-GCM in this file, docs/FORMAT.md) under the key it names;
//   I3 every value is under a key that the application wrote it with, or that a job of its column
//      and scope named as a source or target key;
//   I4 an application's write is never overwritten: each value decrypts to the plaintext the
//      application last wrote (and a deleted row stays deleted);
//   I5 a job seen completed left no value of its columns and scope under a source key (unless
//      quarantined in rekey.row_failures); one seen rolled back, none under a target key;
//   I6 every done batch has exactly one completion audit row, and `rekey audit verify` passes.
// Refusals of the CLI are fine (the model only records them); the invariants must hold whatever
// was refused or allowed.
//
// Knobs (docs/testing.md, "The key-safety model"):
//   REKEY_MODEL_SEED=N        replay one sequence (with the same OPS and STEPS it failed with)
//   REKEY_MODEL_SEQUENCES=N   sequences of a run (default 300); REKEY_MODEL_STEPS (default 14)
//   REKEY_MODEL_OPS=a,b,...   only these operations (names in kOperations below; default all)
//   REKEY_MODEL_SECONDS=N     start no random sequence after N seconds (default 240)
//   REKEY_MODEL_BASE_SEED=N   first seed of the random sequences (default: from the clock)
//   REKEY_MODEL_TABLES=a,b    only these fixture tables (cards_u, cards_i, notes_i; default all)
//   REKEY_MODEL_THREADS=N     sequences run side by side (default 3: on 2 cores, a third thread
//                             fills the time the others wait for rekey processes, PostgreSQL and
//                             the kill delays); REKEY_MODEL_VERBOSE=1 prints every sequence's
//                             trace with the time of each step, and the set-up's phases
// Each thread runs its sequences in one database, reset between them (model_database.h).
// Regression seeds, tests/model/seeds.txt, are replayed first by their own test.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/log.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "model/model_crypto.h"
#include "model/model_database.h"
#include "model/model_worker.h"
#include "rotation_support.h"

namespace rekey::testing::model {
namespace {

using Clock = std::chrono::steady_clock;

// Each operation the generator can pick, with its weight. REKEY_MODEL_OPS selects a subset.
struct Operation {
  const char* name;
  int weight;
};
constexpr Operation kOperations[] = {
    {"insert", 8},       {"update", 10},   {"delete", 4},  {"job", 8},
    {"job_spelling", 6},  // a scoped job whose scope value is spelled unlike PostgreSQL prints it
    {"job_partial", 3},   // a raw job on one of two columns that share a key-id column
    {"job_overlap", 3},   // a job on a table that already has an unfinished job
    {"work", 14},        {"work_kill", 6}, {"work_bg", 5}, {"advance", 7},
    {"rollback", 4},     {"cancel", 2},    {"retry", 2},   {"rename", 4},
    {"rotate_due", 4},   {"retire", 5},    {"destroy", 5},
};

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

std::string EnvString(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

std::set<std::string> ParseOps(const std::string& text) {
  std::set<std::string> out;
  if (text.empty() || text == "all") {
    for (const auto& op : kOperations) out.insert(op.name);
    return out;
  }
  std::stringstream in(text);
  std::string name;
  while (std::getline(in, name, ',')) {
    const bool known = std::any_of(std::begin(kOperations), std::end(kOperations),
                                   [&](const Operation& op) { return name == op.name; });
    if (!known) throw std::invalid_argument("REKEY_MODEL_OPS: unknown operation " + name);
    out.insert(name);
  }
  return out;
}

std::string JoinOps(const std::set<std::string>& ops) {
  if (ops == ParseOps("")) return "all";
  std::string out;
  for (const auto& op : ops) out += (out.empty() ? "" : ",") + op;
  return out;
}

constexpr int kDefaultSteps = 14;

// Marks the outcome of an operation that found nothing to act on.
const std::string kNothing = "nothing to do: ";

// The two tenants every table holds, and the keyring scope each tenant's application writes in.
constexpr int kTenants = 2;
const char* const kKeyScopes[kTenants] = {"t0", "t1"};
const char* const kTenantUuids[kTenants] = {"8f14e45f-ceea-467f-a0e6-0d3c5a3b1b2e",
                                            "c0ffee00-dead-4bee-8f00-0123456789ab"};
const int kTenantInts[kTenants] = {7, 42};

struct TableSpec {
  std::string schema;
  std::string name;
  std::string scope_column;
  bool uuid_scope;
  bool raw;                          // raw codec: each row's key id lives in key_id_column
  std::string key_id_column;         // raw only
  std::vector<std::string> columns;  // current names of the ciphertext columns
  std::string ad_template;           // "" or "{pk}" (names never enter it: renames stay legal)
};

struct Value {
  std::optional<std::string> plaintext;  // nullopt: the application stored NULL
  uint32_t key = 0;                      // the key the application encrypted it with
};

struct Row {
  int tenant = 0;
  std::vector<Value> values;  // one per column of the table
};

struct TableModel {
  TableSpec spec;
  std::map<int64_t, Row> rows;
  int64_t next_id = 1;
};

// What the model knows of a job: its intent, as the operator stated it (or, for rotate-due's
// jobs, as rekey recorded it), with the scope in the model's own canonical form.
struct JobModel {
  int64_t id = 0;
  int table = 0;
  std::vector<int> columns;
  std::optional<int> tenant;  // nullopt: the whole table
  std::vector<std::pair<uint32_t, uint32_t>> keys;
  // The finished state (completed, rolled_back) I5 was last checked in: each is checked once,
  // when first seen, since later steps may legitimately move values on (another job, a rollback).
  std::string final_state_checked;
  bool Names(uint32_t key) const {
    return std::any_of(keys.begin(), keys.end(),
                       [&](const auto& p) { return p.first == key || p.second == key; });
  }
  bool Covers(int in_table, int column, int row_tenant) const {
    return in_table == table &&
           std::find(columns.begin(), columns.end(), column) != columns.end() &&
           (!tenant || *tenant == row_tenant);
  }
};

struct KeyRow {
  std::string scope;
  std::string status;
};

struct Violation {
  std::string invariant;
  std::string detail;
};

struct SequenceResult {
  uint64_t seed = 0;
  std::vector<std::string> trace;
  std::vector<Violation> violations;
  int steps_run = 0;
};

DataKey MasterKey() {
  DataKey k;
  for (int i = 0; i < 32; ++i) k[i] = uint8_t(0xA0 + i);  // rotation_support.h's master key
  return k;
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}
std::string Upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  return s;
}

// One random sequence in a freshly reset database. Run() executes the steps and checks the
// invariants after each; it stops at the first step that breaks one.
class Sequence {
 public:
  // `tables`: comma-separated table names to use, or "" for all. `db` is reset by Run().
  Sequence(ModelDatabase& db, uint64_t seed, std::set<std::string> ops, int steps,
           std::string tables)
      : db_(db),
        seed_(seed),
        rng_(seed),
        ops_(std::move(ops)),
        steps_(steps),
        tables_filter_(std::move(tables)) {
    for (const auto& op : kOperations) {
      if (ops_.count(op.name)) weighted_.push_back(op);
    }
  }
  ~Sequence() {
    background_.reset();
    conn_.reset();
  }

  SequenceResult Run() {
    SequenceResult result;
    result.seed = seed_;
    try {
      const auto set_up_began = Clock::now();
      SetUp();
      Check(0);
      trace_.back() += " [" +
                       std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                          Clock::now() - set_up_began)
                                          .count()) +
                       " ms]";
      for (int step = 1; step <= steps_ && violations_.empty(); ++step) {
        step_ = step;
        const auto began = Clock::now();
        std::string what = DoStep();
        // An operation with nothing to act on (no job yet, no fitting table) is drawn again, so
        // the steps of a sequence are spent on real work.
        for (int redraw = 0; redraw < 8 && what.rfind(kNothing, 0) == 0; ++redraw) what = DoStep();
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - began);
        const auto check_began = Clock::now();
        Check(step);
        const auto check_ms =
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - check_began);
        trace_.push_back("step " + std::to_string(step) + ": " + what + " [" +
                         std::to_string(ms.count()) + " ms, check " +
                         std::to_string(check_ms.count()) + " ms]");
        result.steps_run = step;
      }
      if (violations_.empty()) Finish();
    } catch (const std::exception& e) {
      violations_.push_back({"harness", std::string("the sequence could not run: ") + e.what()});
    }
    result.trace = trace_;
    result.violations = violations_;
    return result;
  }

 private:
  // ---------------------------------------------------------------------------------------------
  // Set-up: two keyring scopes with a primary key each; three small tables (uuid and integer
  // tenant columns; Tink and raw codecs; two raw columns sharing one key-id column).
  void SetUp() {
    const auto began = Clock::now();
    db_.Reset();
    const auto reset = Clock::now();
    conninfo_ = db_.conninfo();
    conn_ = std::make_unique<pqxx::connection>(conninfo_);
    {
      auto kms = TestKms();
      pqxx::work txn(*conn_);
      for (int t = 0; t < kTenants; ++t) {
        const uint32_t id = uint32_t(t + 1);
        keyring::ImportKey(txn, kms, id, kKeyScopes[t], TestDataKey(id));
        txn.exec0("UPDATE rekey.keys SET status = 'primary' WHERE key_id = " + std::to_string(id));
      }
      // Spare enabled keys (random material, wrapped by the local KMS) spare most jobs a
      // `rekey keys create` process; later jobs still create their own.
      for (int t = 0; t < kTenants; ++t) {
        keyring::CreateKeyOptions options;
        options.scope = kKeyScopes[t];
        keyring::CreateKey(txn, kms, options);
      }
      txn.exec0("CREATE SCHEMA archive");
      txn.exec0(
          "CREATE TABLE public.cards_u (id bigint PRIMARY KEY, tenant uuid NOT NULL, token bytea)");
      txn.exec0(
          "CREATE TABLE public.cards_i (id bigint PRIMARY KEY, tenant integer NOT NULL, key_id "
          "integer, pan bytea, cvv bytea)");
      // Raw values name no key: only a registered raw column tells key usage and the census
      // (rekey.key_census) which key-id column governs it, so a team using the raw codec
      // registers its columns, as here (docs/keyring.md, "The key census"). Unregistered, a key
      // could be destroyed under them and no census could know.
      txn.exec0(
          "INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec, "
          "key_id_column, ad_template) VALUES ('public', 'cards_i', 'id', 'pan', 'raw', 'key_id', "
          "'{pk}'), ('public', 'cards_i', 'id', 'cvv', 'raw', 'key_id', '{pk}')");
      txn.exec0(
          "CREATE TABLE public.notes_i (id bigint PRIMARY KEY, tenant integer NOT NULL, body "
          "bytea, memo bytea)");
      txn.commit();
    }
    for (TableSpec spec :
         {TableSpec{"public", "cards_u", "tenant", true, false, "", {"token"}, ""},
          TableSpec{"public", "cards_i", "tenant", false, true, "key_id", {"pan", "cvv"}, "{pk}"},
          TableSpec{"public", "notes_i", "tenant", false, false, "", {"body", "memo"}, "{pk}"}}) {
      // REKEY_MODEL_TABLES (e.g. cards_u) narrows a run to some tables, so one defect can be
      // shown without another one's noise; the others stay empty.
      const std::string only = "," + tables_filter_ + ",";
      if (only != ",," && only.find("," + spec.name + ",") == std::string::npos) continue;
      TableModel table;
      table.spec = spec;
      tables_.push_back(table);
    }
    RefreshKeys();
    const int rows_per_tenant = EnvInt("REKEY_MODEL_ROWS", 6);
    const auto rows_began = Clock::now();
    for (size_t t = 0; t < tables_.size(); ++t) {
      for (int tenant = 0; tenant < kTenants; ++tenant) {
        for (int i = 0; i < rows_per_tenant; ++i) AppInsert(int(t), tenant);
      }
    }
    std::string names;
    for (const auto& table : tables_) names += (names.empty() ? "" : ", ") + table.spec.name;
    const auto ms = [](Clock::duration d) {
      return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
    };
    trace_.push_back("set-up: keys 1 (t0) and 2 (t1) primary, 3 (t0) and 4 (t1) enabled; " +
                     std::to_string(rows_per_tenant) + " rows per tenant in " + names + " (reset " +
                     ms(reset - began) + " ms, keys and tables " + ms(rows_began - reset) +
                     " ms, rows " + ms(Clock::now() - rows_began) + " ms)");
  }

  // ---------------------------------------------------------------------------------------------
  // Steps.
  std::string DoStep() {
    int total = 0;
    for (const auto& op : weighted_) total += op.weight;
    int pick = Uniform(0, total - 1);
    std::string op;
    for (const auto& o : weighted_) {
      if (pick < o.weight) {
        op = o.name;
        break;
      }
      pick -= o.weight;
    }
    std::string done;
    if (op == "insert" || op == "update" || op == "delete") done = AppWrite(op);
    if (op.rfind("job", 0) == 0) done = CreateJob(op);
    if (op.rfind("work", 0) == 0) done = Work(op);
    if (op == "advance" || op == "rollback" || op == "cancel" || op == "retry") done = JobVerb(op);
    if (op == "rename") done = Rename();
    if (op == "rotate_due") done = RotateDue();
    if (op == "retire" || op == "destroy") done = KeyLifecycle(op);
    if (done.empty() || done.rfind(kNothing, 0) == 0) return kNothing + op;
    return "(" + op + ") " + done;
  }

  std::string AppWrite(const std::string& op) {
    const int t = Uniform(0, int(tables_.size()) - 1);
    TableModel& table = tables_[t];
    if (op == "insert") return AppInsert(t, Uniform(0, kTenants - 1));
    if (table.rows.empty()) return kNothing + op + ": " + table.spec.name + " is empty";
    auto it = table.rows.begin();
    std::advance(it, Uniform(0, int(table.rows.size()) - 1));
    const int64_t id = it->first;
    if (op == "delete") {
      try {
        pqxx::work txn(*conn_);
        txn.exec0("SET LOCAL statement_timeout = '10s'");
        txn.exec_params0("DELETE FROM " + Qualified(table.spec) + " WHERE id = $1", id);
        txn.commit();
      } catch (const std::exception& e) {
        return "app delete " + table.spec.name + " id " + std::to_string(id) +
               " failed: " + OneLine(e.what());
      }
      table.rows.erase(id);
      return "app delete " + table.spec.name + " id " + std::to_string(id);
    }
    return AppUpsert(t, id, it->second.tenant, false);
  }

  std::string AppInsert(int t, int tenant) {
    const int64_t id = tables_[t].next_id++;
    return AppUpsert(t, id, tenant, true);
  }

  // The application encrypts under its scope's primary key as it reads it now; the share lock
  // orders the write before or after a promotion, never across it.
  std::string AppUpsert(int t, int64_t id, int tenant, bool insert) {
    TableModel& table = tables_[t];
    const TableSpec& s = table.spec;
    Row row;
    row.tenant = tenant;
    uint32_t key_id = 0;
    try {
      pqxx::work txn(*conn_);
      txn.exec0("SET LOCAL statement_timeout = '10s'");
      pqxx::result primary = txn.exec_params(
          "SELECT key_id FROM rekey.keys WHERE scope = $1 AND status = 'primary' FOR SHARE",
          kKeyScopes[tenant]);
      if (primary.empty()) {
        return std::string("app ") + (insert ? "insert" : "update") + " " + s.name + ": scope " +
               kKeyScopes[tenant] + " has no primary key";
      }
      key_id = primary[0][0].as<uint32_t>();
      if (!material_.count(key_id)) {
        return "app write " + s.name + ": primary key " + std::to_string(key_id) +
               " does not unwrap under the test's master key";
      }
      const DataKey& key = material_.at(key_id);
      // Column list, values and assignments in step; the bytes are the test's own, as hex.
      const std::string tenant_text =
          s.uuid_scope ? kTenantUuids[tenant] : std::to_string(kTenantInts[tenant]);
      std::string cols = "id, " + conn_->quote_name(s.scope_column);
      std::string vals = std::to_string(id) + ", " + txn.quote(tenant_text) +
                         "::" + (s.uuid_scope ? "uuid" : "integer");
      std::string sets;
      if (s.raw) {
        cols += ", " + conn_->quote_name(s.key_id_column);
        vals += ", " + std::to_string(key_id);
        sets = conn_->quote_name(s.key_id_column) + " = " + std::to_string(key_id);
      }
      for (size_t c = 0; c < s.columns.size(); ++c) {
        Value v;
        v.key = key_id;
        // A second column is sometimes NULL: NULL is never encrypted, and must stay NULL.
        if (c == 0 || Uniform(0, 3) > 0) {
          v.plaintext = "s" + std::to_string(seed_) + "-" + std::to_string(step_) + "-" +
                        std::to_string(id) + "-" + std::to_string(c);
        }
        row.values.push_back(v);
        std::string literal = "NULL";
        if (v.plaintext) {
          const std::string ad = Ad(s, id);
          const std::string sealed = s.raw ? SealRawValue(key, *v.plaintext, ad)
                                           : SealTinkValue(key_id, key, *v.plaintext, ad);
          literal = "decode(" + txn.quote(Hex(sealed)) + ", 'hex')";
        }
        const std::string col = conn_->quote_name(s.columns[c]);
        cols += ", " + col;
        vals += ", " + literal;
        sets += (sets.empty() ? "" : ", ") + col + " = " + literal;
      }
      if (insert) {
        txn.exec0("INSERT INTO " + Qualified(s) + " (" + cols + ") VALUES (" + vals + ")");
      } else {
        pqxx::result r = txn.exec("UPDATE " + Qualified(s) + " SET " + sets +
                                  " WHERE id = " + std::to_string(id));
        if (r.affected_rows() != 1) {
          return "app update " + s.name + " id " + std::to_string(id) + ": row not found";
        }
      }
      txn.commit();
    } catch (const std::exception& e) {
      return std::string("app ") + (insert ? "insert" : "update") + " " + s.name + " id " +
             std::to_string(id) + " failed: " + OneLine(e.what());
    }
    table.rows[id] = row;
    return std::string("app ") + (insert ? "insert" : "update") + " " + s.name + " id " +
           std::to_string(id) + " (tenant " + std::to_string(tenant) + ") under key " +
           std::to_string(key_id);
  }

  std::string CreateJob(const std::string& op) {
    std::vector<int> candidates;
    for (size_t t = 0; t < tables_.size(); ++t) {
      if (op == "job_partial" && !tables_[t].spec.raw) continue;
      if (op != "job_overlap" && HasUnfinishedJob(int(t))) continue;
      if (op == "job_overlap" && !HasUnfinishedJob(int(t))) continue;
      candidates.push_back(int(t));
    }
    if (candidates.empty()) return kNothing + op + ": no table fits";
    const int t = candidates[Uniform(0, int(candidates.size()) - 1)];
    const TableSpec& s = tables_[t].spec;
    JobModel job;
    job.table = t;
    if (op == "job_partial") {
      job.columns = {Uniform(0, 1)};
    } else if (!s.raw && s.columns.size() > 1 && Uniform(0, 2) == 0) {
      job.columns = {Uniform(0, int(s.columns.size()) - 1)};  // Tink columns rotate separately
    } else {
      for (size_t c = 0; c < s.columns.size(); ++c) job.columns.push_back(int(c));
    }
    std::vector<std::string> args{"job", "create", "--table", s.schema + "." + s.name};
    for (int c : job.columns) {
      args.push_back("--column");
      args.push_back(s.columns[c]);
    }
    if (s.raw) {
      args.insert(args.end(), {"--codec", "raw", "--key-id-column", s.key_id_column});
    }
    if (!s.ad_template.empty()) args.insert(args.end(), {"--ad-template", s.ad_template});
    const bool scoped = op == "job_spelling" || Uniform(0, 2) > 0;
    std::vector<int> tenants;
    if (scoped) {
      job.tenant = Uniform(0, kTenants - 1);
      tenants = {*job.tenant};
      args.push_back("--scope");
      args.push_back(s.scope_column + "=" + ScopeSpelling(s, *job.tenant, op == "job_spelling"));
    } else {
      for (int i = 0; i < kTenants; ++i) tenants.push_back(i);
    }
    std::string map;
    for (int tenant : tenants) {
      std::optional<uint32_t> source = SourceKeyFor(tenant);
      if (!source) return op + ": scope " + std::string(kKeyScopes[tenant]) + " has no usable key";
      std::optional<uint32_t> target = TargetKeyFor(tenant);
      if (!target) return op + ": could not create a target key in " + kKeyScopes[tenant];
      job.keys.push_back({*source, *target});
      map += (map.empty() ? "" : ",") + std::to_string(*source) + ":" + std::to_string(*target);
    }
    args.insert(args.end(), {"--map", map, "--batch-size", std::to_string(Uniform(2, 6))});
    static const char* const kStagePlans[] = {"100", "50,100", "25,100", "1,25,50,75,100", ""};
    const std::string stages = kStagePlans[Uniform(0, 4)];
    if (!stages.empty()) args.insert(args.end(), {"--stages", stages});
    if (Uniform(0, 1) == 0) args.insert(args.end(), {"--observe", "0s"});
    ProcessResult r = Rekey(args);
    std::smatch m;
    const std::string desc = Describe(args);
    if (r.exit_code == 0 && std::regex_search(r.out, m, std::regex("created job (\\d+)"))) {
      job.id = std::stoll(m[1]);
      jobs_.push_back(job);
      return desc + " -> job " + std::to_string(job.id);
    }
    return desc + " -> exit " + std::to_string(r.exit_code) + ": " + OneLine(r.err + r.out);
  }

  // Usually the scope's primary key; sometimes another key of the scope that still decrypts.
  std::optional<uint32_t> SourceKeyFor(int tenant) {
    std::vector<uint32_t> usable;
    std::optional<uint32_t> primary;
    for (const auto& [id, k] : keys_) {
      if (k.scope != kKeyScopes[tenant]) continue;
      if (k.status == "primary") primary = id;
      if (k.status == "primary" || k.status == "decrypt_only") usable.push_back(id);
    }
    if (primary && Uniform(0, 3) > 0) return primary;
    if (usable.empty()) return primary;
    return usable[Uniform(0, int(usable.size()) - 1)];
  }

  // An enabled key of the scope, or a new one from `rekey keys create`.
  std::optional<uint32_t> TargetKeyFor(int tenant) {
    for (const auto& [id, k] : keys_) {
      if (k.scope == kKeyScopes[tenant] && k.status == "enabled" && Uniform(0, 1) == 0) return id;
    }
    ProcessResult r = Rekey({"keys", "create", "--scope", kKeyScopes[tenant]});
    std::smatch m;
    if (r.exit_code != 0 || !std::regex_search(r.out, m, std::regex("created key (\\d+)"))) {
      return std::nullopt;
    }
    RefreshKeys();
    return uint32_t(std::stoul(m[1]));
  }

  std::string ScopeSpelling(const TableSpec& s, int tenant, bool unusual) {
    if (s.uuid_scope) {
      const std::string u = kTenantUuids[tenant];
      if (!unusual) return u;
      return Uniform(0, 1) == 0 ? Upper(u) : Upper(u.substr(0, 18)) + u.substr(18);
    }
    const std::string n = std::to_string(kTenantInts[tenant]);
    return unusual ? std::string(size_t(Uniform(1, 3)), '0') + n : n;
  }

  std::string Work(const std::string& op) {
    std::vector<int64_t> open = JobsIn({"active", "verifying", "awaiting_approval", "paused"});
    if (open.empty()) open = AllJobIds();
    if (open.empty()) return kNothing + op + ": no job";
    const int64_t job = open[Uniform(0, int(open.size()) - 1)];
    const std::string j = std::to_string(job);
    std::string finished_bg;
    if (background_) finished_bg = "; background worker " + WaitBackground();
    // Workers that run to their end run in-process (model_worker.h); only a worker to be
    // SIGKILLed mid-batch needs a process of its own.
    if (op == "work_bg") {
      background_ = StartWorker(job);
      return "rekey work --job " + j + " in the background (in-process)" + finished_bg;
    }
    if (op == "work_kill") {
      auto worker = std::make_unique<ChildProcess>(
          std::vector<std::string>{REKEY_BINARY, "--db", conninfo_, "work", "--job", j},
          WorkerEnv());
      const int delay = Uniform(0, 250);
      std::this_thread::sleep_for(std::chrono::milliseconds(delay));
      worker->Signal(SIGKILL);
      ProcessResult r = worker->Wait(10);
      return "rekey work --job " + j + " SIGKILLed after " + std::to_string(delay) + " ms (" +
             (r.term_signal ? "killed" : "had exited " + std::to_string(r.exit_code)) + ")" +
             finished_bg;
    }
    return "rekey work --job " + j + " (in-process) -> " +
           WorkerOutcome(*StartWorker(job), *conn_) + finished_bg;
  }

  std::unique_ptr<InProcessWorker> StartWorker(int64_t job) {
    return std::make_unique<InProcessWorker>(
        conninfo_, job, "model-" + std::to_string(seed_) + "-" + std::to_string(++workers_));
  }

  static std::string WorkerOutcome(InProcessWorker& worker, pqxx::connection& conn) {
    ProcessResult r = worker.Wait(std::chrono::seconds(30), conn);
    if (r.term_signal) return "still running after 30 s, stopped";
    if (!r.out.empty()) return r.out + ", stopped";
    return "exit " + std::to_string(r.exit_code) + (r.exit_code ? ": " + OneLine(r.err) : "");
  }

  std::string WaitBackground() {
    const std::string job = std::to_string(background_->job());
    const std::string outcome = WorkerOutcome(*background_, *conn_);
    background_.reset();
    return "(job " + job + ") " + outcome;
  }

  std::string JobVerb(const std::string& op) {
    std::vector<int64_t> ids;
    if (op == "advance") ids = JobsIn({"awaiting_approval", "paused"});
    if (op == "retry") ids = JobsIn({"failed"});
    if (op == "rollback" || op == "cancel" || ids.empty()) ids = AllJobIds();
    if (ids.empty()) return kNothing + op + ": no job";
    const std::string j = std::to_string(ids[Uniform(0, int(ids.size()) - 1)]);
    std::vector<std::string> args;
    if (op == "advance") {
      args = {"job", "advance", j};
      if (Uniform(0, 1) == 0) args.insert(args.end(), {"--observe", "0s"});
    } else if (op == "rollback") {
      args = {"job", "rollback", j};
      const std::string plan = Query1(
          "SELECT array_to_string(stage_plan, ',') FROM rekey.jobs "
          "WHERE job_id = " +
          j);
      std::vector<std::string> percents;
      std::stringstream in(plan);
      std::string p;
      while (std::getline(in, p, ',')) percents.push_back(p);
      if (percents.size() > 1 && Uniform(0, 2) == 0) {
        args.insert(args.end(),
                    {"--to-percent", percents[size_t(Uniform(0, int(percents.size()) - 2))]});
      }
    } else if (op == "cancel") {
      args = {"job", "cancel", j};
    } else {
      args = {"job", "retry-failed", j};
    }
    ProcessResult r = Rekey(args);
    return Describe(args) + " -> exit " + std::to_string(r.exit_code) +
           (r.exit_code ? ": " + OneLine(r.err) : "");
  }

  // ALTER TABLE ... RENAME / RENAME COLUMN / SET SCHEMA: the application follows the new names
  // at once; rekey must follow them too, or refuse, but never lose track of the values.
  std::string Rename() {
    const int t = Uniform(0, int(tables_.size()) - 1);
    TableSpec& s = tables_[t].spec;
    const int kind = Uniform(0, 2);
    std::string sql, after;
    TableSpec renamed = s;
    if (kind == 0) {
      renamed.name = s.name.substr(0, s.name.find("_r")) + "_r" + std::to_string(step_);
      sql = "ALTER TABLE " + Qualified(s) + " RENAME TO " + conn_->quote_name(renamed.name);
    } else if (kind == 1) {
      const int c = Uniform(0, int(s.columns.size()) - 1);
      renamed.columns[c] =
          s.columns[c].substr(0, s.columns[c].find("_r")) + "_r" + std::to_string(step_);
      sql = "ALTER TABLE " + Qualified(s) + " RENAME COLUMN " + conn_->quote_name(s.columns[c]) +
            " TO " + conn_->quote_name(renamed.columns[c]);
    } else {
      renamed.schema = s.schema == "public" ? "archive" : "public";
      sql = "ALTER TABLE " + Qualified(s) + " SET SCHEMA " + renamed.schema;
    }
    try {
      pqxx::work txn(*conn_);
      txn.exec0("SET LOCAL lock_timeout = '3s'");
      txn.exec0(sql);
      txn.commit();
    } catch (const std::exception& e) {
      return sql + " failed: " + OneLine(e.what());
    }
    s = renamed;
    return sql;
  }

  std::string RotateDue() {
    std::string out;
    if (!policy_set_) {
      ProcessResult p = Rekey({"keys", "policy", "set", "--max-age", "1 millisecond"});
      out = "rekey keys policy set --max-age '1 millisecond' -> exit " +
            std::to_string(p.exit_code) + "; ";
      policy_set_ = p.exit_code == 0;
    }
    static const char* const kStagePlans[] = {"100", "50,100", "1,25,50,75,100"};
    std::vector<std::string> args{"rotate-due", "--stages", kStagePlans[Uniform(0, 2)],
                                  "--batch-size", std::to_string(Uniform(2, 6))};
    if (Uniform(0, 1) == 0) args.insert(args.end(), {"--observe", "0s"});
    ProcessResult r = Rekey(args);
    out +=
        Describe(args) + " -> exit " + std::to_string(r.exit_code) + ": " + OneLine(r.out + r.err);
    out += AdoptJobsFromDatabase();
    return out;
  }

  // Jobs the model did not create itself (rotate-due's): their intent as rekey recorded it, the
  // scope value read in the model's canonical form.
  std::string AdoptJobsFromDatabase() {
    int64_t known = 0;
    for (const auto& j : jobs_) known = std::max(known, j.id);
    std::string adopted;
    pqxx::read_transaction txn(*conn_);
    for (const auto& row : txn.exec_params(
             "SELECT j.job_id, j.schema_name, j.table_name, j.scope_value,"
             " (SELECT string_agg(t.column_name, ',' ORDER BY c.ordinal) FROM rekey.job_columns c"
             "   JOIN rekey.targets t USING (target_id) WHERE c.job_id = j.job_id),"
             " (SELECT string_agg(k.source_key_id || ':' || k.target_key_id, ',')"
             "   FROM rekey.job_keys k WHERE k.job_id = j.job_id)"
             " FROM rekey.jobs j WHERE j.job_id > $1 ORDER BY j.job_id",
             known)) {
      JobModel job;
      job.id = row[0].as<int64_t>();
      job.table = -1;
      for (size_t t = 0; t < tables_.size(); ++t) {
        if (tables_[t].spec.schema == row[1].c_str() && tables_[t].spec.name == row[2].c_str()) {
          job.table = int(t);
        }
      }
      if (job.table < 0) {
        adopted += "; job " + std::to_string(job.id) + " names no table the model knows";
        continue;
      }
      const TableSpec& s = tables_[job.table].spec;
      if (!row[3].is_null()) job.tenant = CanonicalTenant(s, row[3].c_str());
      std::stringstream cols(row[4].is_null() ? "" : row[4].c_str());
      std::string c;
      while (std::getline(cols, c, ',')) {
        for (size_t i = 0; i < s.columns.size(); ++i) {
          if (s.columns[i] == c) job.columns.push_back(int(i));
        }
      }
      std::stringstream keys(row[5].is_null() ? "" : row[5].c_str());
      std::string pair;
      while (std::getline(keys, pair, ',')) {
        const size_t colon = pair.find(':');
        job.keys.push_back({uint32_t(std::stoul(pair.substr(0, colon))),
                            uint32_t(std::stoul(pair.substr(colon + 1)))});
      }
      adopted += "; adopted job " + std::to_string(job.id) + " on " + s.name;
      jobs_.push_back(job);
    }
    return adopted;
  }

  // The model's own reading of a scope value: a uuid in any case, an integer with any zeros.
  std::optional<int> CanonicalTenant(const TableSpec& s, const std::string& text) {
    for (int t = 0; t < kTenants; ++t) {
      if (s.uuid_scope ? Lower(text) == kTenantUuids[t] : std::stoll(text) == kTenantInts[t]) {
        return t;
      }
    }
    return -1;  // a tenant that holds no rows
  }

  // Retire or destroy a key: mostly one that still holds values (where a mistake loses data).
  std::string KeyLifecycle(const std::string& op) {
    std::set<uint32_t> holding = KeysHoldingValues();
    std::vector<uint32_t> preferred, any;
    for (const auto& [id, k] : keys_) {
      if (k.status == "destroyed") continue;
      any.push_back(id);
      const bool fits = op == "retire" ? k.status == "decrypt_only" || k.status == "enabled"
                                       : k.status == "retired" || k.status == "decrypt_only";
      if (fits && holding.count(id)) preferred.push_back(id);
      if (fits && !holding.count(id) && Uniform(0, 3) == 0) preferred.push_back(id);
    }
    const std::vector<uint32_t>& pool = !preferred.empty() && Uniform(0, 4) > 0 ? preferred : any;
    if (pool.empty()) return kNothing + op + ": no key";
    const uint32_t key = pool[Uniform(0, int(pool.size()) - 1)];
    const std::string k = std::to_string(key);
    std::string out;
    if (op == "destroy" && keys_[key].status != "retired") {
      ProcessResult r = Rekey({"keys", "retire", k});
      out = "rekey keys retire " + k + " -> exit " + std::to_string(r.exit_code) +
            (r.exit_code ? ": " + OneLine(r.err) : "") + "; ";
    }
    std::vector<std::string> args{"keys", op, k};
    if (op == "destroy") args.push_back("--yes");
    ProcessResult r = Rekey(args);
    return out + Describe(args) + " -> exit " + std::to_string(r.exit_code) +
           (r.exit_code ? ": " + OneLine(r.err) : "");
  }

  void Finish() {
    if (background_) trace_.push_back("end: background worker " + WaitBackground());
    Check(steps_ + 1);
    ProcessResult audit = Rekey({"audit", "verify"});
    if (audit.exit_code != 0) {
      violations_.push_back({"I6", "rekey audit verify -> exit " + std::to_string(audit.exit_code) +
                                       ": " + OneLine(audit.out + audit.err)});
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The invariants, checked against what is stored now.
  // One read transaction for all of it: the checks see one snapshot, in few round trips.
  void Check(int step) {
    pqxx::read_transaction txn(*conn_);
    RefreshKeys(txn);
    std::map<int64_t, std::string> states;
    for (const auto& row : txn.exec("SELECT job_id, state FROM rekey.jobs")) {
      states[row[0].as<int64_t>()] = row[1].as<std::string>();
    }
    const std::string at = "after step " + std::to_string(step) + ": ";
    for (size_t t = 0; t < tables_.size(); ++t) CheckTable(txn, int(t), states, at);
    for (auto& job : jobs_) {
      const std::string& state = states[job.id];
      if (state == "completed" || state == "rolled_back") job.final_state_checked = state;
    }
    const int64_t unaudited =
        txn.exec1(
               "SELECT count(*) FROM rekey.batches b WHERE b.state = 'done' AND (SELECT count(*) "
               "FROM rekey.audit a WHERE a.job_id = b.job_id AND a.batch_no = b.batch_no AND "
               "a.action = 'rotation.batch.completed' AND a.at >= b.claimed_at) <> 1")[0]
            .as<int64_t>();
    if (unaudited > 0) {
      violations_.push_back({"I6", at + std::to_string(unaudited) +
                                       " done batches without exactly one completion audit row"});
    }
  }

  void CheckTable(pqxx::read_transaction& txn, int t, const std::map<int64_t, std::string>& states,
                  const std::string& at) {
    const TableModel& table = tables_[t];
    const TableSpec& s = table.spec;
    std::string select = "SELECT id, " + conn_->quote_name(s.scope_column) + "::text";
    if (s.raw) select += ", " + conn_->quote_name(s.key_id_column);
    for (const auto& c : s.columns) select += ", " + conn_->quote_name(c);
    select += " FROM " + Qualified(s) + " ORDER BY id";
    std::set<std::pair<std::string, std::string>> quarantined;  // (pk, column) of finished jobs
    std::map<int64_t, std::vector<std::optional<std::string>>> stored;
    std::map<int64_t, std::optional<int64_t>> raw_keys;
    {
      for (const auto& row : txn.exec(select)) {
        const int64_t id = row[0].as<int64_t>();
        int field = 2;
        if (s.raw) {
          raw_keys[id] = row[field].is_null() ? std::nullopt
                                              : std::optional<int64_t>(row[field].as<int64_t>());
          ++field;
        }
        for (size_t c = 0; c < s.columns.size(); ++c, ++field) {
          if (row[field].is_null()) {
            stored[id].push_back(std::nullopt);
          } else {
            stored[id].push_back(pqxx::binarystring(row[field]).str());
          }
        }
      }
    }
    for (const auto& [id, row] : table.rows) {
      auto found = stored.find(id);
      const std::string where = s.name + " id " + std::to_string(id);
      if (found == stored.end()) {
        violations_.push_back({"I2", at + where + " is gone: the application never deleted it"});
        continue;
      }
      for (size_t c = 0; c < s.columns.size(); ++c) {
        CheckValue(txn, t, id, row, int(c), found->second[c], s.raw ? raw_keys[id] : std::nullopt,
                   states, at + where + " " + s.columns[c]);
      }
    }
    for (const auto& [id, values] : stored) {
      if (!table.rows.count(id)) {
        violations_.push_back({"I4", at + s.name + " id " + std::to_string(id) +
                                         " exists, but the application deleted it"});
      }
    }
  }

  void CheckValue(pqxx::read_transaction& txn, int t, int64_t id, const Row& row, int c,
                  const std::optional<std::string>& value, std::optional<int64_t> raw_key,
                  const std::map<int64_t, std::string>& states, const std::string& where) {
    const TableSpec& s = tables_[t].spec;
    const Value& written = row.values[c];
    if (!written.plaintext) {
      if (value) violations_.push_back({"I4", where + ": NULL was written, a value is stored"});
      return;
    }
    if (!value) {
      violations_.push_back({"I2", where + ": the value written is now NULL"});
      return;
    }
    std::optional<uint32_t> key;
    if (s.raw) {
      if (raw_key && *raw_key >= 0 && *raw_key <= 0xffffffffLL) key = uint32_t(*raw_key);
    } else {
      key = TinkKeyId(*value);
    }
    if (!key) {
      violations_.push_back({"I2", where + ": the stored value names no key"});
      return;
    }
    const std::string k = std::to_string(*key);
    auto status = keys_.find(*key);
    if (status != keys_.end() && status->second.status == "destroyed") {
      violations_.push_back({"I1", where + " is under key " + k + ", which is destroyed"});
    }
    bool intended = written.key == *key;
    for (const auto& job : jobs_) intended |= job.Covers(t, c, row.tenant) && job.Names(*key);
    if (!intended) {
      violations_.push_back({"I3", where + " is under key " + k + ": the application wrote it " +
                                       "under key " + std::to_string(written.key) +
                                       " and no job of this column and scope names key " + k});
    }
    auto material = material_.find(*key);
    std::optional<std::string> plaintext;
    if (material != material_.end()) {
      const std::string ad = Ad(s, id);
      plaintext = s.raw ? OpenRawValue(material->second, *value, ad)
                        : OpenTinkValue(material->second, *value, ad);
    }
    if (!plaintext) {
      violations_.push_back({"I2", where + " does not decrypt under key " + k + ", the key it " +
                                       (s.raw ? "row's key-id column names" : "names")});
    } else if (*plaintext != *written.plaintext) {
      violations_.push_back({"I4", where + " decrypts to \"" + *plaintext +
                                       "\", not to the application's last write \"" +
                                       *written.plaintext + "\""});
    }
    for (const auto& job : jobs_) {
      if (!job.Covers(t, c, row.tenant)) continue;
      auto state = states.find(job.id);
      if (state == states.end() || state->second == job.final_state_checked) continue;
      const bool completed = state->second == "completed";
      const bool rolled_back = state->second == "rolled_back";
      if (!completed && !rolled_back) continue;
      bool left_behind = false;
      for (const auto& [source, target] : job.keys) {
        left_behind |= (completed ? source : target) == *key;
      }
      if (!left_behind || Quarantined(txn, job.id, id, s.columns[c]) ||
          InvolvedInAnotherJob(job, t, c, row.tenant, *key)) {
        continue;
      }
      violations_.push_back({"I5", where + " is still under key " + k + " although job " +
                                       std::to_string(job.id) + " is " + state->second});
    }
  }

  bool Quarantined(pqxx::read_transaction& txn, int64_t job, int64_t pk,
                   const std::string& column) {
    return txn.exec_params1(
                  "SELECT count(*) FROM rekey.row_failures WHERE job_id = $1 AND pk = "
                  "$2 AND column_name = $3",
                  job, std::to_string(pk), column)[0]
               .as<int64_t>() > 0;
  }

  // Another job of the same column and scope that names the key may have moved the value there
  // since (two overlapping jobs are the jobs' business, which I3 watches); I5 then cannot say.
  bool InvolvedInAnotherJob(const JobModel& job, int table, int column, int tenant,
                            uint32_t key) const {
    return std::any_of(jobs_.begin(), jobs_.end(), [&](const JobModel& other) {
      return other.id != job.id && other.Covers(table, column, tenant) && other.Names(key);
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Helpers.
  void RefreshKeys() {
    pqxx::read_transaction txn(*conn_);
    RefreshKeys(txn);
  }
  void RefreshKeys(pqxx::read_transaction& txn) {
    for (const auto& row :
         txn.exec("SELECT key_id, scope, status, kms_provider, wrapped_key FROM rekey.keys")) {
      const uint32_t id = row[0].as<uint32_t>();
      keys_[id] = {row[1].as<std::string>(), row[2].as<std::string>()};
      // Key material is kept from the first sight on, so that a value under a key destroyed
      // later can still be checked (and I1 says what happened to it).
      if (!material_.count(id) && !row[4].is_null() && row[3].as<std::string>() == "local") {
        auto key = UnwrapLocal(MasterKey(), id, pqxx::binarystring(row[4]).str());
        if (key) material_[id] = *key;
      }
    }
  }

  std::set<uint32_t> KeysHoldingValues() const {
    std::set<uint32_t> out;
    for (const auto& table : tables_) {
      for (const auto& [id, row] : table.rows) {
        for (const auto& v : row.values) {
          if (v.plaintext) out.insert(v.key);
        }
      }
    }
    for (const auto& job : jobs_) {
      for (const auto& [source, target] : job.keys) {
        out.insert(source);
        out.insert(target);
      }
    }
    return out;
  }

  bool HasUnfinishedJob(int t) {
    std::set<int64_t> unfinished;
    {
      pqxx::read_transaction txn(*conn_);
      for (const auto& row : txn.exec("SELECT job_id FROM rekey.jobs WHERE state NOT IN "
                                      "('completed', 'cancelled', 'rolled_back')")) {
        unfinished.insert(row["job_id"].as<int64_t>());
      }
    }
    return std::any_of(jobs_.begin(), jobs_.end(), [&](const JobModel& job) {
      return job.table == t && unfinished.count(job.id);
    });
  }

  std::vector<int64_t> JobsIn(const std::vector<std::string>& states) {
    std::vector<int64_t> out;
    pqxx::read_transaction txn(*conn_);
    std::string list;
    for (const auto& s : states) list += (list.empty() ? "" : ",") + txn.quote(s);
    for (const auto& row :
         txn.exec("SELECT job_id FROM rekey.jobs WHERE state IN (" + list + ") ORDER BY job_id")) {
      out.push_back(row[0].as<int64_t>());
    }
    return out;
  }

  std::vector<int64_t> AllJobIds() {
    return JobsIn({"active", "verifying", "awaiting_approval", "paused", "completed", "failed",
                   "cancelled", "rolled_back"});
  }

  std::string Query1(const std::string& sql) {
    pqxx::read_transaction txn(*conn_);
    pqxx::row r = txn.exec1(sql);
    return r[0].is_null() ? "" : r[0].as<std::string>();
  }

  ProcessResult Rekey(const std::vector<std::string>& args) {
    std::vector<std::string> full{"--db", conninfo_};
    full.insert(full.end(), args.begin(), args.end());
    return RunRekey(full, WorkerEnv());
  }

  std::string Qualified(const TableSpec& s) const {
    return conn_->quote_name(s.schema) + "." + conn_->quote_name(s.name);
  }

  static std::string Ad(const TableSpec& s, int64_t id) {
    return s.ad_template.empty() ? "" : std::to_string(id);  // "{pk}" rendered
  }

  static std::string Hex(const std::string& bytes) {
    static const char kDigits[] = "0123456789abcdef";
    std::string out;
    for (unsigned char b : bytes) {
      out += kDigits[b >> 4];
      out += kDigits[b & 15];
    }
    return out;
  }

  static std::string Describe(const std::vector<std::string>& args) {
    std::string out = "rekey";
    for (const auto& a : args) {
      out += " " + (a.find_first_of(" ,{}") != std::string::npos ? "'" + a + "'" : a);
    }
    return out;
  }

  static std::string OneLine(std::string text) {
    // The last JSON log line or message is enough to say why; keep the trace short.
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    const size_t nl = text.rfind('\n');
    if (nl != std::string::npos) text = text.substr(nl + 1);
    if (text.size() > 240) text = text.substr(0, 240) + "...";
    return text;
  }

  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

  ModelDatabase& db_;
  uint64_t seed_;
  std::mt19937_64 rng_;
  std::set<std::string> ops_;
  std::vector<Operation> weighted_;
  int steps_;
  std::string tables_filter_;
  int step_ = 0;
  std::string conninfo_;
  std::unique_ptr<pqxx::connection> conn_;
  std::vector<TableModel> tables_;
  std::vector<JobModel> jobs_;
  std::map<uint32_t, KeyRow> keys_;
  std::map<uint32_t, DataKey> material_;
  std::unique_ptr<InProcessWorker> background_;
  int workers_ = 0;  // in-process workers started, for their unique names
  bool policy_set_ = false;
  std::vector<std::string> trace_;
  std::vector<Violation> violations_;
};

struct SeedSpec {
  uint64_t seed = 0;
  std::set<std::string> ops;
  int steps = 0;
  std::string tables;  // "" = all
  std::string note;
};

std::string ReplayCommand(const SeedSpec& spec) {
  // The tables too: the same seed on other tables draws other steps.
  return "REKEY_MODEL_SEED=" + std::to_string(spec.seed) + " REKEY_MODEL_OPS=" + JoinOps(spec.ops) +
         " REKEY_MODEL_STEPS=" + std::to_string(spec.steps) +
         (spec.tables.empty() ? "" : " REKEY_MODEL_TABLES=" + spec.tables) +
         " build/key_safety_model_test --gtest_filter=KeySafetyModel.RandomSequences";
}

// Runs one sequence; on a broken invariant, fails the test with the seed, the replay command,
// the invariants and the trace up to the step that broke them. Returns whether it held.
bool RunAndReport(ModelDatabase& db, const SeedSpec& spec) {
  Sequence sequence(db, spec.seed, spec.ops, spec.steps, spec.tables);
  SequenceResult r = sequence.Run();
  if (std::getenv("REKEY_MODEL_VERBOSE")) {
    std::printf("seed %llu:\n", static_cast<unsigned long long>(spec.seed));
    for (const auto& line : r.trace) std::printf("    %s\n", line.c_str());
  }
  if (r.violations.empty()) return true;
  std::ostringstream msg;
  std::set<std::string> broken;
  for (const auto& v : r.violations) broken.insert(v.invariant);
  msg << "seed " << spec.seed << " broke";
  for (const auto& b : broken) msg << " " << b;
  msg << " (ops " << JoinOps(spec.ops) << ", steps " << spec.steps
      << (spec.tables.empty() ? "" : ", tables " + spec.tables) << ")";
  if (!spec.note.empty()) msg << " [" << spec.note << "]";
  msg << "\n  replay: " << ReplayCommand(spec) << "\n  keep it: add `" << spec.seed
      << " ops=" << JoinOps(spec.ops) << " steps=" << spec.steps
      << (spec.tables.empty() ? "" : " tables=" + spec.tables)
      << "` to tests/model/seeds.txt\n  trace:\n";
  for (const auto& line : r.trace) msg << "    " << line << "\n";
  msg << "  broken:\n";
  size_t shown = 0;
  for (const auto& v : r.violations) {
    if (++shown > 12) {
      msg << "    ... and " << (r.violations.size() - 12) << " more\n";
      break;
    }
    msg << "    " << v.invariant << " " << v.detail << "\n";
  }
  ADD_FAILURE() << msg.str();
  std::printf("model: FAILED seed %llu\n", static_cast<unsigned long long>(spec.seed));
  return false;
}

// tests/model/seeds.txt: `<seed> [ops=a,b,...] [steps=N] [tables=a,b]  # why it was kept`.
std::vector<SeedSpec> LoadSeeds(const std::string& path, int default_steps) {
  std::vector<SeedSpec> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    SeedSpec spec;
    const size_t hash = line.find('#');
    if (hash != std::string::npos) {
      spec.note = line.substr(hash + 1);
      spec.note.erase(0, spec.note.find_first_not_of(' '));
      line = line.substr(0, hash);
    }
    std::stringstream words(line);
    std::string word;
    if (!(words >> word)) continue;
    spec.seed = std::stoull(word);
    spec.ops = ParseOps("");
    spec.steps = default_steps;
    while (words >> word) {
      if (word.rfind("ops=", 0) == 0) spec.ops = ParseOps(word.substr(4));
      if (word.rfind("steps=", 0) == 0) spec.steps = std::stoi(word.substr(6));
      if (word.rfind("tables=", 0) == 0) spec.tables = word.substr(7);
    }
    out.push_back(spec);
  }
  return out;
}

struct RunTally {
  int run = 0;
  int failed = 0;
  bool out_of_time = false;
};

// Runs the sequences `spec_of(0..count-1)` on REKEY_MODEL_THREADS threads (default 3), each with
// its own database, reset by every sequence: much of a sequence's time is spent waiting for rekey
// processes and PostgreSQL. No sequence starts after `budget`.
template <typename SpecOf>
RunTally RunSequences(int count, const SpecOf& spec_of, std::chrono::seconds budget) {
  const int threads = std::max(1, EnvInt("REKEY_MODEL_THREADS", 3));
  const auto start = Clock::now();
  std::atomic<int> next{0}, run{0}, failed{0};
  std::atomic<bool> out_of_time{false};
  std::vector<std::thread> pool;
  for (int w = 0; w < threads; ++w) {
    pool.emplace_back([&] {
      std::unique_ptr<ModelDatabase> db;  // this thread's, reset by each sequence
      for (int i = next++; i < count; i = next++) {
        if (Clock::now() - start > budget) {
          out_of_time = true;
          return;
        }
        try {
          if (!db) db = std::make_unique<ModelDatabase>();
        } catch (const std::exception& e) {
          ADD_FAILURE() << "cannot create the model's database: " << e.what();
          return;
        }
        failed += !RunAndReport(*db, spec_of(i));
        ++run;
      }
    });
  }
  for (auto& t : pool) t.join();
  const double took = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("model: %d sequences in %.1f s (%.2f s each on %d threads), %d broke an invariant\n",
              run.load(), took, took / std::max(run.load(), 1), threads, failed.load());
  return {run.load(), failed.load(), out_of_time.load()};
}

TEST(KeySafetyModel, RegressionSeeds) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  log::SetMinLevel(log::Level::kError);  // the in-process workers log as `rekey work` does
  if (std::getenv("REKEY_MODEL_SEED")) GTEST_SKIP() << "REKEY_MODEL_SEED replays one sequence";
  const std::string path = std::string(REKEY_SOURCE_DIR) + "/tests/model/seeds.txt";
  std::vector<SeedSpec> seeds = LoadSeeds(path, EnvInt("REKEY_MODEL_STEPS", kDefaultSteps));
  ASSERT_FALSE(seeds.empty()) << path << " holds no seed";
  // Every kept seed replays, whatever the time.
  RunTally tally = RunSequences(
      int(seeds.size()), [&](int i) { return seeds[size_t(i)]; }, std::chrono::hours(24));
  std::printf("model: %d of %zu regression seeds held every invariant\n", tally.run - tally.failed,
              seeds.size());
}

TEST(KeySafetyModel, RandomSequences) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  log::SetMinLevel(log::Level::kError);  // the in-process workers log as `rekey work` does
  const std::set<std::string> ops = ParseOps(EnvString("REKEY_MODEL_OPS", ""));
  const int steps = EnvInt("REKEY_MODEL_STEPS", kDefaultSteps);
  const std::string tables = EnvString("REKEY_MODEL_TABLES", "");
  if (const char* one = std::getenv("REKEY_MODEL_SEED")) {
    SeedSpec spec{std::stoull(one), ops, steps, tables, ""};
    std::printf("model: replaying seed %llu\n", static_cast<unsigned long long>(spec.seed));
    ModelDatabase db;
    EXPECT_TRUE(RunAndReport(db, spec));
    return;
  }
  const int sequences = EnvInt("REKEY_MODEL_SEQUENCES", 300);
  const int seconds = EnvInt("REKEY_MODEL_SECONDS", 240);
  const uint64_t base = uint64_t(
      EnvInt("REKEY_MODEL_BASE_SEED", int(std::chrono::system_clock::now().time_since_epoch() /
                                          std::chrono::seconds(1) % 100000000)));
  std::printf("model: up to %d sequences of %d steps in %d s from seed %llu, ops %s%s%s\n",
              sequences, steps, seconds, static_cast<unsigned long long>(base),
              JoinOps(ops).c_str(), tables.empty() ? "" : ", tables ", tables.c_str());
  RunTally tally = RunSequences(
      sequences,
      [&](int i) {
        return SeedSpec{base + uint64_t(i), ops, steps, tables, ""};
      },
      std::chrono::seconds(seconds));
  if (tally.out_of_time) {
    std::printf("model: the time budget of %d s (REKEY_MODEL_SECONDS) stopped the run\n", seconds);
  }
  EXPECT_GE(tally.run, std::min(sequences, 1));
}

}  // namespace
}  // namespace rekey::testing::model
