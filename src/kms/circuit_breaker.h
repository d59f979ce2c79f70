// A circuit breaker for calls to a remote KMS: after `failure_threshold` consecutive transient
// failures it opens and fails calls fast (no request leaves the process) for `cool_down`; then it
// is half-open and lets one probe call through: success closes it, failure re-opens it for
// another cool-down. Permanent errors (access denied, disabled key) say nothing about the
// service's health and are reported as successes of the transport (OnSuccess).
//
//   closed --N consecutive failures--> open --cool_down elapsed--> half-open
//   half-open --probe succeeds--> closed      half-open --probe fails--> open
//
// Time comes from the caller (`now` arguments), so the state machine is tested without sleeping.
// Thread-safety: all methods are thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>

namespace rekey::kms {

enum class BreakerState { kClosed, kOpen, kHalfOpen };
const char* BreakerStateName(BreakerState state);  // "closed", "open", "half-open"

class CircuitBreaker {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;

  CircuitBreaker(int failure_threshold, std::chrono::milliseconds cool_down);

  // Returns true iff a call may proceed now. In half-open, true for exactly one caller (the probe)
  // until that probe reports back.
  bool Allow(TimePoint now);
  void OnSuccess();
  void OnFailure(TimePoint now);

  BreakerState state(TimePoint now) const;
  // When an open breaker lets the next probe through (meaningful only while open).
  TimePoint reopens_at() const;
  int consecutive_failures() const;

 private:
  const int threshold_;
  const std::chrono::milliseconds cool_down_;
  mutable std::mutex mu_;
  BreakerState state_ = BreakerState::kClosed;  // kOpen may have become half-open by the clock
  int failures_ = 0;
  TimePoint opened_at_{};
  bool probe_in_flight_ = false;
};

}  // namespace rekey::kms
