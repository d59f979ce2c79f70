// A token bucket: `rate` tokens per second, at most `burst` saved up. It limits KMS calls (one
// token per call) and, in `rekey work --max-rows-per-second`, rows (one token per row).
// Reserve() takes tokens and says how long the caller must wait for them (zero while tokens
// remain); waiting callers queue fairly because each reservation pushes the next one later.
//
// Time comes from the caller. Thread-safety: Reserve() is thread-safe.
#pragma once

#include <chrono>
#include <mutex>

namespace rekey::kms {

class TokenBucket {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;

  // rate <= 0 means unlimited. burst < 1 is treated as 1.
  TokenBucket(double rate, double burst);

  // Takes one token; returns how long to wait before using it (zero iff one was available).
  std::chrono::nanoseconds Reserve(TimePoint now) { return Reserve(now, 1); }
  // Takes `tokens` tokens at once (a chunk of rows); returns how long to wait before using them.
  std::chrono::nanoseconds Reserve(TimePoint now, double tokens);
  // Gives back tokens reserved but not used (a chunk that held fewer rows than it reserved).
  void Refund(double tokens);

 private:
  const double rate_;
  const double burst_;
  std::mutex mu_;
  double tokens_;  // may go negative: tokens promised to callers still waiting
  TimePoint last_{};
  bool started_ = false;
};

}  // namespace rekey::kms
