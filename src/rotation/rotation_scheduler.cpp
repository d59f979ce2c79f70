#include "rotation/rotation_scheduler.h"

#include <nlohmann/json.hpp>

#include <thread>

#include "common/error.h"
#include "common/log.h"
#include "db/connection.h"
#include "db/named_query.h"
#include "keyring/keyring.h"

namespace rekey::rotation {
namespace {

// Any fixed number: the lock only has to be the same for every rotate-due run.
constexpr int64_t kRotateDueLock = 0x72656b6579647565;  // "rekeydue"

struct DueScope {
  std::string scope;
  uint32_t key = 0;
  std::string provider;
  std::string due_at;
  std::optional<int64_t> in_flight;
};

void Unlock(pqxx::connection& conn) {
  pqxx::nontransaction txn(conn);
  txn.exec_params(db::Query("rotation/rotation_scheduler.unlock"), kRotateDueLock);
}

// Key 0 is never a rotation's target (keys are numbered from 1): no key is left out.
constexpr uint32_t kNoKey = 0;

void Schedule(pqxx::connection& conn, const KmsResolver& kms, const RotateDueOptions& options,
              const DueScope& due, ScopeRotation& out) {
  db::Classified("scheduling the rotation of scope " + due.scope, [&] {
    pqxx::work txn(conn);
    // The key must still be the scope's primary, and no job may have started meanwhile.
    auto check = txn.exec_params(db::Query("rotation/rotation_scheduler.lock_primary"), due.key);
    if (check.empty() || !check[0]["job_in_flight"].is_null()) {
      out.action = "in_flight";
      out.detail = "changed since the run started";
      return;
    }
    // A column has one unfinished job at a time (rekey.refuse_column_collision): while another
    // key's rotation still moves one of these columns, this one waits for the next run instead
    // of failing it.
    const pqxx::field busy = txn.exec_params1(
        db::Query("rotation/rotation_scheduler.busy_column_job"), due.key)["job_id"];
    if (!busy.is_null()) {
      out.action = "in_flight";
      out.jobs.push_back(busy.as<int64_t>());
      out.detail = "a column holding its values is being rotated by job " + busy.as<std::string>() +
                   "; it is scheduled once that job is finished";
      return;
    }
    keyring::CreateKeyOptions key_options;
    key_options.scope = due.scope;
    keyring::KeyRecord created = keyring::CreateKey(txn, kms(due.provider), key_options);
    out.new_key = created.key_id;
    out.targets = jobs::RotationTargets(txn, due.scope, created.key_id);
    const std::string name = "rotate-due " + due.scope + " " + std::to_string(due.key) + "->" +
                             std::to_string(created.key_id);
    if (out.targets.empty()) {
      keyring::PromoteKey(txn, created.key_id);
      out.action = "promoted";
    } else {
      jobs::RotationSpec spec;
      spec.scope = due.scope;
      spec.to_key = created.key_id;
      spec.stages = options.stages;
      spec.observe = options.observe;
      spec.batch_size = options.batch_size;
      spec.name = name;
      const jobs::Rotation rotation = jobs::CreateRotation(txn, spec);
      out.rotation = rotation.rotation_id;
      out.jobs = rotation.jobs;
      out.action = "scheduled";
    }
    nlohmann::json details = {{"scope", due.scope},
                              {"from_key", due.key},
                              {"to_key", created.key_id},
                              {"due_at", due.due_at},
                              {"jobs", out.jobs},
                              {"targets", out.targets},
                              {"rotation", out.rotation ? nlohmann::json(*out.rotation) : nullptr},
                              {"result", out.action}};
    const std::string& audit = db::Query("rotation/rotation_scheduler.audit_scheduled");
    if (out.jobs.empty()) txn.exec_params(audit, nullptr, details.dump());
    for (int64_t job : out.jobs) txn.exec_params(audit, job, details.dump());
    txn.commit();
    log::Audit("rotation.scheduled", "success", details);
  });
}

}  // namespace

jobs::Rotation StartRotation(pqxx::transaction_base& txn, const KmsResolver& kms,
                             RotateRequest request) {
  if (request.new_key) {
    const std::optional<keyring::KeyRecord> primary = keyring::PrimaryKey(txn, request.spec.scope);
    if (!primary) {
      throw ConfigError("scope " + request.spec.scope +
                        " has no primary key whose KMS provider --new-key could use; create the "
                        "key (rekey keys create --scope " +
                        request.spec.scope + ") and pass --to KEY");
    }
    keyring::CreateKeyOptions key_options;
    key_options.scope = request.spec.scope;
    request.spec.to_key = keyring::CreateKey(txn, kms(primary->kms_provider), key_options).key_id;
  }
  return jobs::CreateRotation(txn, request.spec);
}

std::vector<ScopeRotation> RotateDue(pqxx::connection& conn, const KmsResolver& kms,
                                     const RotateDueOptions& options) {
  if (options.max_jobs < 0) throw ConfigError("--max-jobs must be 0 or more");
  std::vector<DueScope> due;
  db::Classified("reading the overdue keys", [&] {
    pqxx::nontransaction txn(conn);
    const pqxx::row lock =
        txn.exec_params1(db::Query("rotation/rotation_scheduler.try_lock"), kRotateDueLock);
    if (!lock["locked"].as<bool>()) {
      throw TransientError("another rekey rotate-due is running; try again when it is done");
    }
    for (const auto& row : txn.exec(db::Query("rotation/rotation_scheduler.due_scopes"))) {
      DueScope d;
      d.scope = row["scope"].as<std::string>();
      d.key = row["key_id"].as<uint32_t>();
      d.provider = row["kms_provider"].as<std::string>();
      d.due_at = row["due_at"].as<std::string>();
      if (!row["job_in_flight"].is_null()) d.in_flight = row["job_in_flight"].as<int64_t>();
      due.push_back(std::move(d));
    }
  });
  std::vector<ScopeRotation> result;
  int started = 0;
  try {
    for (const DueScope& d : due) {
      ScopeRotation r;
      r.scope = d.scope;
      r.old_key = d.key;
      r.due_at = d.due_at;
      if (d.in_flight) {
        r.action = "in_flight";
        r.jobs.push_back(*d.in_flight);
      } else if (started >= options.max_jobs) {
        r.action = "deferred";
      } else if (options.dry_run) {
        ++started;
        r.action = "would_schedule";
        pqxx::read_transaction txn(conn);
        r.targets = jobs::RotationTargets(txn, d.scope, kNoKey);
      } else {
        if (started > 0 && options.stagger.count() > 0)
          std::this_thread::sleep_for(options.stagger);
        ++started;
        try {
          Schedule(conn, kms, options, d, r);
        } catch (const std::exception& e) {
          r.action = "failed";
          r.detail = e.what();
          r.exit_code = ExitCodeFor(e);
          log::Audit("rotation.scheduled", "failure",
                     {{"scope", d.scope}, {"from_key", d.key}, {"error", e.what()}});
        }
      }
      result.push_back(std::move(r));
    }
  } catch (...) {
    Unlock(conn);
    throw;
  }
  Unlock(conn);
  return result;
}

}  // namespace rekey::rotation
