// The tamper-evident audit chain (sql/schema/20_audit.sql): sealing, and verification
// recomputed here from the raw columns of rekey.audit, independently of the SQL that sealed them.
//
// Verification also flags a sealed row whose `at` is more than an hour older than seals that ran
// before it without seeing it (a backdated insertion; no audit-writing transaction runs that
// long).
//
// What verification proves: every sealed audit row is unchanged (its digest matches), the chain
// of hashes is unbroken from genesis to the head (no sealed row deleted, reordered or replaced),
// and no row was inserted after the fact (an unsealed row older than a seal's xid horizon). What
// it cannot prove alone: that the newest rows were not cut off together with their chain rows,
// or the whole chain rewritten, by someone with full control of the database. Against that, the
// head (seq and hash) is recorded outside the database -- in the worker's JSON logs and in
// compliance reports -- and `ExpectHead` checks that the chain still extends a recorded head.
//
// Thread-safety: free functions; a pqxx::connection is used by one thread at a time.
#pragma once

#include <pqxx/pqxx>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/bytes.h"

namespace rekey::audit {

// The canonical bytes of one audit row: for each field, "-" if NULL, else "<octet length>:<text>",
// joined with ",". Fields, in order: audit_id, at (UTC, "YYYY-MM-DDTHH:MM:SS.ffffffZ"), actor,
// action, outcome, job_id, batch_no, details (jsonb text), xid.
Bytes CanonicalRow(const std::vector<std::optional<std::string>>& fields);
// sha256(prev_chain_hash || seq as 8 bytes big-endian || row_digest). prev is 32 zero bytes for
// seq 1.
Bytes ChainHash(const Bytes& prev_chain_hash, int64_t seq, const Bytes& row_digest);
Bytes Sha256(const Bytes& data);

// Seals every audit row visible to a new transaction on `conn` that is not sealed yet; returns
// how many. Waits (up to kSealLockTimeoutSeconds) for a session that is sealing at that moment, so
// what that session left is sealed too; throws TransientError if it waits longer.
int Seal(pqxx::connection& conn);

// The longest `Seal` waits for another sealer: writers hold the chain's lock only from their
// audit INSERT to their COMMIT.
inline constexpr int kSealLockTimeoutSeconds = 30;

// Audit rows are sealed by the statement that writes them, or else by the next writer, the next
// `rekey work` exit or `rekey audit verify`. A row unsealed for longer than this means sealing has
// stopped (docs/operations.md, "Tamper-evident audit"), and `Verify` reports it: far above a
// seal's latency, short enough that an auditor's check notices within a quarter of an hour. A
// row becomes visible when its transaction commits and `Verify` judges it by the time it was
// written, so `verify --no-seal` also reports the rows of a transaction that stayed open longer
// than this until a seal has run after its COMMIT; `verify` without --no-seal seals them first.
inline constexpr int kMaxUnsealedMinutes = 15;

struct Head {
  int64_t seq = 0;         // 0: the chain is empty
  std::string chain_hash;  // lowercase hex, 64 characters
};

// The newest link of the chain (seq 0 if empty), without verifying anything.
Head CurrentHead(pqxx::connection& conn);

// Seal, then returns the head of the chain once it is durable: the transaction commits with
// synchronous_commit = on and has WAL of its own to flush (rekey.seal_audit_durably), so every
// link up to the head survives a server crash, even links that batches committed asynchronously.
// Record outside the database only a head this returned. Throws TransientError like Seal.
Head SealDurably(pqxx::connection& conn);

// "SEQ:HEX", as `rekey audit verify` prints it and --expect-head takes it.
std::string FormatHead(const Head& head);

// Parses "SEQ:HEX" as printed by `rekey audit verify`; throws ConfigError otherwise.
Head ParseHead(const std::string& text);

struct Finding {
  // altered, deleted, inserted, chain_broken, gap, head_mismatch: tampering;
  // unsealed: rows left unsealed longer than kMaxUnsealedMinutes (audit_id = the oldest).
  std::string kind;
  std::optional<int64_t> audit_id;
  std::optional<int64_t> seq;
  std::string detail;
};

struct Verification {
  int64_t rows_checked = 0;  // sealed audit rows whose digest was recomputed
  int64_t unsealed = 0;      // rows not sealed yet whose transaction may still have been running
  Head head;
  std::vector<Finding> findings;  // empty iff the audit log is intact

  bool ok() const { return findings.empty(); }
  // True iff a finding other than "unsealed" was made.
  bool tampered() const;
};

// Verifies the whole chain in one REPEATABLE READ snapshot, streaming (memory does not grow with
// the log). If `expect_head` is given, the chain must contain that seq with that hash. Unsealed
// rows whose transaction may still have been running at every seal are counted in `unsealed`;
// if any of them was written more than kMaxUnsealedMinutes before the snapshot, one "unsealed"
// finding names the oldest. Throws only for database errors.
Verification Verify(pqxx::connection& conn, const std::optional<Head>& expect_head = std::nullopt);

}  // namespace rekey::audit
