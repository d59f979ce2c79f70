#include "commands.h"

namespace rekey::cli {

void AddStatusCommand(CLI::App& app, GlobalOptions& global) {
  (void)app;
  (void)global;
}

}  // namespace rekey::cli
