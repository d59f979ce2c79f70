#include "common/error.h"

namespace rekey {

int ExitCodeFor(const std::exception& e) {
  if (dynamic_cast<const ConfigError*>(&e)) return kExitUsage;
  if (dynamic_cast<const KeyError*>(&e)) return kExitKey;
  if (dynamic_cast<const StateError*>(&e)) return kExitState;
  if (dynamic_cast<const TransientError*>(&e)) return kExitTransient;
  return kExitFailure;
}

}  // namespace rekey
