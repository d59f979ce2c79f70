// The operator's verbs on a rotation job: pause, resume, cancel, retry, rerun, advance, roll back,
// requeue. Each is one call, in the caller's transaction, of the SQL function a DBA calls from
// psql (rekey.pause_job, ...; src/jobs/queries/job_control.sql), so the CLI and psql do exactly
// the same and the database alone decides whether the job's state allows the step.
//
// Every function returns the database's one-line account of what it did ("job 3 paused"). A
// refusal (unknown job, a state that forbids the step, a bad interval or percentage) raises in
// the database with its one-line reason (pqxx errors; db::Classified turns a refused state into
// StateError and bad input into ConfigError); nothing is written. The caller commits.
#pragma once

#include <pqxx/pqxx>

#include <cstdint>
#include <string>

namespace rekey::jobs {

// Workers stop claiming the job's batches. An empty `reason` records none.
std::string PauseJob(pqxx::transaction_base& txn, int64_t job_id, const std::string& reason);

// Workers claim the job's batches again; a job paused by a failed gate has it verified again.
std::string ResumeJob(pqxx::transaction_base& txn, int64_t job_id);

// Gives the job up; rows already rotated stay rotated. An empty `reason` records none.
std::string CancelJob(pqxx::transaction_base& txn, int64_t job_id, const std::string& reason);

// Queues the job's failed batches again, with fresh attempts.
std::string RetryFailed(pqxx::transaction_base& txn, int64_t job_id);

// A no-op for a completed job; reruns the failed batches of a failed one.
std::string RerunJob(pqxx::transaction_base& txn, int64_t job_id);

// Approves the passed gate and opens the next stage. A non-empty `observe` (a PostgreSQL
// interval, e.g. "10min") becomes the job's observation period for later gates; `force` advances
// a job paused by a failed gate.
std::string AdvanceJob(pqxx::transaction_base& txn, int64_t job_id, const std::string& observe,
                       bool force);

// Moves rotated rows back to the old keys, down to the stage of cumulative percentage
// `to_percent` (a decimal number; "0" rolls back everything). An empty `reason` records none.
std::string RollbackJob(pqxx::transaction_base& txn, int64_t job_id, const std::string& to_percent,
                        const std::string& reason);

// Queues batches `from`..`to` (done or failed) of the job's open stage, or its last once it
// finished, again; only values still under a source key are rewritten.
std::string Requeue(pqxx::transaction_base& txn, int64_t job_id, int from, int to);

}  // namespace rekey::jobs
