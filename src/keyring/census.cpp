#include "keyring/census.h"

#include <sstream>

#include "common/error.h"
#include "db/connection.h"
#include "db/named_query.h"

namespace rekey::keyring {

namespace {

// Rows fetched per round trip: the census lists columns, so a few hundred is plenty.
constexpr int kFetchRows = 200;

std::vector<std::string> SplitCommas(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream in(list);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

}  // namespace

void KeyCensus(pqxx::transaction_base& txn, uint32_t key_id,
               const std::function<void(const CensusColumn&)>& on_column) {
  const std::string context = "taking the census of key " + std::to_string(key_id);
  db::Classified(context, [&] {
    txn.exec_params0(db::Query("keyring/census.declare_census"), static_cast<int64_t>(key_id));
  });
  // From the cursor declare_census opened. FETCH takes its row count only as a literal, so this
  // one statement is built here.
  const std::string fetch = "FETCH FORWARD " + std::to_string(kFetchRows) + " FROM rekey_census";
  for (;;) {
    pqxx::result chunk = db::Classified(context, [&] { return txn.exec(fetch); });
    for (const pqxx::row& row : chunk) {
      CensusColumn c;
      c.schema = row["schema_name"].as<std::string>();
      c.table = row["table_name"].as<std::string>();
      c.column = row["column_name"].as<std::string>();
      if (!row["target_id"].is_null()) c.target_id = row["target_id"].as<int64_t>();
      if (!row["formats"].is_null()) c.formats = SplitCommas(row["formats"].as<std::string>());
      if (!row["n"].is_null()) c.values = row["n"].as<int64_t>();
      if (!row["unknown"].is_null()) c.unknown = row["unknown"].as<std::string>();
      c.status = row["status"].as<std::string>();
      c.ref = row["ref"].as<std::string>();
      on_column(c);
    }
    if (chunk.size() < static_cast<size_t>(kFetchRows)) break;
  }
  db::Classified(context, [&] { txn.exec0(db::Query("keyring/census.close_census")); });
}

void UseReadCommitted(pqxx::transaction_base& txn) {
  db::Classified("setting the transaction isolation",
                 [&] { txn.exec0(db::Query("keyring/census.read_committed")); });
}

void AcceptUnknownColumns(pqxx::transaction_base& txn, const std::vector<std::string>& refs) {
  if (refs.empty()) return;
  std::string list;
  for (const std::string& ref : refs) {
    size_t dots = 0;
    for (char ch : ref) dots += ch == '.';
    if (ref.find(',') != std::string::npos || dots < 2 || ref.front() == '.' || ref.back() == '.') {
      throw ConfigError("--accept-unknown '" + ref +
                        "' is not schema.table.column (as `rekey keys usage` prints it)");
    }
    if (!list.empty()) list += ',';
    list += ref;
  }
  db::Classified("accepting unknown columns",
                 [&] { txn.exec_params(db::Query("keyring/census.accept_unknown"), list); });
}

std::string ForgetTarget(pqxx::transaction_base& txn, int64_t target_id,
                         const std::string& reason) {
  return db::Classified("forgetting target " + std::to_string(target_id), [&] {
    return txn
        .exec_params1(db::Query("keyring/census.forget_target"), target_id, reason)["confirmation"]
        .as<std::string>();
  });
}

}  // namespace rekey::keyring
