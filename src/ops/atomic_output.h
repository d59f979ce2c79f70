// AtomicOutputFile: a report file that appears whole or not at all.
//
// The bytes go to a temporary file created in the destination's own directory (so the final
// rename stays on one file system and is atomic); Commit() renames it over the destination. A
// file never committed -- an error, a refusal, an exception -- is removed by the destructor, so a
// failed `rekey report --output F` leaves neither F nor a partial temporary file behind, and an
// existing F stays as it was.
//
// Thread-safety: an object is used by one thread at a time.
#pragma once

#include <cstdio>
#include <string>

namespace rekey::ops {

class AtomicOutputFile {
 public:
  // Creates the temporary file at once, so an unwritable destination is found before any work is
  // done. Throws ConfigError (one line naming the path and the system's reason) if the directory
  // does not exist or is not writable, or if `path` is a directory.
  explicit AtomicOutputFile(std::string path);
  ~AtomicOutputFile();  // removes the temporary file unless committed
  AtomicOutputFile(const AtomicOutputFile&) = delete;
  AtomicOutputFile& operator=(const AtomicOutputFile&) = delete;

  // The open temporary file; write through it before Commit().
  std::FILE* stream() { return file_; }
  const std::string& path() const { return path_; }

  // Flushes, syncs and closes the temporary file, then renames it to the destination. Throws
  // ConfigError (and removes the temporary file) if any step fails, e.g. the disk is full.
  void Commit();

 private:
  std::string path_;
  std::string temp_path_;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

}  // namespace rekey::ops
