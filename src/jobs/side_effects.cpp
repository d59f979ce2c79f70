#include "jobs/side_effects.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/error.h"
#include "db/identifiers.h"
#include "db/named_query.h"

namespace rekey::jobs {
namespace {

const std::string& Q(const char* name) {
  return db::Query(std::string("jobs/side_effects.") + name);
}

// WAL of one heap UPDATE beside the new row version: the record header (24), the old and the
// new page's block references, xl_heap_update (14) and the new tuple's header (5), aligned.
constexpr int64_t kHeapRecordBytes = 60;
// WAL of one btree insert beside its index tuple: the record header, one block reference and
// xl_btree_insert, aligned.
constexpr int64_t kIndexRecordBytes = 50;
// A line pointer: what each new row version takes in a heap page beside itself.
constexpr int64_t kLinePointerBytes = 4;
// An index entry whose index was never analyzed: its tuple header (8) and an 8-byte key.
constexpr int64_t kDefaultIndexEntryBytes = 16;
// rekey's own WAL per batch: its queue row claimed and completed, its audit row and seal.
constexpr int64_t kBatchBookkeepingBytes = 1500;
// rekey's own pages (batches, audit, chain, job, stages, workers) logged whole once after a
// checkpoint: about 16 pages per job.
constexpr int64_t kJobBookkeepingPages = 16;

std::string Plural(size_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

std::string Megabytes(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MB", double(bytes) / (1024.0 * 1024.0));
  return buf;
}

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

int64_t EntryBytes(const TableIndex& index) {
  if (index.entries <= 0 || index.bytes <= 0) return kDefaultIndexEntryBytes;
  return std::max<int64_t>(kDefaultIndexEntryBytes, int64_t(double(index.bytes) / index.entries));
}

std::string TriggerLine(const UserTrigger& t, TriggerChoice choice) {
  std::string line = "trigger " + t.name + ": " + t.timing + " " + t.events;
  if (!t.update_of.empty()) line += " OF " + Join(t.update_of);
  line += " FOR EACH " + t.level + ", " + t.function;
  if (t.has_when) line += ", WHEN ...";
  if (t.enabled == "D") return line + "; disabled";
  if (!t.on_rewrite) return line + "; not fired by the rewrite";
  if (choice == TriggerChoice::kNone) {
    return line + (t.FiresUnder(TriggerChoice::kSkip) ? "; runs on every rewritten row either way"
                                                      : "; would run on every rewritten row");
  }
  return line +
         (t.FiresUnder(choice) ? "; RUNS on every rewritten row" : "; skipped (--triggers skip)");
}

}  // namespace

std::optional<TriggerChoice> ParseTriggerChoice(const std::string& text) {
  if (text == "fire") return TriggerChoice::kFire;
  if (text == "skip") return TriggerChoice::kSkip;
  return std::nullopt;
}

std::string TriggerChoiceName(TriggerChoice choice) {
  switch (choice) {
    case TriggerChoice::kFire:
      return "fire";
    case TriggerChoice::kSkip:
      return "skip";
    case TriggerChoice::kNone:
      break;
  }
  return "";
}

bool UserTrigger::FiresUnder(TriggerChoice choice) const {
  if (!on_rewrite || enabled == "D") return false;
  // session_replication_role = replica fires only ENABLE REPLICA and ENABLE ALWAYS triggers;
  // origin (the default) fires all but ENABLE REPLICA ones.
  if (choice == TriggerChoice::kSkip) return enabled == "R" || enabled == "A";
  return enabled == "O" || enabled == "A";
}

std::vector<const UserTrigger*> SideEffects::FiringTriggers() const {
  std::vector<const UserTrigger*> out;
  for (const UserTrigger& t : triggers) {
    if (t.FiresUnder(TriggerChoice::kFire)) out.push_back(&t);
  }
  return out;
}

std::vector<std::string> SideEffects::Lines(TriggerChoice choice) const {
  std::vector<std::string> lines;
  for (const UserTrigger& t : triggers) lines.push_back(TriggerLine(t, choice));
  for (const Publication& p : publications) {
    std::string line = "publication " + p.name + (p.all_tables ? " (FOR ALL TABLES)" : "");
    if (!p.columns.empty()) line += ", columns " + p.columns;
    if (!p.row_filter.empty()) line += ", WHERE " + p.row_filter;
    line += p.publishes_updates ? ": streams every rewritten row to its subscribers"
                                : ": does not publish UPDATEs";
    lines.push_back(line);
  }
  for (const LogicalSlot& s : logical_slots) {
    lines.push_back("logical slot " + s.name + " (" + s.plugin + ", " +
                    (s.active ? "active" : "inactive: WAL is retained until it reads") +
                    "): decodes every rewritten row's WAL");
  }
  for (const ForeignKey& f : foreign_keys) {
    lines.push_back("foreign key " + f.name + " on " + f.table + ": " + f.definition +
                    "; checked on every rewritten row");
  }
  for (const TableIndex& i : indexes) {
    if (i.touches_written) {
      lines.push_back("index " + i.name + " reads a rewritten column: one new entry per row in " +
                      "every index of the table, no HOT update");
    }
  }
  for (const GeneratedColumn& g : generated) {
    lines.push_back("generated column " + g.name + " = " + g.expression +
                    ": recomputed on every rewritten row");
  }
  lines.push_back(
      "estimate for " + std::to_string(rows) + " rows (" + std::to_string(shape.row_bytes) +
      " bytes each, " + Plural(indexes.size(), "index", "indexes") + ", " +
      (estimate.hot_possible
           ? "HOT for about " + std::to_string(int(estimate.hot_share * 100 + 0.5)) +
                 "% at fillfactor " + std::to_string(shape.fillfactor)
           : std::string("no HOT")) +
      "): WAL ~" + Megabytes(estimate.wal_bytes) + ", table and indexes grow by up to " +
      Megabytes(estimate.table_growth_bytes) + " until vacuum");
  return lines;
}

nlohmann::json SideEffects::ToJson(TriggerChoice choice) const {
  nlohmann::json j;
  j["table"] = table;
  j["written_columns"] = written_columns;
  j["triggers"] = nlohmann::json::array();
  for (const UserTrigger& t : triggers) {
    j["triggers"].push_back({{"name", t.name},
                             {"timing", t.timing},
                             {"events", t.events},
                             {"level", t.level},
                             {"enabled", t.enabled},
                             {"function", t.function},
                             {"update_of", t.update_of},
                             {"has_when", t.has_when},
                             {"on_rewrite", t.on_rewrite},
                             {"fires", t.FiresUnder(choice)}});
  }
  j["publications"] = nlohmann::json::array();
  for (const Publication& p : publications) {
    j["publications"].push_back({{"name", p.name},
                                 {"publishes_updates", p.publishes_updates},
                                 {"all_tables", p.all_tables},
                                 {"columns", p.columns},
                                 {"row_filter", p.row_filter}});
  }
  j["logical_slots"] = nlohmann::json::array();
  for (const LogicalSlot& s : logical_slots) {
    j["logical_slots"].push_back({{"name", s.name}, {"plugin", s.plugin}, {"active", s.active}});
  }
  j["foreign_keys"] = nlohmann::json::array();
  for (const ForeignKey& f : foreign_keys) {
    j["foreign_keys"].push_back(
        {{"name", f.name}, {"table", f.table}, {"definition", f.definition}});
  }
  j["indexes"] = nlohmann::json::array();
  for (const TableIndex& i : indexes) {
    j["indexes"].push_back(
        {{"name", i.name}, {"definition", i.definition}, {"touches_written", i.touches_written}});
  }
  j["generated_columns"] = nlohmann::json::array();
  for (const GeneratedColumn& g : generated) {
    j["generated_columns"].push_back({{"name", g.name}, {"expression", g.expression}});
  }
  j["estimate"] = {{"rows", rows},
                   {"row_bytes", shape.row_bytes},
                   {"wal_bytes", estimate.wal_bytes},
                   {"table_growth_bytes", estimate.table_growth_bytes},
                   {"hot_possible", estimate.hot_possible},
                   {"hot_share", estimate.hot_share},
                   {"full_page_writes", shape.full_page_writes}};
  return j;
}

RewriteEstimate EstimateRewrite(const TableShape& shape, const std::vector<TableIndex>& indexes,
                                int64_t rows, int64_t batches) {
  RewriteEstimate e;
  e.hot_possible = std::none_of(indexes.begin(), indexes.end(),
                                [](const TableIndex& i) { return i.touches_written; });
  // A HOT update needs room on its row's page: a page filled to fillfactor% has (100 -
  // fillfactor)% free, enough for that many new versions of its rows; the rest go to other
  // pages. Old versions are not pruned within the batch's transaction, so free space is all there
  // is.
  const int fill = std::clamp(shape.fillfactor, 10, 100);
  e.hot_share = e.hot_possible ? std::min(1.0, double(100 - fill) / double(fill)) : 0.0;
  const double cold_rows = double(rows) * (1.0 - e.hot_share);
  int64_t index_bytes = 0, entry_bytes = 0;
  for (const TableIndex& i : indexes) {
    index_bytes += i.bytes;
    entry_bytes += EntryBytes(i);
  }
  // The share of the table's pages the rewrite touches.
  const double scope = shape.rows > 0 ? std::min(1.0, double(rows) / shape.rows) : 1.0;
  double wal = double(rows) * double(shape.row_bytes + kHeapRecordBytes);
  // A non-HOT update puts its new version on another page and a new entry into every index.
  wal += cold_rows * double(entry_bytes + kIndexRecordBytes * int64_t(indexes.size()));
  double growth = cold_rows * double(shape.row_bytes + kLinePointerBytes + entry_bytes);
  if (shape.full_page_writes) {
    // The first change of each page after a checkpoint logs the whole page.
    wal += scope * double(shape.heap_bytes + (cold_rows > 0 ? index_bytes : 0));
    wal += double(kJobBookkeepingPages * shape.block_size);
  }
  wal += double(batches) * double(kBatchBookkeepingBytes);
  e.wal_bytes = int64_t(std::llround(wal));
  e.table_growth_bytes = int64_t(std::llround(growth));
  return e;
}

SideEffects InspectSideEffects(pqxx::transaction_base& txn, const std::string& table,
                               std::vector<std::string> written_columns) {
  SideEffects fx;
  const pqxx::row t = txn.exec_params1(Q("table"), table);
  const std::string relid = t["relid"].as<std::string>();
  fx.table = t["qualified"].as<std::string>();
  fx.written_columns = std::move(written_columns);
  const std::string written = db::TextArrayLiteral(fx.written_columns);

  for (const auto& r : txn.exec_params(Q("triggers"), relid, written)) {
    UserTrigger u;
    u.name = r["name"].as<std::string>();
    u.timing = r["timing"].as<std::string>();
    u.events = r["events"].as<std::string>();
    u.level = r["level"].as<std::string>();
    u.enabled = r["enabled"].as<std::string>();
    u.function = r["function"].as<std::string>();
    u.update_of =
        nlohmann::json::parse(r["update_of"].as<std::string>()).get<std::vector<std::string>>();
    u.has_when = r["has_when"].as<bool>();
    u.on_rewrite = r["on_rewrite"].as<bool>();
    fx.triggers.push_back(std::move(u));
  }
  for (const auto& r : txn.exec_params(Q("publications"), relid)) {
    fx.publications.push_back({r["name"].as<std::string>(), r["publishes_updates"].as<bool>(),
                               r["all_tables"].as<bool>(), r["columns"].as<std::string>(),
                               r["row_filter"].as<std::string>()});
  }
  for (const auto& r : txn.exec(Q("logical_slots"))) {
    fx.logical_slots.push_back(
        {r["name"].as<std::string>(), r["plugin"].as<std::string>(), r["active"].as<bool>()});
  }
  for (const auto& r : txn.exec_params(Q("foreign_keys"), relid, written)) {
    fx.foreign_keys.push_back({r["name"].as<std::string>(), r["table_name"].as<std::string>(),
                               r["definition"].as<std::string>()});
  }
  for (const auto& r : txn.exec_params(Q("indexes"), relid, written)) {
    fx.indexes.push_back({r["name"].as<std::string>(), r["definition"].as<std::string>(),
                          r["touches_written"].as<bool>(), r["bytes"].as<int64_t>(),
                          r["entries"].as<double>()});
  }
  for (const auto& r : txn.exec_params(Q("generated"), relid, written)) {
    fx.generated.push_back({r["name"].as<std::string>(), r["expression"].as<std::string>()});
  }
  const pqxx::row s = txn.exec_params1(Q("shape"), relid);
  fx.shape.heap_bytes = s["heap_bytes"].as<int64_t>();
  fx.shape.rows = s["rows"].as<double>();
  fx.shape.row_bytes = s["row_bytes"].as<int64_t>();
  fx.shape.fillfactor = s["fillfactor"].as<int>();
  fx.shape.full_page_writes = s["full_page_writes"].as<bool>();
  fx.shape.block_size = s["block_size"].as<int>();
  return fx;
}

std::string MissingSkipTriggersGrant(pqxx::transaction_base& txn) {
  const pqxx::row r = txn.exec1(Q("skip_grant"));
  if (r["may_skip"].as<bool>()) return "";
  return "GRANT SET ON PARAMETER session_replication_role TO " + r["role_name"].as<std::string>();
}

void CheckTriggerChoice(pqxx::transaction_base& txn, const SideEffects& effects,
                        TriggerChoice choice) {
  if (choice == TriggerChoice::kNone) {
    std::vector<std::string> names;
    for (const UserTrigger* t : effects.FiringTriggers()) names.push_back(t->name);
    if (names.empty()) return;
    throw ConfigError(effects.table + " has user triggers that fire on every rewritten row (" +
                      Join(names) +
                      "): choose --triggers fire (run them) or --triggers skip (the rewrite's "
                      "UPDATE runs with session_replication_role = replica)");
  }
  if (choice != TriggerChoice::kSkip) return;
  if (!effects.foreign_keys.empty()) {
    throw ConfigError("--triggers skip would also skip the check of foreign key " +
                      effects.foreign_keys[0].name + " on a column the rewrite writes (" +
                      effects.foreign_keys[0].definition + "): use --triggers fire");
  }
  const std::string grant = MissingSkipTriggersGrant(txn);
  if (!grant.empty()) {
    throw ConfigError(
        "--triggers skip needs the right to set session_replication_role, which this role "
        "lacks: " +
        grant + " (as a superuser), or use --triggers fire");
  }
}

void DeclareSideEffects(pqxx::transaction_base& txn, int64_t job_id, TriggerChoice choice,
                        bool vacuum_after, const SideEffects& effects) {
  const std::string name = TriggerChoiceName(choice);
  txn.exec_params(Q("declare"), job_id, name.empty() ? nullptr : name.c_str(),
                  vacuum_after ? "true" : "false", effects.ToJson(choice).dump());
}

RewriteStart StartRewrite(pqxx::transaction_base& txn, int64_t job_id) {
  RewriteStart start;
  const pqxx::result r = txn.exec_params(Q("start"), job_id);
  if (r.empty()) return start;
  start.skip_triggers = r[0]["triggers"].as<std::string>() == "skip";
  if (start.skip_triggers) {
    const std::string grant = MissingSkipTriggersGrant(txn);
    if (!grant.empty()) {
      throw ConfigError("job " + std::to_string(job_id) +
                        " skips the table's triggers (--triggers skip), which this worker's role "
                        "may not: " +
                        grant);
    }
  }
  return start;
}

}  // namespace rekey::jobs
