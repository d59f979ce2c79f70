#include "keyring/census.h"

#include <sstream>

#include "common/error.h"
#include "db/connection.h"

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
    txn.exec_params0(
        "DECLARE rekey_census NO SCROLL CURSOR FOR "
        "SELECT schema_name, table_name, column_name, target_id, "
        "       array_to_string(formats, ','), n, unknown, status, "
        "       format('%I.%I.%I', schema_name, table_name, column_name) "
        "  FROM rekey.key_census($1)",
        static_cast<int64_t>(key_id));
  });
  for (;;) {
    pqxx::result chunk = db::Classified(context, [&] {
      return txn.exec("FETCH FORWARD " + std::to_string(kFetchRows) + " FROM rekey_census");
    });
    for (const pqxx::row& row : chunk) {
      CensusColumn c;
      c.schema = row[0].as<std::string>();
      c.table = row[1].as<std::string>();
      c.column = row[2].as<std::string>();
      if (!row[3].is_null()) c.target_id = row[3].as<int64_t>();
      if (!row[4].is_null()) c.formats = SplitCommas(row[4].as<std::string>());
      if (!row[5].is_null()) c.values = row[5].as<int64_t>();
      if (!row[6].is_null()) c.unknown = row[6].as<std::string>();
      c.status = row[7].as<std::string>();
      c.ref = row[8].as<std::string>();
      on_column(c);
    }
    if (chunk.size() < static_cast<size_t>(kFetchRows)) break;
  }
  db::Classified(context, [&] { txn.exec0("CLOSE rekey_census"); });
}

void UseReadCommitted(pqxx::transaction_base& txn) {
  db::Classified("setting the transaction isolation",
                 [&] { txn.exec0("SET TRANSACTION ISOLATION LEVEL READ COMMITTED"); });
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
  db::Classified("accepting unknown columns", [&] {
    txn.exec_params("SELECT set_config('rekey.accept_unknown', $1, true)", list);
  });
}

std::string ForgetTarget(pqxx::transaction_base& txn, int64_t target_id,
                         const std::string& reason) {
  return db::Classified("forgetting target " + std::to_string(target_id), [&] {
    return txn.exec_params1("SELECT rekey.forget_target($1, nullif($2, ''))", target_id, reason)[0]
        .as<std::string>();
  });
}

}  // namespace rekey::keyring
