// One rotation of a keyring scope across every column holding its values (issue 17, item 4): a
// group of jobs, one per table and key-id column, with one key map and the same stages, whose
// new key is promoted once, when the last of them reaches the promotion stage, and which rolls
// back as one. The rules live in the database (sql/schema/55_rotations.sql); this is the C++ way
// to call them. Queries: src/jobs/queries/rotation.sql.
//
// Every function works in the caller's transaction; the caller commits. A refusal (an unknown
// scope, a target key of another scope or not enabled, a scope without registered values, an
// unregistered column holding values, a target overlapping an unfinished job) raises in the
// database with its one-line reason (pqxx errors; db::Classified makes bad input a ConfigError
// and a refused state a StateError); nothing is written.
#pragma once

#include <pqxx/pqxx>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace rekey::jobs {

struct RotationSpec {
  std::string scope;
  uint32_t to_key = 0;                      // enabled (or primary) key of `scope`
  std::string stages = "{1,25,50,75,100}";  // numeric[] text
  std::optional<std::string> observe;       // interval text; nullopt: gates wait for approval
  int batch_size = 1000;
  std::optional<std::string> name;
  // Census-found columns ("schema.table.column", bytea holding Tink values) to register first.
  std::vector<std::string> register_columns;
};

struct Rotation {
  int64_t rotation_id = 0;
  std::vector<int64_t> jobs;
};

// Creates the rotation and its jobs (rekey.create_rotation) and plans their rollout stages in this
// process (jobs/rollout_planner.h), as CreateJob does.
Rotation CreateRotation(pqxx::transaction_base& txn, const RotationSpec& spec);

// What a rotation of `scope` to `to_key` would move, one line per job it would create, e.g.
// "public.t (a, b by key_id; 12 values)". Empty: nothing registered holds the scope's values.
std::vector<std::string> RotationTargets(pqxx::transaction_base& txn, const std::string& scope,
                                         uint32_t to_key);

// The jobs of rotation `rotation_id`, in order (empty if there is no such rotation).
std::vector<int64_t> RotationJobs(pqxx::transaction_base& txn, int64_t rotation_id);

// rekey.rotation_progress as a JSON array (newest first), every rotation or only `rotation_id`.
nlohmann::json ReadRotationProgress(pqxx::transaction_base& txn,
                                    std::optional<int64_t> rotation_id);

// Rolls every job of the rotation back to its old keys (rekey.rollback_rotation). An empty
// `reason` records none. Returns the database's one-line account.
std::string RollbackRotation(pqxx::transaction_base& txn, int64_t rotation_id,
                             const std::string& reason);

}  // namespace rekey::jobs
