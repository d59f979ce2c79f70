// `rekey job ...`: define rotation jobs and steer them. Every verb is a thin shell over a SQL
// function (rekey.create_job, rekey.pause_job, ...: jobs/job.h, jobs/job_control.h), so psql and
// the CLI do exactly the same.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <iostream>
#include <optional>

#include "cli_support.h"
#include "commands.h"
#include "common/duration.h"
#include "common/error.h"
#include "db/connection.h"
#include "jobs/job.h"
#include "jobs/job_control.h"
#include "jobs/side_effects.h"
#include "ops/readers.h"
#include "ops/report_evidence.h"

namespace rekey::cli {
namespace {

struct CreateFlags {
  std::string table;
  std::vector<std::string> columns;
  std::vector<std::string> codecs;
  std::string key_map;
  std::string key_id_column;
  std::vector<std::string> key_columns;
  std::string ad_template;
  std::string scope;
  std::string name;
  int batch_size = 1000;
  int max_attempts = 3;
  bool per_row_audit = false;
  std::string stages = "1,25,50,75,100";
  int promote_at_stage = 0;
  double error_threshold = 0.001;
  std::string observe;
  std::string reader_window;  // empty: the database's default (10 minutes)
  int gate_sample_size = 10000;
  bool dry_run = false;
  std::vector<std::string> not_governed;
  bool cross_scope = false;
  std::string transit_key;  // vault-transit: <mount>/keys/<name>
  int to_version = 0;       // vault-transit: 0 = the key's latest version
  std::string encoding;     // stored form (docs/FORMAT.md); "" = the codec's default
  std::string json_path;    // "{payment,token}": the values are strings in jsonb documents
  // lockbox: the model's key_table and key_attribute options; "" = the table's, the column's name
  std::string lockbox_key_table;
  std::string lockbox_key_attribute;
  std::string triggers;  // "fire" or "skip" (jobs/side_effects.h); "" = none given
  bool vacuum_after = false;
  std::string source_kms_key;      // aws-kms: the KMS key the blobs are under
  std::string kms_key;             // aws-kms: the KMS key they move to
  std::string encryption_context;  // aws-kms: the application's constant context, JSON
};

// A vault-transit job's Transit key, checked in Vault before anything is written: it exists, can
// encrypt, fits the job's derivation context, and has the version the job rotates to (by default
// its latest). One-line KeyError or ConfigError otherwise.
void ResolveTransitKey(const CreateFlags& flags, jobs::JobSpec* spec) {
  if (flags.transit_key.empty()) {
    throw ConfigError(
        "--codec vault-transit needs the Transit key the values are under: --transit-key "
        "<mount>/keys/<name>, e.g. transit/keys/app");
  }
  const rotation::TransitClientSource source = LazyTransitClient();  // owns the client
  const rotation::TransitService::KeyInfo info = source().ReadKey(flags.transit_key);
  rotation::RequireTransitKeyFits(flags.transit_key, info.derived, !flags.ad_template.empty());
  int version = flags.to_version > 0 ? flags.to_version : info.latest_version;
  if (version > info.latest_version) {
    throw ConfigError(
        "--to-version " + std::to_string(version) + " is beyond Transit key " + flags.transit_key +
        "'s latest version " + std::to_string(info.latest_version) +
        "; rotate the key in Vault first (vault write -f " + flags.transit_key + "/rotate)");
  }
  spec->transit_key_ref = flags.transit_key;
  spec->transit_min_version = version;
}

// An aws-kms job's two KMS keys, resolved to their key ARNs and checked Enabled in KMS before
// anything is written (rotation/aws_kms_rewriter.h). One-line KeyError or ConfigError otherwise.
void ResolveAwsKmsKeys(const CreateFlags& flags, jobs::JobSpec* spec) {
  if (flags.source_kms_key.empty() || flags.kms_key.empty()) {
    throw ConfigError(
        "--codec aws-kms needs both KMS keys: --source-kms-key (the key the blobs are under) and "
        "--kms-key (the key they move to), each a key ARN, key id or alias");
  }
  const rotation::AwsKmsSource source = LazyAwsKmsService();  // owns the client
  spec->aws_kms_source_key_arn = source().KeyArn(flags.source_kms_key);
  spec->aws_kms_key_arn = source().KeyArn(flags.kms_key);
  if (!flags.encryption_context.empty()) spec->aws_kms_context = flags.encryption_context;
}

// Runs one verb of jobs/job_control.h in its own transaction and prints the text it returns.
void RunControlFunction(const GlobalOptions& global, const std::string& context,
                        const std::function<std::string(pqxx::transaction_base&)>& verb) {
  auto conn = OpenDatabase(global);
  std::string message = db::Classified(context, [&] {
    pqxx::work txn(*conn);
    std::string text = verb(txn);
    txn.commit();
    return text;
  });
  std::printf("%s\n", message.c_str());
}

void CreateJob(const GlobalOptions& global, const CreateFlags& flags) {
  jobs::JobSpec spec;
  spec.table = flags.table;
  spec.columns = flags.columns;
  spec.codecs = flags.codecs;
  if (spec.codecs.size() == 1 && spec.columns.size() > 1) {
    spec.codecs.assign(spec.columns.size(), spec.codecs[0]);
  }
  const bool transit =
      !flags.transit_key.empty() ||
      std::find(spec.codecs.begin(), spec.codecs.end(), "vault-transit") != spec.codecs.end();
  const bool aws_kms =
      std::find(spec.codecs.begin(), spec.codecs.end(), "aws-kms") != spec.codecs.end();
  if (!aws_kms && (!flags.kms_key.empty() || !flags.source_kms_key.empty() ||
                   !flags.encryption_context.empty())) {
    throw ConfigError(
        "--kms-key, --source-kms-key and --encryption-context apply to --codec aws-kms only");
  }
  if (aws_kms) {
    if (!flags.key_map.empty()) {
      throw ConfigError(
          "--map does not apply to an aws-kms job: it re-encrypts every value inside KMS from "
          "--source-kms-key to --kms-key");
    }
    ResolveAwsKmsKeys(flags, &spec);
  } else if (transit) {
    if (!flags.key_map.empty()) {
      throw ConfigError(
          "--map does not apply to a vault-transit job: it rewraps every value below the "
          "Transit key's target version (--to-version, default the latest)");
    }
    ResolveTransitKey(flags, &spec);
  } else {
    if (flags.key_map.empty()) throw ConfigError("--map is required, e.g. --map 1:2");
    spec.key_map = jobs::ParseKeyMap(flags.key_map);
  }
  if (!flags.key_id_column.empty()) spec.key_id_column = flags.key_id_column;
  spec.key_columns = flags.key_columns;
  if (!flags.not_governed.empty()) spec.not_governed = flags.not_governed;
  spec.cross_scope = flags.cross_scope;
  if (!flags.encoding.empty()) spec.encoding = flags.encoding;
  if (!flags.json_path.empty()) spec.json_path = jobs::ParseJsonPath(flags.json_path);
  if (!flags.lockbox_key_table.empty()) spec.lockbox_key_table = flags.lockbox_key_table;
  if (!flags.lockbox_key_attribute.empty())
    spec.lockbox_key_attribute = flags.lockbox_key_attribute;
  if (!flags.ad_template.empty()) spec.ad_template = flags.ad_template;
  if (!flags.scope.empty()) {
    auto [column, value] = jobs::ParseScope(flags.scope);
    spec.scope_column = column;
    spec.scope_value = value;
  }
  if (!flags.name.empty()) spec.name = flags.name;
  spec.batch_size = flags.batch_size;
  spec.max_attempts = flags.max_attempts;
  spec.per_row_audit = flags.per_row_audit;
  spec.stages = flags.stages;
  if (flags.promote_at_stage > 0) spec.promote_at_stage = flags.promote_at_stage;
  spec.error_threshold = flags.error_threshold;
  if (!flags.observe.empty()) spec.observe = flags.observe;
  spec.gate_sample_size = flags.gate_sample_size;
  // The grammar's text is a PostgreSQL interval of the same length (common/duration.h).
  if (!flags.reader_window.empty()) {
    DurationRules rules;
    rules.minimum = std::chrono::seconds(1);
    ParseDuration(flags.reader_window, "--reader-window", rules);
  }

  auto conn = OpenDatabase(global);
  // A second connection reads the table's keys while a staged job's plan is computed and written
  // on the first (jobs/rollout_planner.h).
  auto key_reader = OpenDatabase(global);
  db::Classified("cannot create the job", [&] {
    pqxx::work txn(*conn);
    // What the rewrite sets off, and the triggers' choice, before anything is planned.
    std::vector<std::string> written = flags.columns;
    if (!flags.key_id_column.empty()) written.push_back(flags.key_id_column);
    jobs::SideEffects effects = jobs::InspectSideEffects(txn, flags.table, written);
    const jobs::TriggerChoice triggers =
        jobs::ParseTriggerChoice(flags.triggers).value_or(jobs::TriggerChoice::kNone);
    jobs::CheckTriggerChoice(txn, effects, triggers);
    const int64_t id = jobs::CreateJob(txn, spec, key_reader.get());
    if (!flags.reader_window.empty()) ops::SetReaderWindow(txn, id, flags.reader_window);
    const std::string verb = flags.dry_run ? "would create" : "created";
    const std::vector<jobs::PlannedStage> plan = jobs::ReadStagePlan(txn, id);
    long long rows = 0, batches = 0;
    for (const jobs::PlannedStage& stage : plan) {
      if (stage.kind != "rollout") continue;
      rows += stage.rows;
      batches += stage.batches;
    }
    std::printf("%s job %lld on %s: %lld rows in %lld batches\n", verb.c_str(),
                static_cast<long long>(id), flags.table.c_str(), rows, batches);
    for (const jobs::PlannedStage& stage : plan) {
      std::printf("  stage %d (up to %s%%): %lld rows in %lld batches%s\n", stage.stage_no,
                  stage.percent.c_str(), static_cast<long long>(stage.rows),
                  static_cast<long long>(stage.batches),
                  stage.promotes && !transit ? "; the new key becomes primary when it opens" : "");
    }
    effects.rows = rows;
    effects.estimate = jobs::EstimateRewrite(effects.shape, effects.indexes, rows, batches);
    jobs::DeclareSideEffects(txn, id, triggers, flags.vacuum_after, effects);
    std::printf("side effects of the rewrite:\n");
    for (const std::string& line : effects.Lines(triggers)) std::printf("  %s\n", line.c_str());
    if (flags.vacuum_after)
      std::printf("  VACUUM (ANALYZE) %s when the job completes\n", effects.table.c_str());
    std::string unreported;
    for (const std::string& scope : ops::UnreportedScopes(txn, id)) {
      unreported += (unreported.empty() ? "" : ", ") + scope;
    }
    if (flags.dry_run) {
      txn.abort();
      std::printf("dry run: nothing was written\n");
      return;
    }
    txn.commit();
    std::printf("run `rekey work --job %lld`; `rekey status %lld` shows progress\n",
                static_cast<long long>(id), static_cast<long long>(id));
    if (!unreported.empty()) {
      std::printf(
          "no reader has ever reported for scope %s: reader readiness cannot be proven, and the "
          "job waits for no application (applications report with rekey.reader_heartbeat, "
          "docs/applications.md)\n",
          unreported.c_str());
    }
  });
}

void VerifyJob(const GlobalOptions& global, int64_t job_id, bool json) {
  const std::string conninfo = ConnInfo(global);
  auto conn = OpenDatabase(global);
  std::optional<KeyServices> keys;  // the KMS clients, built once the job is loaded
  const ops::VerifiedJob verified = ops::VerifyJobValues(*conn, job_id, [&] {
    keys.emplace(conninfo);
    return keys->Source();
  });
  const rotation::VerifyReport& report = verified.report;
  const int64_t under_source = verified.under_source_keys;
  const int64_t under_target = verified.under_target_keys;
  if (json) {
    nlohmann::json by_key = nlohmann::json::object();
    for (const auto& [k, n] : report.values_by_key) by_key[std::to_string(k)] = n;
    nlohmann::json out = {{"job", job_id},
                          {"rows", report.rows},
                          {"values", report.values},
                          {"values_by_key", by_key},
                          {"values_under_source_keys", under_source},
                          {"values_under_target_keys", under_target},
                          {"failures", report.failures},
                          {"not_proven", report.not_proven},
                          {"failures_by_class", report.failures_by_class},
                          {"failure_samples", report.failure_samples},
                          {"plaintext_sha256", report.plaintext_sha256}};
    std::cout << out.dump(2) << "\n";
  } else {
    std::printf(
        "job %lld: %lld rows, %lld values: %lld under target keys, %lld under source keys, "
        "%lld failed to decrypt\n",
        static_cast<long long>(job_id), static_cast<long long>(report.rows),
        static_cast<long long>(report.values), static_cast<long long>(under_target),
        static_cast<long long>(under_source), static_cast<long long>(report.failures));
    for (const auto& [k, n] : report.values_by_key) {
      std::printf("  key %u: %lld values\n", k, static_cast<long long>(n));
    }
    if (report.not_proven > 0) {
      std::printf("  %lld AWS KMS blobs: their KMS key is not proven without KMS (docs/kms.md)\n",
                  static_cast<long long>(report.not_proven));
    }
    for (const auto& sample : report.failure_samples) std::printf("  failed: %s\n", sample.c_str());
    std::printf("plaintext sha256: %s\n", report.plaintext_sha256.c_str());
  }
  if (report.failures > 0) {
    throw StateError(std::to_string(report.failures) +
                     " values failed to decrypt; see SELECT * FROM rekey.row_failures");
  }
}

}  // namespace

void AddJobCommand(CLI::App& app, GlobalOptions& global) {
  CLI::App* job = app.add_subcommand("job", "Define rotation jobs and steer them");
  job->require_subcommand(1);

  auto flags = std::make_shared<CreateFlags>();
  CLI::App* create = job->add_subcommand("create", "Define, plan and enqueue a rotation job");
  create->add_option("--table", flags->table, "Target table, schema.table")->required();
  create
      ->add_option("--column", flags->columns,
                   "Ciphertext column (bytea; text for vault-transit); repeat for several")
      ->required();
  create->add_option("--codec", flags->codecs,
                     "Codec per column: tink (default), raw, fernet, rails, lockbox, cloak, "
                     "vault-transit or aws-kms; one for all, or one per --column");
  create->add_option("--encoding", flags->encoding,
                     "How the values are stored: bytea (default), or text in base64, base64url "
                     "or hex (docs/FORMAT.md)");
  create->add_option("--json-path", flags->json_path,
                     "The values are the strings at this path of jsonb documents, e.g. "
                     "'{payment,token}'; only they are rewritten");
  create->add_option("--lockbox-key-table", flags->lockbox_key_table,
                     "lockbox: the model's key_table option (default: the table's name)");
  create->add_option("--lockbox-key-attribute", flags->lockbox_key_attribute,
                     "lockbox: the model's key_attribute option, for one column (default: the "
                     "column's name, e.g. email_ciphertext)");
  create->add_option("--map", flags->key_map,
                     "Source-to-target key ids, e.g. 1:2 or 3:7,4:8 (required but for "
                     "vault-transit)");
  create->add_option("--transit-key", flags->transit_key,
                     "vault-transit: the Transit key of the values, <mount>/keys/<name>");
  create
      ->add_option("--to-version", flags->to_version,
                   "vault-transit: rewrap values below this key version (default: the latest)")
      ->check(CLI::Range(1, 1000000000));
  create->add_option("--source-kms-key", flags->source_kms_key,
                     "aws-kms: the KMS key the blobs are under (key ARN, key id or alias)");
  create->add_option("--kms-key", flags->kms_key,
                     "aws-kms: the KMS key to re-encrypt the blobs to (key ARN, key id or alias)");
  create->add_option("--encryption-context", flags->encryption_context,
                     "aws-kms: the constant encryption context the application bound, as JSON, "
                     "e.g. '{\"app\":\"billing\"}' (per-row contexts are not supported)");
  create->add_option("--key-id-column", flags->key_id_column,
                     "Integer column holding the key id (required by raw; kept in step for tink)");
  create
      ->add_option("--not-governed", flags->not_governed,
                   "Columns of the table not encrypted under the --key-id-column's key, e.g. "
                   "note,cvv_hint (a job that rewrites the key-id column must otherwise rotate "
                   "every other bytea/text column holding values)")
      ->delimiter(',');
  create
      ->add_option("--key-columns", flags->key_columns,
                   "The key to batch by, for a table without a primary key: the columns of a "
                   "unique, not-null index in its order, e.g. tenant_id,id (default: the primary "
                   "key)")
      ->delimiter(',');
  create->add_flag("--cross-scope", flags->cross_scope,
                   "Allow target keys in another keyring scope than their source keys");
  create->add_option("--ad-template", flags->ad_template,
                     "Associated data, e.g. '{table}.{column}:{pk}' (docs/FORMAT.md)");
  create->add_option("--scope", flags->scope, "Only rows where column=value, e.g. tenant_id=42");
  create->add_option("--batch-size", flags->batch_size, "Rows per batch")->capture_default_str();
  create->add_option("--max-attempts", flags->max_attempts, "Attempts before a batch is failed")
      ->capture_default_str();
  create->add_flag("--per-row-audit", flags->per_row_audit,
                   "Write one rekey.value_audit row per re-encrypted value");
  create->add_option("--name", flags->name, "A label for the job");
  create
      ->add_option("--stages", flags->stages,
                   "Cumulative percentages of the staged rollout, ending at 100 (100 = one stage)")
      ->capture_default_str();
  create->add_option("--promote-at-stage", flags->promote_at_stage,
                     "Stage whose opening makes the new key primary (default: the last)");
  create
      ->add_option("--error-threshold", flags->error_threshold,
                   "A gate passes while the decrypt error rate stays below this fraction")
      ->capture_default_str();
  create->add_option(
      "--reader-window", flags->reader_window,
      "Readers last seen longer ago than this never hold the job back (default 10m)");
  create->add_option("--observe", flags->observe,
                     "Advance on its own this long after a passed gate, e.g. 0s, 10min, 1h "
                     "(default: wait for `rekey job advance`)");
  create
      ->add_option("--gate-sample-size", flags->gate_sample_size,
                   "Rows a gate decrypts after the canary (the canary is verified whole)")
      ->capture_default_str();
  create
      ->add_option("--triggers", flags->triggers,
                   "The table's user triggers on the rewrite: fire (run them on every row) or "
                   "skip (session_replication_role = replica for the UPDATE); required when "
                   "the table has some")
      ->check(CLI::IsMember({"fire", "skip"}));
  create->add_flag("--vacuum-after", flags->vacuum_after,
                   "VACUUM (ANALYZE) the table when the job completes (a failure is recorded, "
                   "never fails the job)");
  create->add_flag("--dry-run", flags->dry_run, "Report rows and batches per stage; write nothing");
  create->callback([&global, flags] { CreateJob(global, *flags); });

  auto job_id = std::make_shared<int64_t>(0);
  auto reason = std::make_shared<std::string>();
  // A verb of jobs/job_control.h that takes the job id, and the --reason if it records one.
  using Verb = std::string (*)(pqxx::transaction_base&, int64_t);
  using VerbWithReason = std::string (*)(pqxx::transaction_base&, int64_t, const std::string&);
  auto add_verb = [&](const std::string& name, const std::string& help, Verb verb,
                      VerbWithReason verb_with_reason) {
    CLI::App* cmd = job->add_subcommand(name, help);
    cmd->add_option("job", *job_id, "Job id")->required();
    if (verb_with_reason) cmd->add_option("--reason", *reason, "Why (kept in the audit log)");
    cmd->callback([&global, job_id, reason, name, verb, verb_with_reason] {
      RunControlFunction(global, "cannot " + name + " job " + std::to_string(*job_id),
                         [&](pqxx::transaction_base& txn) {
                           return verb_with_reason ? verb_with_reason(txn, *job_id, *reason)
                                                   : verb(txn, *job_id);
                         });
    });
  };
  add_verb("pause", "Stop workers from claiming the job's batches", nullptr, jobs::PauseJob);
  add_verb("resume", "Let workers claim the job's batches again", jobs::ResumeJob, nullptr);
  add_verb("cancel", "Give up the job (rows already rotated stay rotated)", nullptr,
           jobs::CancelJob);
  add_verb("retry-failed", "Requeue the job's failed batches with fresh attempts",
           jobs::RetryFailed, nullptr);
  add_verb("rerun", "Rerun a job: a no-op for a completed job, failed batches for a failed one",
           jobs::RerunJob, nullptr);

  auto observe = std::make_shared<std::string>();
  auto force = std::make_shared<bool>(false);
  CLI::App* advance =
      job->add_subcommand("advance", "Approve the passed gate and open the next stage");
  advance->add_option("job", *job_id, "Job id")->required();
  advance->add_option("--observe", *observe,
                      "From now on advance on its own this long after each passed gate (e.g. 0s)");
  advance->add_flag("--force", *force, "Advance a job paused by a failed gate");
  advance->callback([&global, job_id, observe, force] {
    RunControlFunction(global, "cannot advance job " + std::to_string(*job_id),
                       [&](pqxx::transaction_base& txn) {
                         return jobs::AdvanceJob(txn, *job_id, *observe, *force);
                       });
  });

  auto to_percent = std::make_shared<std::string>("0");
  CLI::App* rollback = job->add_subcommand(
      "rollback", "Re-encrypt moved rows back to the old key and restore the keyring");
  rollback->add_option("job", *job_id, "Job id")->required();
  rollback
      ->add_option("--to-percent", *to_percent,
                   "Roll back to an earlier stage's percentage (default 0: everything)")
      ->capture_default_str();
  rollback->add_option("--reason", *reason, "Why (kept in the audit log)");
  rollback->callback([&global, job_id, to_percent, reason] {
    RunControlFunction(global, "cannot roll back job " + std::to_string(*job_id),
                       [&](pqxx::transaction_base& txn) {
                         return jobs::RollbackJob(txn, *job_id, *to_percent, *reason);
                       });
  });

  auto range = std::make_shared<std::pair<int, int>>(0, 0);
  CLI::App* requeue = job->add_subcommand("requeue", "Requeue a range of finished batches");
  requeue->add_option("job", *job_id, "Job id")->required();
  requeue->add_option("--from", range->first, "First batch number")->required();
  requeue->add_option("--to", range->second, "Last batch number")->required();
  requeue->callback([&global, job_id, range] {
    RunControlFunction(global, "cannot requeue", [&](pqxx::transaction_base& txn) {
      return jobs::Requeue(txn, *job_id, range->first, range->second);
    });
  });

  auto json = std::make_shared<bool>(false);
  CLI::App* verify = job->add_subcommand(
      "verify", "Decrypt every value of the job's target; exit 5 if any fails to decrypt");
  verify->add_option("job", *job_id, "Job id")->required();
  verify->add_flag("--json", *json, "Machine-readable output");
  verify->callback([&global, job_id, json] { VerifyJob(global, *job_id, *json); });
}

}  // namespace rekey::cli
