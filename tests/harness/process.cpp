#include "harness/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace rekey::testing {
namespace {

// argv and envp as execvpe wants them, built before fork because the child of a multi-threaded
// process may only call async-signal-safe functions.
class ExecArgs {
 public:
  ExecArgs(const std::vector<std::string>& argv, const EnvOverrides& env) : args_(argv) {
    if (args_.empty()) throw std::invalid_argument("RunProcess: empty argv");
    for (char** e = environ; *e != nullptr; ++e) {
      std::string entry(*e);
      std::string name = entry.substr(0, entry.find('='));
      if (env.count(name) == 0) env_.push_back(entry);
    }
    for (const auto& [name, value] : env) {
      if (value) env_.push_back(name + "=" + *value);
    }
    for (auto& a : args_) argv_.push_back(a.data());
    argv_.push_back(nullptr);
    for (auto& e : env_) envp_.push_back(e.data());
    envp_.push_back(nullptr);
  }
  char* const* argv() { return argv_.data(); }
  char* const* envp() { return envp_.data(); }

 private:
  std::vector<std::string> args_;
  std::vector<std::string> env_;
  std::vector<char*> argv_;
  std::vector<char*> envp_;
};

// In the forked child: restores default signal dispositions the test process may have changed
// (SIGPIPE is ignored by the harness) and execs. Only async-signal-safe calls.
[[noreturn]] void ExecChild(ExecArgs& args) {
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGPIPE, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  execvpe(args.argv()[0], args.argv(), args.envp());
  const char msg[] = "exec failed: ";
  (void)!write(2, msg, sizeof(msg) - 1);
  const char* why = strerror(errno);
  (void)!write(2, why, strlen(why));
  (void)!write(2, "\n", 1);
  _exit(127);
}

void FillStatus(int status, ProcessResult* r) {
  if (WIFEXITED(status)) {
    r->exit_code = WEXITSTATUS(status);
    r->term_signal = 0;
  } else if (WIFSIGNALED(status)) {
    r->exit_code = -1;
    r->term_signal = WTERMSIG(status);
  }
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void IgnoreSigpipeOnce() {
  static bool done = [] {
    signal(SIGPIPE, SIG_IGN);  // a child that exits without reading its stdin must not kill us
    return true;
  }();
  (void)done;
}

// The sanitizer's log_path ("<dir>/report") from ASAN_OPTIONS, or "" when reports go to stderr.
std::string SanitizerLogPath() {
  const char* opts = std::getenv("ASAN_OPTIONS");
  if (opts == nullptr) return "";
  std::string s(opts);
  const std::string key = "log_path=";
  for (size_t pos = 0; pos < s.size();) {
    size_t end = s.find(':', pos);
    if (end == std::string::npos) end = s.size();
    if (s.compare(pos, key.size(), key) == 0)
      return s.substr(pos + key.size(), end - pos - key.size());
    pos = end + 1;
  }
  return "";
}

}  // namespace

void RecordSigkilledChild(pid_t pid, int status) {
  if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) return;
  const std::string base = SanitizerLogPath();
  if (base.empty()) return;
  const std::string list = std::filesystem::path(base).parent_path() / "sigkilled.pids";
  // O_APPEND: children of several test processes are recorded into one list without a lock.
  int fd = open(list.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return;
  const std::string line = std::to_string(pid) + "\n";
  ssize_t ignored = write(fd, line.data(), line.size());
  (void)ignored;
  close(fd);
}

int WaitForPortFile(const std::string& path, int timeout_ms) {
  for (int waited = 0; waited < timeout_ms && access(path.c_str(), R_OK) != 0; waited += 50) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  int port = 0;
  std::ifstream(path) >> port;
  return port;
}

std::string MakeTempDir(const std::string& prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string base = (tmp != nullptr && *tmp != '\0') ? tmp : "/tmp";
  std::string templ = base + "/" + prefix + "XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    throw std::runtime_error("mkdtemp " + templ + ": " + std::strerror(errno));
  }
  return std::string(buf.data());
}

