// rekey migrate [--status]: applies the embedded schema migrations and definition files
// (sql/README.md), or lists their state.
#include <cstdio>
#include <memory>
#include <string>

#include "commands.h"
#include "db/connection.h"
#include "db/conninfo.h"
#include "db/migrator.h"

namespace rekey::cli {
namespace {

void PrintStatus(pqxx::connection& conn) {
  int pending = 0, drifted = 0;
  for (const db::MigrationStatus& s : db::MigrationStatusList(conn)) {
    if (!s.applied) {
      ++pending;
      std::printf("%-40s pending\n", s.name.c_str());
    } else if (!s.in_binary) {
      std::printf("%-40s applied %s by %s, UNKNOWN to this binary (upgrade rekey)\n",
                  s.name.c_str(), s.applied_at->c_str(), s.applied_by->c_str());
    } else if (!s.checksum_matches) {
      ++drifted;
      std::printf("%-40s applied %s by %s, CHANGED since (checksum mismatch)\n", s.name.c_str(),
                  s.applied_at->c_str(), s.applied_by->c_str());
    } else {
      std::printf("%-40s applied %s by %s%s\n", s.name.c_str(), s.applied_at->c_str(),
                  s.applied_by->c_str(),
                  s.earlier_text ? " (an earlier, equivalent text of the file)" : "");
    }
  }
  std::printf("%d pending, %d changed after being applied\n", pending, drifted);
  int stale = 0;
  for (const db::DefinitionStatus& s : db::DefinitionStatusList(conn)) {
    std::string file = "sql/schema/" + s.name;
    if (!s.applied) {
      ++stale;
      std::printf("%-40s pending\n", file.c_str());
    } else if (!s.in_binary) {
      std::printf("%-40s applied %s by %s, UNKNOWN to this binary\n", file.c_str(),
                  s.applied_at->c_str(), s.applied_by->c_str());
    } else if (s.replaced) {
      std::printf(
          "%-40s this binary's text was replaced %s by %s: OLDER, refused by rekey migrate "
          "(run the newest rekey binary)\n",
          file.c_str(), s.applied_at->c_str(), s.applied_by->c_str());
    } else if (!s.current) {
      ++stale;
      std::printf("%-40s applied %s by %s, CHANGED since (applied again by rekey migrate)\n",
                  file.c_str(), s.applied_at->c_str(), s.applied_by->c_str());
    } else {
      std::printf("%-40s applied %s by %s\n", file.c_str(), s.applied_at->c_str(),
                  s.applied_by->c_str());
    }
  }
  std::printf("%d definition file(s) to apply\n", stale);
}

}  // namespace

void AddMigrateCommand(CLI::App& app, GlobalOptions& global) {
  CLI::App* cmd = app.add_subcommand(
      "migrate",
      "Apply the embedded schema migrations and definitions (safe to run concurrently and "
      "repeatedly)");
  auto status = std::make_shared<bool>(false);
  cmd->add_flag(
      "--status", *status,
      "List every migration and definition file and whether it is applied; change nothing");
  cmd->callback([&global, status] {
    std::string conninfo = db::ResolveConnInfo(global.db);
    std::unique_ptr<pqxx::connection> conn = db::Connect(conninfo, "rekey migrate");
    if (*status) {
      PrintStatus(*conn);
      return;
    }
    db::MigrationReport report = db::Migrate(*conn);
    for (const std::string& name : report.applied) std::printf("applied %s\n", name.c_str());
    std::printf("%zu migration(s) applied, %d already applied\n", report.applied.size(),
                report.already_applied);
    for (const std::string& name : report.definitions_applied) {
      std::printf("applied sql/schema/%s\n", name.c_str());
    }
    std::printf("%zu definition file(s) applied, %d unchanged\n", report.definitions_applied.size(),
                report.definitions_unchanged);
  });
}

}  // namespace rekey::cli
