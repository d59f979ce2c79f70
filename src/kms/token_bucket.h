// A token bucket limiting the rate of KMS calls: `rate` tokens per second, at most `burst` saved
// up. Reserve() takes a token and says how long the caller must wait for it (zero while tokens
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
  std::chrono::nanoseconds Reserve(TimePoint now);

 private:
  const double rate_;
  const double burst_;
  std::mutex mu_;
  double tokens_;  // may go negative: tokens promised to callers still waiting
  TimePoint last_{};
  bool started_ = false;
};

}  // namespace rekey::kms
