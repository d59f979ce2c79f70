// rekey: re-encrypts application-encrypted PostgreSQL columns when data keys rotate.
// This file only wires the subcommands together; see README.md for the exit codes and
// docs/ARCHITECTURE.md for the error table that decides them.
#include <cstdio>
#include <exception>

#include "commands.h"
#include "common/error.h"
#include "common/error_table.h"
#include "db/connection.h"

int main(int argc, char** argv) {
  CLI::App app{"rekey: online, resumable, audited re-encryption of PostgreSQL columns"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "rekey 0.1.0");
  rekey::cli::GlobalOptions global;
  app.add_option("--db", global.db,
                 "PostgreSQL connection URL (default: DATABASE_URL, then libpq's PG* variables)")
      ->envname("DATABASE_URL");
  app.fallthrough();
  rekey::cli::AddMigrateCommand(app, global);
  rekey::cli::AddKeysCommand(app, global);
  rekey::cli::AddJobCommand(app, global);
  rekey::cli::AddWorkCommand(app, global);
  rekey::cli::AddStatusCommand(app, global);
  rekey::cli::AddAuditCommand(app, global);
  rekey::cli::AddReadersCommand(app, global);
  rekey::cli::AddOpsCommands(app, global);
  rekey::cli::AddRotateCommand(app, global);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? rekey::kExitOk : rekey::kExitUsage;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rekey: error: %s\n", e.what());
    // The error table decides (common/error_table.h), for an exception of libpqxx that escaped
    // classification as for rekey's own.
    return rekey::ExitCodeOf(rekey::db::Classify(e).error_class);
  }
  return rekey::kExitOk;
}
