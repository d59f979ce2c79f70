// Verification gates: when a rollout stage's batches are all done, a worker decrypts a sample of
// the rows moved so far (every row of the canary) and records the result with rekey.record_gate,
// which decides whether the job waits for approval, sweeps, or pauses.
#pragma once

#include <pqxx/pqxx>

#include <cstdint>
#include <optional>
#include <string>

#include "rotation/batch_rotator.h"

namespace rekey::rotation {

struct GateOutcome {
  int64_t job_id = 0;
  int stage_no = 0;
  int64_t values_checked = 0;
  int64_t decrypt_errors = 0;
  bool passed = false;
  std::string job_state;     // after the gate: awaiting_approval, active (sweeping) or paused
  std::string state_reason;  // the job's reason line, for logs
};

// Verifies one stage waiting for its gate (of `job`, or of any job), or returns nullopt when no
// stage waits. The job row stays locked while the sample is read, so two workers never verify
// the same stage. Throws on database or key errors (nothing recorded then).
std::optional<GateOutcome> RunNextGate(pqxx::connection& conn, std::optional<int64_t> job,
                                       const DataKeySource& keys, const std::string& worker_id);

}  // namespace rekey::rotation
