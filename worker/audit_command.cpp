// `rekey audit seal | verify`: the tamper-evident audit chain (src/audit/audit_chain.h).
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>

#include "audit/audit_chain.h"
#include "cli_support.h"
#include "commands.h"
#include "common/error.h"
#include "common/log.h"

namespace rekey::cli {
namespace {

struct VerifyFlags {
  bool json = false;
  bool no_seal = false;
  std::string expect_head;
};

void Verify(const GlobalOptions& global, const VerifyFlags& flags) {
  std::optional<audit::Head> expect;
  if (!flags.expect_head.empty()) expect = audit::ParseHead(flags.expect_head);
  auto conn = OpenDatabase(global, "rekey-audit");
  // Sealing first means rows written since the last seal are covered, not merely "unsealed". A
  // seal that cannot get the lock leaves verification to judge what stays unsealed.
  if (!flags.no_seal) {
    try {
      audit::Seal(*conn);
    } catch (const TransientError& e) {
      log::Warn("verifying without sealing first", {{"error", e.what()}});
    }
  }
  const audit::Verification v = audit::Verify(*conn, expect);
  // The head printed may be recorded as evidence: flush the WAL past everything verified, which
  // batches may have committed asynchronously.
  if (!flags.no_seal) {
    try {
      audit::SealDurably(*conn);
    } catch (const TransientError& e) {
      log::Warn("the head printed may not survive a server crash yet", {{"error", e.what()}});
    }
  }
  const std::string head = audit::FormatHead(v.head);
  if (flags.json) {
    nlohmann::json findings = nlohmann::json::array();
    for (const auto& f : v.findings) {
      findings.push_back({{"kind", f.kind},
                          {"audit_id", f.audit_id ? nlohmann::json(*f.audit_id) : nullptr},
                          {"seq", f.seq ? nlohmann::json(*f.seq) : nullptr},
                          {"detail", f.detail}});
    }
    std::cout << nlohmann::json{{"ok", v.ok()},
                                {"rows_checked", v.rows_checked},
                                {"unsealed", v.unsealed},
                                {"head", head},
                                {"findings", findings}}
                     .dump()
              << "\n";
  } else {
    for (const auto& f : v.findings) {
      std::printf("%s %-13s %s\n", f.kind == "unsealed" ? "UNSEALED" : "TAMPERED", f.kind.c_str(),
                  f.detail.c_str());
    }
    std::printf("%s: %lld sealed rows checked, %lld not sealed yet; head %s\n",
                v.ok() ? "audit log intact"
                       : (v.tampered() ? "audit log TAMPERED" : "audit log NOT SEALED"),
                (long long)v.rows_checked, (long long)v.unsealed, head.c_str());
  }
  std::fflush(stdout);
  if (v.tampered()) {
    throw StateError("the audit log fails verification (" + std::to_string(v.findings.size()) +
                     " findings): treat it as a security incident and compare with the chain "
                     "heads recorded in logs and reports");
  }
  if (!v.ok()) {
    throw StateError("audit rows stay unsealed beyond " +
                     std::to_string(audit::kMaxUnsealedMinutes) +
                     " minutes, so the chain does not cover them: run `rekey audit seal`, and set "
                     "default_transaction_isolation = 'read committed' for the sessions that "
                     "write audit rows");
  }
}

}  // namespace

void AddAuditCommand(CLI::App& app, GlobalOptions& global) {
  CLI::App* audit = app.add_subcommand(
      "audit", "The tamper-evident audit log: seal new rows into the hash chain, verify it");
  audit->require_subcommand(1);

  CLI::App* seal = audit->add_subcommand(
      "seal", "Seal audit rows not sealed yet (writers seal as they go; this catches up)");
  seal->callback([&global] {
    auto conn = OpenDatabase(global, "rekey-audit");
    std::printf("sealed %d audit rows\n", audit::Seal(*conn));
  });

  auto flags = std::make_shared<VerifyFlags>();
  CLI::App* verify = audit->add_subcommand(
      "verify",
      "Recompute every sealed row's digest and the hash chain; exit 5 if any row was altered, "
      "deleted or inserted, or rows stay unsealed for long");
  verify->add_flag("--json", flags->json, "Machine-readable output");
  verify->add_flag("--no-seal", flags->no_seal, "Do not seal new rows first (read-only)");
  verify->add_option("--expect-head", flags->expect_head,
                     "A head SEQ:HASH recorded earlier (logs, reports): the chain must contain it");
  verify->callback([&global, flags] { Verify(global, *flags); });
}

}  // namespace rekey::cli
