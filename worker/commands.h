// The rekey binary's subcommands. Each Add*Command registers one CLI11 subcommand tree and its
// callback; callbacks throw rekey::Error subclasses, which main() maps to exit codes.
// Nothing here holds logic of its own: commands parse flags and call into src/.
#pragma once

#include <CLI/CLI.hpp>
#include <pqxx/pqxx>
#include <string>

namespace rekey::cli {

struct GlobalOptions {
  std::string db;  // --db URL; empty means DATABASE_URL, then libpq's PG* variables
};

void AddMigrateCommand(CLI::App& app, GlobalOptions& global);  // migrate_command.cpp
void AddKeysCommand(CLI::App& app, GlobalOptions& global);     // keys_command.cpp
void AddJobCommand(CLI::App& app, GlobalOptions& global);      // job_command.cpp
void AddWorkCommand(CLI::App& app, GlobalOptions& global);     // work_command.cpp
void AddStatusCommand(CLI::App& app, GlobalOptions& global);   // status_command.cpp
void AddAuditCommand(CLI::App& app, GlobalOptions& global);    // audit_command.cpp
void AddReadersCommand(CLI::App& app, GlobalOptions& global);  // readers_command.cpp
// keys status, keys policy, rotate-due, report, exporter; after AddKeysCommand (ops_commands.cpp)
void AddOpsCommands(CLI::App& app, GlobalOptions& global);
// rotate, rotation status|rollback|report (rotate_command.cpp)
void AddRotateCommand(CLI::App& app, GlobalOptions& global);
// The unfinished rotations, for `rekey status` (rotate_command.cpp).
void PrintRotationsSection(pqxx::connection& conn);

}  // namespace rekey::cli
