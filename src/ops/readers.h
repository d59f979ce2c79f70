// Readers: the application instances that report, through rekey.reader_heartbeat, which key ids
// of a keyring scope they can decrypt. A job waits while a live reader of a scope lacks a key it
// is about to write under (sql/schema/45_readers.sql has the contract); this is what the CLI
// (`rekey readers`, `rekey job create --reader-window`) and the report read and set. The queries
// are src/ops/queries/readers.sql.
#pragma once

#include <pqxx/pqxx>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace rekey::ops {

// Every reader, or those of `scope`, as a JSON array ordered by scope and reader: reader, scope,
// key_ids, first_seen, last_seen, age_seconds, reported_by, client_addr, and live_for_jobs (the
// unfinished jobs of its scope whose reader window it is within).
nlohmann::json ListReaders(pqxx::transaction_base& txn, const std::optional<std::string>& scope);

// Sets job `job`'s reader window to `interval` (a PostgreSQL interval literal, e.g. the text of a
// common/duration.h flag). The database's errors for an unknown job or a window <= 0.
void SetReaderWindow(pqxx::transaction_base& txn, int64_t job, const std::string& interval);

// The keyring scopes of job `job`'s keys for which no reader has ever reported: reader readiness
// cannot be proven there, and nothing is waited for.
std::vector<std::string> UnreportedScopes(pqxx::transaction_base& txn, int64_t job);

// The report's "reader_readiness": the checks job `job` made (first batch, promotion, rollback)
// with the readers they found, whether readiness is proven, and one sentence saying so
// ("reader readiness: not proven (no reader reported for scope S)").
nlohmann::json ReaderReadiness(pqxx::transaction_base& txn, int64_t job);

}  // namespace rekey::ops
