#include "kms/circuit_breaker.h"

#include <gtest/gtest.h>

namespace rekey::kms {
namespace {

using std::chrono::milliseconds;

// One step of a scripted history: advance the clock, then do something, then check the state.
enum class Event { kAllow, kDeny, kSuccess, kFailure, kWait };
struct Step {
  Event event;
  int ms;  // for kWait: how long
  BreakerState after;
};

TEST(CircuitBreaker, TableOfHistories) {
  using B = BreakerState;
  using E = Event;
  struct History {
    const char* name;
    std::vector<Step> steps;
  };
  // Threshold 3, cool-down 1000 ms.
  const std::vector<History> histories = {
      {"stays closed below the threshold",
       {{E::kAllow, 0, B::kClosed},
        {E::kFailure, 0, B::kClosed},
        {E::kAllow, 0, B::kClosed},
        {E::kFailure, 0, B::kClosed}}},
      {"a success resets the count",
       {{E::kFailure, 0, B::kClosed},
        {E::kFailure, 0, B::kClosed},
        {E::kSuccess, 0, B::kClosed},
        {E::kFailure, 0, B::kClosed},
        {E::kFailure, 0, B::kClosed},
        {E::kAllow, 0, B::kClosed}}},
      {"opens at the threshold and denies",
       {{E::kFailure, 0, B::kClosed},
        {E::kFailure, 0, B::kClosed},
        {E::kFailure, 0, B::kOpen},
        {E::kDeny, 0, B::kOpen},
        {E::kWait, 999, B::kOpen},
        {E::kDeny, 0, B::kOpen}}},
      {"half-open after the cool-down admits one probe; success closes",
       {{E::kFailure, 0, B::kClosed},
        {E::kFailure, 0, B::kClosed},
        {E::kFailure, 0, B::kOpen},
        {E::kWait, 1000, B::kHalfOpen},
        {E::kAllow, 0, B::kHalfOpen},
        {E::kDeny, 0, B::kHalfOpen},
        {E::kSuccess, 0, B::kClosed},
        {E::kAllow, 0, B::kClosed},
        {E::kAllow, 0, B::kClosed}}},
      {"a failed probe re-opens for a full cool-down",
       {{E::kFailure, 0, B::kClosed},
        {E::kFailure, 0, B::kClosed},
        {E::kFailure, 0, B::kOpen},
        {E::kWait, 1500, B::kHalfOpen},
        {E::kAllow, 0, B::kHalfOpen},
        {E::kFailure, 0, B::kOpen},
        {E::kWait, 999, B::kOpen},
        {E::kDeny, 0, B::kOpen},
        {E::kWait, 1, B::kHalfOpen},
        {E::kAllow, 0, B::kHalfOpen},
        {E::kSuccess, 0, B::kClosed}}},
      {"late failures while open do not extend the cool-down",
       {{E::kFailure, 0, B::kClosed},
        {E::kFailure, 0, B::kClosed},
        {E::kFailure, 0, B::kOpen},
        {E::kWait, 500, B::kOpen},
        {E::kFailure, 0, B::kOpen},
        {E::kWait, 500, B::kHalfOpen}}},
  };
  for (const History& h : histories) {
    SCOPED_TRACE(h.name);
    CircuitBreaker breaker(3, milliseconds(1000));
    auto now = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
    for (size_t i = 0; i < h.steps.size(); i++) {
      const Step& s = h.steps[i];
      SCOPED_TRACE("step " + std::to_string(i));
      switch (s.event) {
        case E::kAllow:
          EXPECT_TRUE(breaker.Allow(now));
          break;
        case E::kDeny:
          EXPECT_FALSE(breaker.Allow(now));
          break;
        case E::kSuccess:
          breaker.OnSuccess();
          break;
        case E::kFailure:
          breaker.OnFailure(now);
          break;
        case E::kWait:
          now += milliseconds(s.ms);
          break;
      }
      EXPECT_STREQ(BreakerStateName(breaker.state(now)), BreakerStateName(s.after));
    }
  }
}

}  // namespace
}  // namespace rekey::kms
