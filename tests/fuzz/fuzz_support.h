// Shared pieces of the libFuzzer targets in tests/fuzz (docs/testing.md).
//
// Every target defines LLVMFuzzerTestOneInput and accepts only clean outcomes: a return, or a
// rekey::Error (the typed errors rekey's callers handle). Any other exception escapes the target,
// which libFuzzer reports as a crash (and replay_main.cpp as a failure); a broken invariant calls
// FuzzCheck, which aborts.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <functional>
#include <string>
#include <utility>

#include <unistd.h>

#include "common/error.h"
#include "common/log.h"
#include "kms/http_transport.h"

namespace rekey::fuzz {

// Aborts with `what` unless `ok`: an invariant the code under test promises was broken.
inline void FuzzCheck(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz invariant broken: %s\n", what);
    std::abort();
  }
}

// Reads the fuzz input front to back; past the end every read yields zeros / empty strings, so a
// short input is still a valid (if boring) script.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t Uint16() {
    uint16_t lo = Byte();
    return static_cast<uint16_t>(lo | (Byte() << 8));
  }
  // Up to `n` bytes.
  std::string Bytes(size_t n) {
    n = std::min(n, size_ - pos_);
    std::string out(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return out;
  }
  std::string Rest() { return Bytes(size_ - pos_); }
  bool empty() const { return pos_ >= size_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// The HTTP statuses a script can choose from (one byte indexes this table, modulo its size): the
// ones providers classify, plus unusual ones.
inline long StatusFor(uint8_t selector) {
  static const long kStatuses[] = {200, 200, 200, 204, 400, 401, 403, 404,
                                   412, 429, 473, 500, 502, 503, 504, 301};
  return kStatuses[selector % (sizeof(kStatuses) / sizeof(kStatuses[0]))];
}

// An HttpTransport that answers from a script taken from the fuzz input: each entry is
// [status selector][body length, 2 bytes little-endian][body]. When the script is used up, it
// answers with `fallback` (a well-formed reply for the request), so the fuzz bytes can aim at any
// call of a multi-call operation. It never touches the network.
class ScriptedTransport : public kms::HttpTransport {
 public:
  using Fallback = std::function<kms::HttpResponse(const kms::HttpRequest&)>;

  ScriptedTransport(Reader* script, Fallback fallback)
      : script_(script), fallback_(std::move(fallback)) {}

  kms::HttpResponse Post(const kms::HttpRequest& request) override {
    ++calls_;
    // Bounded, so a script cannot make an operation loop (none should, but a fuzzer must end).
    FuzzCheck(calls_ < 64, "more than 64 HTTP calls for one operation");
    if (script_->empty()) return fallback_(request);
    kms::HttpResponse response;
    const uint8_t selector = script_->Byte();
    response.status = StatusFor(selector);
    response.body = script_->Bytes(script_->Uint16());
    if (selector & 0x80) {
      // The header AWS puts the exception name in; the body's first word stands in for it.
      response.headers.emplace_back("x-amzn-errortype", response.body.substr(0, 40));
    }
    return response;
  }

 private:
  Reader* script_;
  Fallback fallback_;
  int calls_ = 0;
};

inline kms::HttpResponse Reply(long status, std::string body) {
  kms::HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

// A file in $TMPDIR (or /tmp) holding `content`, removed when the object is destroyed: a static
// one goes when the process exits (libFuzzer and replay_main.cpp both exit normally).
class TempFile {
 public:
  TempFile(const std::string& name, const std::string& content) {
    const char* tmp = std::getenv("TMPDIR");
    path_ = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/rekey-fuzz-" + name +
            "-" + std::to_string(getpid());
    std::ofstream(path_) << content;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Log lines (token obtained, renewed...) cost more than the parsing under test and would flood
// the output; only errors are written.
inline void QuietLogs() {
  static const bool quiet = [] {
    log::SetMinLevel(log::Level::kError);
    return true;
  }();
  (void)quiet;
}

// Runs `fn`; a rekey::Error is a clean outcome, anything else propagates.
template <typename Fn>
void Guarded(Fn&& fn) {
  try {
    fn();
  } catch (const rekey::Error&) {
  }
}

}  // namespace rekey::fuzz
