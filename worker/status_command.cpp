// `rekey status [J] [--watch] [--json]`: the rekey.progress view, as a table, JSON, or a live
// progress bar on a terminal.
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <thread>

#include "cli_support.h"
#include "commands.h"
#include "db/connection.h"
#include "jobs/after_rewrite.h"
#include "ops/progress.h"

namespace rekey::cli {
namespace {

struct StatusFlags {
  int64_t job = 0;
  bool watch = false;
  bool json = false;
  double interval = 2.0;
};

nlohmann::json QueryProgress(pqxx::connection& conn, int64_t job) {
  return db::Classified("cannot read rekey.progress", [&] {
    pqxx::read_transaction txn(conn);
    nlohmann::json progress = ops::ReadProgress(txn, job);
    // --vacuum-after's run and its progress (jobs/after_rewrite.h).
    for (auto& j : progress) j["vacuum"] = jobs::VacuumProgress(txn, j["job_id"].get<int64_t>());
    return progress;
  });
}

std::string Bar(double percent, int width) {
  int filled = int(percent / 100.0 * width + 0.5);
  std::string s = "[";
  for (int i = 0; i < width; ++i) s += i < filled ? "#" : ".";
  return s + "]";
}

std::string Num(const nlohmann::json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

// While the job waits for readers (sql/schema/45_readers.sql): what for, since when, and each
// lagging reader with the key it lacks, so the on-call knows which instance to look at.
void PrintReaderWait(const nlohmann::json& j) {
  if (!j.contains("readers_waiting_for") || j["readers_waiting_for"].is_null()) return;
  const std::string what = Num(j["readers_waiting_for"]);
  std::printf("  WAITING FOR READERS before its %s since %s: ",
              what == "first_batch" ? "first batch" : what.c_str(),
              Num(j["readers_waiting_since"]).c_str());
  bool first = true;
  for (const auto& r : j["lagging_readers"]) {
    std::printf("%s%s (scope %s) lacks key %s, last seen %s", first ? "" : "; ",
                Num(r["reader"]).c_str(), Num(r["scope"]).c_str(), Num(r["key_id"]).c_str(),
                Num(r["last_seen"]).c_str());
    first = false;
  }
  std::printf("\n");
}

// While the job's workers hold back on brakes (src/rotation/brake.h): which, and since when.
void PrintBrakes(const nlohmann::json& j) {
  if (!j.contains("brakes_active") || !j["brakes_active"].is_array()) return;
  std::string reasons;
  for (const auto& r : j["brakes_active"]) reasons += (reasons.empty() ? "" : ", ") + Num(r);
  std::printf("  BRAKING (%s) since %s\n", reasons.c_str(), Num(j["brakes_since"]).c_str());
}

void PrintTable(const nlohmann::json& jobs, bool tty) {
  if (jobs.empty()) {
    std::printf("no jobs\n");
    return;
  }
  for (const auto& j : jobs) {
    double percent = j["percent"].is_null() ? 0.0 : std::stod(Num(j["percent"]));
    std::printf("job %s %-17s %s keys %s  stages %s\n", Num(j["job_id"]).c_str(),
                Num(j["state"]).c_str(), Num(j["target"]).c_str(), Num(j["keys"]).c_str(),
                Num(j["stage_plan"]).c_str());
    std::printf("  stage %s: %s up to %s%%, %s (%s/%s rows)", Num(j["current_stage"]).c_str(),
                Num(j["stage_kind"]).c_str(), Num(j["stage_percent"]).c_str(),
                Num(j["stage_state"]).c_str(), Num(j["stage_rows_done"]).c_str(),
                Num(j["stage_rows"]).c_str());
    if (!j["last_gate_stage"].is_null()) {
      std::printf(
          "  last gate: stage %s %s, error rate %s over %s values",
          Num(j["last_gate_stage"]).c_str(), j["last_gate_passed"] == true ? "passed" : "FAILED",
          Num(j["last_gate_error_rate"]).c_str(), Num(j["last_gate_values_checked"]).c_str());
    }
    std::printf("\n");
    std::printf(
        "  %s %6.2f%%  rows %s/%s  quarantined %s  batches done %s failed %s running %s "
        "pending %s\n",
        tty ? Bar(percent, 30).c_str() : "", percent, Num(j["rows_processed"]).c_str(),
        Num(j["rows_total"]).c_str(), Num(j["rows_quarantined"]).c_str(),
        Num(j["batches_done"]).c_str(), Num(j["batches_failed"]).c_str(),
        Num(j["batches_running"]).c_str(), Num(j["batches_pending"]).c_str());
    std::printf("  rate %s rows/s  stage eta %s  workers %s", Num(j["rows_per_second"]).c_str(),
                Num(j["stage_eta"]).c_str(), Num(j["active_workers"]).c_str());
    if (!j["state_reason"].is_null()) std::printf("  reason: %s", Num(j["state_reason"]).c_str());
    std::printf("\n");
    PrintReaderWait(j);
    const nlohmann::json& v = j["vacuum"];
    if (v.is_object()) {
      std::printf("  vacuum after: %s since %s", Num(v["state"]).c_str(),
                  Num(v["started_at"]).c_str());
      if (v["state"] == "running") {
        std::printf(
            ", %s, heap blocks scanned %s/%s vacuumed %s",
            Num(v["vacuum_phase"].is_null() ? v["analyze_phase"] : v["vacuum_phase"]).c_str(),
            Num(v["heap_blks_scanned"]).c_str(), Num(v["heap_blks_total"]).c_str(),
            Num(v["heap_blks_vacuumed"]).c_str());
      }
      if (!v["error"].is_null()) std::printf(": %s", Num(v["error"]).c_str());
      std::printf("\n");
    }
    PrintBrakes(j);
    if (j.contains("partitions_gone") && !j["partitions_gone"].is_null()) {
      std::printf("  PARTITIONS GONE: %s batches ended without rotating them: %s\n",
                  Num(j["batches_partition_gone"]).c_str(), Num(j["partitions_gone"]).c_str());
    }
  }
}

void Status(const GlobalOptions& global, const StatusFlags& flags) {
  auto conn = OpenDatabase(global);
  const bool tty = isatty(STDOUT_FILENO);
  while (true) {
    nlohmann::json jobs = QueryProgress(*conn, flags.job);
    if (flags.json) {
      std::cout << jobs.dump(flags.watch ? -1 : 2) << std::endl;
    } else {
      if (flags.watch && tty) std::printf("\033[H\033[2J");
      PrintTable(jobs, tty);
      if (flags.job == 0) PrintRotationsSection(*conn);
      std::fflush(stdout);
    }
    if (!flags.watch || !ops::AnyActive(jobs)) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(int64_t(flags.interval * 1000)));
  }
}

}  // namespace

void AddStatusCommand(CLI::App& app, GlobalOptions& global) {
  auto flags = std::make_shared<StatusFlags>();
  CLI::App* status = app.add_subcommand("status", "Show job progress (the rekey.progress view)");
  status->add_option("job", flags->job, "Only this job");
  status->add_flag("--watch", flags->watch, "Refresh until no shown job is active");
  status->add_flag("--json", flags->json, "JSON output");
  status->add_option("--interval", flags->interval, "Seconds between refreshes")
      ->capture_default_str();
  status->callback([&global, flags] { Status(global, *flags); });
}

}  // namespace rekey::cli
