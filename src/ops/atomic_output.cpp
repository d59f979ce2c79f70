#include "ops/atomic_output.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "common/error.h"

namespace rekey::ops {
namespace {

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

[[noreturn]] void Refuse(const std::string& path, const std::string& why) {
  throw ConfigError("cannot write the report to " + path + ": " + why +
                    "; choose a writable path with --output");
}

}  // namespace

AtomicOutputFile::AtomicOutputFile(std::string path) : path_(std::move(path)) {
  if (path_.empty() || path_.back() == '/') Refuse(path_, "it names a directory");
  struct stat st;
  if (::stat(path_.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    Refuse(path_, "it is a directory");
  }
  const std::string dir = DirectoryOf(path_);
  std::string name = path_.substr(path_.rfind('/') == std::string::npos ? 0 : path_.rfind('/') + 1);
  std::string pattern = dir + "/." + name + ".tmp-XXXXXX";
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  const int fd = ::mkstemp(buffer.data());
  if (fd < 0) Refuse(path_, std::strerror(errno));
  temp_path_ = buffer.data();
  // mkstemp creates 0600; a report is no secret, so it gets the permissions a plain file would.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  ::fchmod(fd, 0666 & ~mask);
  file_ = ::fdopen(fd, "wb");
  if (file_ == nullptr) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    ::unlink(temp_path_.c_str());
    Refuse(path_, why);
  }
}

AtomicOutputFile::~AtomicOutputFile() {
  if (committed_) return;
  if (file_ != nullptr) std::fclose(file_);
  ::unlink(temp_path_.c_str());
}

void AtomicOutputFile::Commit() {
  std::string why;
  if (std::fflush(file_) != 0 || ::fsync(::fileno(file_)) != 0) why = std::strerror(errno);
  if (std::fclose(file_) != 0 && why.empty()) why = std::strerror(errno);
  file_ = nullptr;
  if (why.empty() && ::rename(temp_path_.c_str(), path_.c_str()) != 0) why = std::strerror(errno);
  if (!why.empty()) {
    ::unlink(temp_path_.c_str());
    Refuse(path_, why);
  }
  committed_ = true;
}

}  // namespace rekey::ops
