// Running the rekey binary (and other programs) from tests.
//
// Children are started with fork/exec; their environment is the test process's environment with
// the given overrides applied. Nothing here is a shell: arguments are passed as they are.
// Thread-safety: every function may be called from several threads; a ChildProcess object is
// used by one thread at a time.
#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace rekey::testing {

struct ProcessResult {
  int exit_code = -1;   // exit status, or -1 if the child was killed by a signal
  int term_signal = 0;  // the signal that killed the child (SIGKILL after a timeout), else 0
  std::string out;
  std::string err;
};

// Environment changes for a child: name -> value to set, or nullopt to unset; everything else is
// inherited from the test process.
using EnvOverrides = std::map<std::string, std::optional<std::string>>;

// Runs argv (argv[0] is looked up in PATH unless it contains a '/') to completion, writing
// stdin_data to its stdin and capturing stdout and stderr through pipes drained by one poll loop,
// so large outputs cannot deadlock. After timeout_seconds the child is killed with SIGKILL and
// term_signal reports it. If the program cannot be executed, exit_code is 127 and err says why.
ProcessResult RunProcess(const std::vector<std::string>& argv, const EnvOverrides& env = {},
                         const std::string& stdin_data = "", int timeout_seconds = 120);

// Shorthand: RunProcess({REKEY_BINARY, args...}, env, stdin_data).
ProcessResult RunRekey(const std::vector<std::string>& args, const EnvOverrides& env = {},
                       const std::string& stdin_data = "");

// A background child (e.g. a worker). Its stdin is /dev/null; stdout and stderr go to files in a
// private temp dir (no pipe can fill up while nobody reads), read back by Wait().
class ChildProcess {
 public:
  // Throws std::runtime_error if the process cannot be started.
  ChildProcess(const std::vector<std::string>& argv, const EnvOverrides& env = {});
  ~ChildProcess();  // SIGKILLs and reaps the child if still running, removes the temp dir

  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  // True iff the child has not exited yet (non-blocking waitpid; reaps it if it has).
  bool Running();
  // Sends sig to the child; no-op once it has been reaped.
  void Signal(int sig);
  // Waits for the child to exit, SIGKILLing it after timeout_seconds, and returns its status and
  // captured output. May be called again; later calls return the same result.
  ProcessResult Wait(int timeout_seconds = 300);

  // The files the child writes to (readable while it runs, e.g. to wait for a log line).
  const std::string& stdout_path() const { return out_path_; }
  const std::string& stderr_path() const { return err_path_; }

 private:
  void RecordStatus(int status);

  pid_t pid_ = -1;
  bool reaped_ = false;
  bool sent_sigkill_ = false;
  std::string dir_;
  std::string out_path_;
  std::string err_path_;
  ProcessResult result_;
};

// Under the sanitizer harness (tests/sanitizers/run_ctest.sh, which sets log_path): records in
// <log dir>/sigkilled.pids a child the test SIGKILLed on purpose (`status` is its wait status), so
// the harness can tell a leak check that this kill interrupted from a finding. No-op otherwise.
void RecordSigkilledChild(pid_t pid, int status);

// Creates a fresh directory "<$TMPDIR or /tmp>/<prefix>XXXXXX" (mode 0700) and returns its path.
// Throws std::runtime_error on failure.
std::string MakeTempDir(const std::string& prefix);

// Waits up to `timeout_ms` for a test server started with --port-file to write `path`, and
// returns the port it wrote, or 0 iff none appeared (the server did not start).
int WaitForPortFile(const std::string& path, int timeout_ms = 30000);

}  // namespace rekey::testing
