// WorkerObserver: what a WorkerPool reports about its work as it happens, for metrics.
//
// The pool calls these from its claim loops (several threads at once), after the fact: a batch
// reported completed is committed. Implementations must be thread-safe, fast (no I/O) and must
// not throw. The pool runs exactly as before when no observer is set.
#pragma once

#include <cstdint>

namespace rekey::rotation {

enum class BatchOutcome {
  kCompleted,     // rows, checkpoint and audit row committed
  kLost,          // another worker owned the batch by then; nothing written
  kJobNotActive,  // the job was paused or cancelled meanwhile; batch handed back
  kReleased,      // processing failed; the batch was given back (or marked failed)
};
const char* BatchOutcomeName(BatchOutcome outcome);  // "completed", "lost", ...

struct BatchEvent {
  BatchOutcome outcome = BatchOutcome::kCompleted;
  int64_t rows_reencrypted = 0;
  int64_t rows_skipped = 0;
  int64_t rows_quarantined = 0;  // values that failed to decrypt, left untouched
  double duration_seconds = 0;   // meaningful for kCompleted only
};

struct GateEvent {
  bool passed = false;
  int64_t values_checked = 0;
  int64_t decrypt_errors = 0;
};

class WorkerObserver {
 public:
  virtual ~WorkerObserver() = default;
  virtual void OnBatch(const BatchEvent& event) = 0;
  virtual void OnGate(const GateEvent& event) = 0;
};

}  // namespace rekey::rotation
