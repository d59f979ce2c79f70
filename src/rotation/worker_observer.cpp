#include "rotation/worker_observer.h"

namespace rekey::rotation {

const char* BatchOutcomeName(BatchOutcome outcome) {
  switch (outcome) {
    case BatchOutcome::kCompleted:
      return "completed";
    case BatchOutcome::kLost:
      return "lost";
    case BatchOutcome::kJobNotActive:
      return "job_not_active";
    case BatchOutcome::kReleased:
      return "released";
  }
  return "unknown";
}

}  // namespace rekey::rotation
