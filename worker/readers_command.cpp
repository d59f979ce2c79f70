// `rekey readers [--scope S] [--json]`: the application instances that report which keys they can
// decrypt (rekey.reader_heartbeat), with their age and the unfinished jobs whose reader window
// they are within (ops/readers.h).
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include "cli_support.h"
#include "commands.h"
#include "db/connection.h"
#include "ops/readers.h"

namespace rekey::cli {
namespace {

struct ReadersFlags {
  std::string scope;
  bool json = false;
};

std::string Text(const nlohmann::json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

std::string Joined(const nlohmann::json& array) {
  std::string out;
  for (const auto& v : array) out += (out.empty() ? "" : ",") + Text(v);
  return out.empty() ? "-" : out;
}

void PrintTable(const nlohmann::json& readers) {
  if (readers.empty()) {
    std::printf(
        "no reader has reported; applications report with rekey.reader_heartbeat "
        "(docs/applications.md)\n");
    return;
  }
  std::printf("%-24s %-16s %-16s %-32s %10s  %s\n", "READER", "SCOPE", "KEY IDS", "LAST SEEN",
              "AGE (s)", "LIVE FOR JOBS");
  for (const auto& r : readers) {
    std::printf("%-24s %-16s %-16s %-32s %10s  %s\n", Text(r["reader"]).c_str(),
                Text(r["scope"]).c_str(), Joined(r["key_ids"]).c_str(),
                Text(r["last_seen"]).c_str(), Text(r["age_seconds"]).c_str(),
                r["live_for_jobs"].empty() ? "none (stale, or no unfinished job of its scope)"
                                           : Joined(r["live_for_jobs"]).c_str());
  }
}

void ListReaders(const GlobalOptions& global, const ReadersFlags& flags) {
  auto conn = OpenDatabase(global, "rekey-readers");
  const nlohmann::json readers = db::Classified("cannot read rekey.readers", [&] {
    pqxx::read_transaction txn(*conn);
    return ops::ListReaders(
        txn, flags.scope.empty() ? std::nullopt : std::optional<std::string>(flags.scope));
  });
  if (flags.json) {
    std::cout << readers.dump(2) << std::endl;
  } else {
    PrintTable(readers);
  }
}

}  // namespace

void AddReadersCommand(CLI::App& app, GlobalOptions& global) {
  auto flags = std::make_shared<ReadersFlags>();
  CLI::App* readers = app.add_subcommand(
      "readers", "List the application instances that report which keys they can decrypt");
  readers->add_option("--scope", flags->scope, "Only the readers of this keyring scope");
  readers->add_flag("--json", flags->json, "One JSON array instead of a table");
  readers->callback([&global, flags] { ListReaders(global, *flags); });
}

}  // namespace rekey::cli
