#include "common/error.h"

#include "common/error_table.h"

namespace rekey {

int ExitCodeFor(const std::exception& e) {
  const ErrorRule* rule = FindRekeyErrorRule(e);
  return rule ? ExitCodeOf(rule->error_class) : kExitFailure;
}

}  // namespace rekey
