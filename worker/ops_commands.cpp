// Operations subcommands: `rekey keys status` and `rekey keys policy` (key-age policy),
// `rekey rotate-due` (what the CronJob runs) and `rekey report` (compliance evidence, as JSON,
// Markdown or PDF).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>

#include "cli_support.h"
#include "commands.h"
#include "common/error.h"
#include "common/log.h"
#include "db/connection.h"
#include "jobs/job.h"
#include "keyring/key_policy.h"
#include "kms/kms_registry.h"
#include "ops/atomic_output.h"
#include "ops/compliance_report.h"
#include "ops/ops_service.h"
#include "ops/pdf_report.h"
#include "ops/report_evidence.h"
#include "rotation/rotation_scheduler.h"

namespace rekey::cli {
namespace {

std::string Age(int64_t seconds) {
  if (seconds >= 86400) return std::to_string(seconds / 86400) + "d";
  if (seconds >= 3600) return std::to_string(seconds / 3600) + "h";
  if (seconds >= 60) return std::to_string(seconds / 60) + "m";
  return std::to_string(seconds) + "s";
}

template <typename T>
nlohmann::json Opt(const std::optional<T>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

template <typename Fn>
void InTransaction(const GlobalOptions& global, const char* app, Fn&& fn) {
  auto conn = OpenDatabase(global, app);
  db::Classified("reading the keyring", [&] {
    pqxx::work txn(*conn);
    fn(txn);
    txn.commit();
  });
}

void KeysStatus(const GlobalOptions& global, bool json) {
  std::vector<keyring::KeyAge> keys;
  InTransaction(global, "rekey-keys",
                [&](pqxx::transaction_base& txn) { keys = keyring::ListKeyAges(txn); });
  int overdue = 0;
  for (const auto& k : keys) overdue += k.overdue ? 1 : 0;
  if (json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& k : keys) {
      out.push_back({{"key_id", k.key_id},
                     {"scope", k.scope},
                     {"status", k.status},
                     {"kms_provider", k.kms_provider},
                     {"kms_key_ref", k.kms_key_ref},
                     {"created_at", k.created_at},
                     {"age_seconds", k.age_seconds},
                     {"max_age_seconds", Opt(k.max_age_seconds)},
                     {"max_age_source", Opt(k.max_age_source)},
                     {"due_at", Opt(k.due_at)},
                     {"overdue", k.overdue},
                     {"job_in_flight", Opt(k.job_in_flight)}});
    }
    std::printf("%s\n", out.dump(2).c_str());
    return;
  }
  if (keys.empty()) {
    std::printf("no usable keys; create one with `rekey keys create`\n");
    return;
  }
  std::printf("%-10s %-16s %-13s %-7s %-18s %-21s %-8s %s\n", "KEY", "SCOPE", "STATUS", "AGE",
              "MAX AGE", "DUE", "OVERDUE", "JOB");
  for (const auto& k : keys) {
    std::string max_age = k.max_age_seconds
                              ? Age(*k.max_age_seconds) + " (" + k.max_age_source.value_or("") + ")"
                              : "-";
    std::printf("%-10u %-16s %-13s %-7s %-18s %-21s %-8s %s\n", k.key_id, k.scope.c_str(),
                k.status.c_str(), Age(k.age_seconds).c_str(), max_age.c_str(),
                k.due_at.value_or("-").c_str(), k.overdue ? "yes" : "no",
                k.job_in_flight ? std::to_string(*k.job_in_flight).c_str() : "-");
  }
  if (overdue > 0) {
    std::printf(
        "%d primary key%s overdue; rotate with `rekey rotate-due` (see docs/operations.md)\n",
        overdue, overdue == 1 ? "" : "s");
  } else {
    std::printf("no key is overdue\n");
  }
}

struct RotateDueFlags {
  int max_jobs = 10;
  bool dry_run = false;
  bool json = false;
  std::string stages = "1,25,50,75,100";
  std::string observe = "10min";
  int batch_size = 1000;
  int stagger_seconds = 0;
};

void RotateDueCommand(const GlobalOptions& global, const RotateDueFlags& flags) {
  rotation::RotateDueOptions options;
  options.max_jobs = flags.max_jobs;
  options.dry_run = flags.dry_run;
  options.stages = "{" + flags.stages + "}";
  if (flags.observe == "approval") {
    options.observe.reset();
  } else {
    options.observe = flags.observe;
  }
  options.batch_size = flags.batch_size;
  options.stagger = std::chrono::seconds(flags.stagger_seconds);
  kms::KmsRegistry registry;
  auto conn = OpenDatabase(global, "rekey-rotate-due");
  std::vector<rotation::ScopeRotation> result =
      rotation::RotateDue(*conn, registry.Resolver(), options);
  int failed = 0;
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : result) {
    failed += r.action == "failed" ? 1 : 0;
    out.push_back({{"scope", r.scope},
                   {"old_key", r.old_key},
                   {"due_at", r.due_at},
                   {"action", r.action},
                   {"new_key", Opt(r.new_key)},
                   {"rotation", Opt(r.rotation)},
                   {"jobs", r.jobs},
                   {"targets", r.targets},
                   {"detail", r.detail}});
    if (flags.json) continue;
    std::string line = "scope " + r.scope + " (key " + std::to_string(r.old_key) + ", due " +
                       r.due_at + "): " + r.action;
    if (r.new_key) line += ", new key " + std::to_string(*r.new_key);
    if (r.rotation) line += ", rotation " + std::to_string(*r.rotation);
    if (!r.jobs.empty()) {
      line += r.action == "in_flight" ? ", job " : ", jobs";
      for (int64_t j : r.jobs) line += " " + std::to_string(j);
    }
    for (const auto& t : r.targets) line += "\n    " + t;
    if (!r.detail.empty()) line += " (" + r.detail + ")";
    std::printf("%s\n", line.c_str());
  }
  if (flags.json) {
    std::printf("%s\n", out.dump(2).c_str());
  } else if (result.empty()) {
    std::printf("no key is overdue\n");
  }
  if (failed > 0) {
    // Exit as the first failure would have: 2 configuration, 4 key, 5 state, else 3 (retry).
    int code = 0;
    for (const auto& r : result) {
      if (r.action == "failed" && code == 0) code = r.exit_code;
    }
    const std::string message = std::to_string(failed) +
                                " overdue scope(s) could not be scheduled (see above); the next "
                                "run retries them";
    if (code == kExitUsage) throw ConfigError(message);
    if (code == kExitKey) throw KeyError(message);
    if (code == kExitState) throw StateError(message);
    throw TransientError(message);
  }
}

struct ReportFlags {
  int64_t job = 0;
  std::string format = "markdown";
  std::string output;
  bool no_store = false;
  bool verify = false;
  std::string plaintext_sha256_before;
};

void ReportCommand(const GlobalOptions& global, const ReportFlags& flags) {
  if (flags.format == "pdf" && flags.output.empty()) {
    throw ConfigError("--format pdf needs --output FILE (a PDF is not written to a terminal)");
  }
  if (!flags.plaintext_sha256_before.empty() && !flags.verify) {
    throw ConfigError("--plaintext-sha256-before is compared by --verify; add --verify");
  }
  // Created first, so that an unwritable path is refused before anything is read or stored.
  std::optional<ops::AtomicOutputFile> file;
  if (!flags.output.empty()) file.emplace(flags.output);

  auto conn = OpenDatabase(global, "rekey-report");
  const bool known = db::Classified("looking up job " + std::to_string(flags.job), [&] {
    pqxx::read_transaction txn(*conn);
    return jobs::JobExists(txn, flags.job);
  });
  if (!known) {
    throw ConfigError("job " + std::to_string(flags.job) +
                      " does not exist; `rekey status` lists the jobs");
  }
  ops::ReportRequest request;
  request.pdf = flags.format == "pdf";
  request.store = !flags.no_store;
  request.audit_chain = ops::AuditChainEvidence(*conn);
  std::optional<KeyServices> keys;  // the KMS clients, built only if --verify needs them
  if (flags.verify) {
    request.verification = ops::VerificationEvidence(
        *conn, flags.job,
        [&] {
          keys.emplace(ConnInfo(global));
          return keys->Source();
        },
        flags.plaintext_sha256_before);
  }
  const ops::AssembledReport assembled =
      db::Classified("building the report of job " + std::to_string(flags.job), [&] {
        pqxx::work txn(*conn);
        ops::AssembledReport r = ops::AssembleReport(txn, flags.job, request);
        txn.commit();
        return r;
      });
  const nlohmann::json& report = assembled.report;
  const ops::StoredReport& stored = assembled.stored;
  if (flags.format == "pdf") {
    nlohmann::json shown = report;
    if (!flags.no_store) {
      shown["stored_report"] = {{"report_id", stored.report_id}, {"sha256", stored.sha256}};
    }
    ops::WritePdfReport(shown, assembled.progress, file->stream());
  } else {
    std::string text = flags.format == "json" ? report.dump(2) + "\n" : assembled.markdown;
    if (file) {
      std::fwrite(text.data(), 1, text.size(), file->stream());
    } else {
      std::fwrite(text.data(), 1, text.size(), stdout);
    }
  }
  if (file) file->Commit();
  if (!flags.no_store) {
    std::fprintf(stderr, "report %lld stored in rekey.reports (sha256 %s)\n",
                 static_cast<long long>(stored.report_id), stored.sha256.c_str());
  }
  if (file) std::fprintf(stderr, "report written to %s\n", flags.output.c_str());
}

// Serves the deployment-wide gauges (key ages, overdue keys, jobs, progress) between rotations,
// when no worker runs: a small Deployment that alerts such as RekeyKeyRotationOverdue rely on.
void Exporter(const GlobalOptions& global, const std::string& listen) {
  const std::atomic<bool>& stop = InstallStopSignals();
  ops::OpsService service(ConnInfo(global));
  service.Listen(ops::ParseListenAddress(listen));
  log::Info("serving /metrics, /healthz and /readyz",
            {{"listen", listen}, {"port", service.port()}, {"action", "http.listen"}});
  while (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  log::Info("exporter stopped by signal", {{"action", "http.stop"}});
}

}  // namespace

void AddOpsCommands(CLI::App& app, GlobalOptions& global) {
  if (CLI::App* keys = app.get_subcommand("keys")) {
    auto json = std::make_shared<bool>(false);
    CLI::App* status = keys->add_subcommand(
        "status", "Each usable key's age, maximum age, due date, and which are overdue");
    status->add_flag("--json", *json, "One JSON array instead of a table");
    status->callback([&global, json] { KeysStatus(global, *json); });

    auto scope = std::make_shared<std::string>("*");
    auto max_age = std::make_shared<std::string>();
    CLI::App* policy = keys->add_subcommand(
        "policy", "Maximum key age per scope (rekey.key_policies; scope '*' is the default)");
    policy->require_subcommand(1);
    CLI::App* set = policy->add_subcommand("set", "Set the maximum age of a scope's keys");
    set->add_option("--scope", *scope, "Key scope, or '*' for every scope without its own")
        ->capture_default_str();
    set->add_option("--max-age", *max_age, "e.g. 90d, 30d, '2160 hours'")->required();
    set->callback([&global, scope, max_age] {
      keyring::KeyPolicy p;
      InTransaction(global, "rekey-keys", [&](pqxx::transaction_base& txn) {
        p = keyring::SetPolicy(txn, *scope, *max_age);
      });
      std::printf("keys in scope %s now rotate after %s\n", p.scope.c_str(), p.max_age.c_str());
    });
    CLI::App* list = policy->add_subcommand("list", "Show the policies");
    list->callback([&global] {
      std::vector<keyring::KeyPolicy> all;
      InTransaction(global, "rekey-keys",
                    [&](pqxx::transaction_base& txn) { all = keyring::ListPolicies(txn); });
      if (all.empty()) std::printf("no key-age policy; set one with `rekey keys policy set`\n");
      for (const auto& p : all) {
        std::printf("%-16s %-20s set %s by %s\n", p.scope.c_str(), p.max_age.c_str(),
                    p.updated_at.c_str(), p.updated_by.c_str());
      }
    });
  }

  auto due = std::make_shared<RotateDueFlags>();
  CLI::App* rotate = app.add_subcommand(
      "rotate-due",
      "For each scope whose primary key is overdue: create the new key and its staged jobs");
  rotate->add_option("--max-jobs", due->max_jobs, "Scopes rotated per run (the rest wait)")
      ->capture_default_str()
      ->check(CLI::Range(0, 100000));
  rotate->add_flag("--dry-run", due->dry_run, "Say what would be done; change nothing");
  rotate->add_flag("--json", due->json, "One JSON array instead of lines");
  rotate->add_option("--stages", due->stages, "Cumulative stage percentages")
      ->capture_default_str();
  rotate
      ->add_option("--observe", due->observe,
                   "Advance this long after a passed gate ('approval': wait for a person)")
      ->capture_default_str();
  rotate->add_option("--batch-size", due->batch_size, "Rows per batch")->capture_default_str();
  rotate->add_option("--stagger", due->stagger_seconds, "Seconds to wait between two scopes")
      ->capture_default_str()
      ->check(CLI::Range(0, 3600));
  rotate->callback([&global, due] { RotateDueCommand(global, *due); });

  auto listen = std::make_shared<std::string>("0.0.0.0:9090");
  CLI::App* exporter = app.add_subcommand(
      "exporter", "Serve /metrics (keyring and job gauges), /healthz and /readyz until SIGTERM");
  exporter->add_option("--listen", *listen, "ADDR:PORT")->capture_default_str();
  exporter->callback([&global, listen] { Exporter(global, *listen); });

  auto report = std::make_shared<ReportFlags>();
  CLI::App* rep = app.add_subcommand(
      "report", "Compliance report of a job (keys, stages, gates, approvals, audit check)");
  rep->add_option("job", report->job, "Job id")->required();
  rep->add_option("--format", report->format, "json, markdown or pdf (pdf needs --output)")
      ->capture_default_str()
      ->check(CLI::IsMember({"json", "markdown", "pdf"}));
  rep->add_option("--output", report->output,
                  "Write to this file (whole or not at all) instead of stdout");
  rep->add_flag("--verify", report->verify,
                "Decrypt every value of the target (as `rekey job verify`) and include the "
                "plaintext digest");
  rep->add_option("--plaintext-sha256-before", report->plaintext_sha256_before,
                  "The digest `rekey job verify --json` gave before the rotation, for --verify "
                  "to compare");
  rep->add_flag("--no-store", report->no_store, "Do not record the report in rekey.reports");
  rep->callback([&global, report] { ReportCommand(global, *report); });
}

}  // namespace rekey::cli
