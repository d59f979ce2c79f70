#include "commands.h"

namespace rekey::cli {

void AddWorkCommand(CLI::App& app, GlobalOptions& global) {
  (void)app;
  (void)global;
}

}  // namespace rekey::cli