ProcessResult RunProcess(const std::vector<std::string>& argv, const EnvOverrides& env,
                         const std::string& stdin_data, int timeout_seconds) {
  IgnoreSigpipeOnce();
  ExecArgs args(argv, env);
  int in_pipe[2], out_pipe[2], err_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) != 0 || pipe2(out_pipe, O_CLOEXEC) != 0 ||
      pipe2(err_pipe, O_CLOEXEC) != 0) {
    throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  }
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    dup2(in_pipe[0], 0);
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    ExecChild(args);
  }
  close(in_pipe[0]);
  close(out_pipe[1]);
  close(err_pipe[1]);
  int in_fd = in_pipe[1];
  fcntl(in_fd, F_SETFL, O_NONBLOCK);
  if (stdin_data.empty()) {
    close(in_fd);
    in_fd = -1;
  }

  ProcessResult result;
  int out_fd = out_pipe[0], err_fd = err_pipe[0];
  size_t written = 0;
  bool reaped = false, killed = false;
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::seconds(timeout_seconds);
  Clock::time_point reaped_at;
  char buf[65536];
  while (out_fd >= 0 || err_fd >= 0 || in_fd >= 0) {
    pollfd fds[3];
    int n = 0;
    if (out_fd >= 0) fds[n++] = {out_fd, POLLIN, 0};
    if (err_fd >= 0) fds[n++] = {err_fd, POLLIN, 0};
    if (in_fd >= 0) fds[n++] = {in_fd, POLLOUT, 0};
    int rc = poll(fds, n, 100);
    if (rc < 0 && errno != EINTR) break;
    for (int i = 0; i < n && rc > 0; ++i) {
      if (fds[i].revents == 0) continue;
      int fd = fds[i].fd;
      if (fd == in_fd) {
        ssize_t w = write(in_fd, stdin_data.data() + written, stdin_data.size() - written);
        if (w > 0) written += static_cast<size_t>(w);
        if ((w < 0 && errno != EAGAIN && errno != EINTR) || written == stdin_data.size()) {
          close(in_fd);
          in_fd = -1;
        }
        continue;
      }
      ssize_t r = read(fd, buf, sizeof(buf));
      if (r > 0) {
        (fd == out_fd ? result.out : result.err).append(buf, static_cast<size_t>(r));
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        close(fd);
        (fd == out_fd ? out_fd : err_fd) = -1;
      }
    }
    if (!reaped) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        FillStatus(status, &result);
        reaped = true;
        reaped_at = Clock::now();
      } else if (!killed && Clock::now() > deadline) {
        kill(pid, SIGKILL);
        killed = true;
      }
    } else if (Clock::now() - reaped_at > std::chrono::seconds(2)) {
      break;  // a grandchild still holds the pipes open; do not wait for it
    }
  }
  for (int fd : {in_fd, out_fd, err_fd}) {
    if (fd >= 0) close(fd);
  }
  if (!reaped) {
    int status = 0;
    if (!killed && Clock::now() > deadline) kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    FillStatus(status, &result);
  }
  return result;
}

ProcessResult RunRekey(const std::vector<std::string>& args, const EnvOverrides& env,
                       const std::string& stdin_data) {
  std::vector<std::string> argv{REKEY_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunProcess(argv, env, stdin_data);
}

ChildProcess::ChildProcess(const std::vector<std::string>& argv, const EnvOverrides& env) {
  IgnoreSigpipeOnce();
  ExecArgs args(argv, env);
  dir_ = MakeTempDir("rekey-child-");
  out_path_ = dir_ + "/stdout";
  err_path_ = dir_ + "/stderr";
  int in_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int out_fd = open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int err_fd = open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (in_fd < 0 || out_fd < 0 || err_fd < 0) {
    throw std::runtime_error("ChildProcess: cannot open output files in " + dir_);
  }
  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid_ == 0) {
    dup2(in_fd, 0);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    ExecChild(args);
  }
  close(in_fd);
  close(out_fd);
  close(err_fd);
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && !reaped_) {
    kill(pid_, SIGKILL);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    RecordSigkilledChild(pid_, status);
  }
  std::error_code ec;
  if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
}

void ChildProcess::RecordStatus(int status) {
  FillStatus(status, &result_);
  reaped_ = true;
  if (sent_sigkill_) RecordSigkilledChild(pid_, status);
}

bool ChildProcess::Running() {
  if (reaped_) return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    RecordStatus(status);
    return false;
  }
  return true;
}

void ChildProcess::Signal(int sig) {
  if (reaped_) return;
  if (sig == SIGKILL) sent_sigkill_ = true;
  kill(pid_, sig);
}

ProcessResult ChildProcess::Wait(int timeout_seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
  while (Running()) {
    if (std::chrono::steady_clock::now() > deadline) {
      sent_sigkill_ = true;
      kill(pid_, SIGKILL);
      int status = 0;
      while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      RecordStatus(status);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  result_.out = ReadFile(out_path_);
  result_.err = ReadFile(err_path_);
  return result_;
}

}  // namespace rekey::testing
