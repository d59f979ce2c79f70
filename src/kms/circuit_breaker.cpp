#include "kms/circuit_breaker.h"

namespace rekey::kms {

const char* BreakerStateName(BreakerState state) {
  switch (state) {
    case BreakerState::kClosed:
      return "closed";
    case BreakerState::kOpen:
      return "open";
    case BreakerState::kHalfOpen:
      return "half-open";
  }
  return "?";
}

CircuitBreaker::CircuitBreaker(int failure_threshold, std::chrono::milliseconds cool_down)
    : threshold_(failure_threshold < 1 ? 1 : failure_threshold), cool_down_(cool_down) {}

bool CircuitBreaker::Allow(TimePoint now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (state_ == BreakerState::kOpen && now >= opened_at_ + cool_down_) {
    state_ = BreakerState::kHalfOpen;
    probe_in_flight_ = false;
  }
  switch (state_) {
    case BreakerState::kClosed:
      return true;
    case BreakerState::kOpen:
      return false;
    case BreakerState::kHalfOpen:
      if (probe_in_flight_) return false;
      probe_in_flight_ = true;
      return true;
  }
  return false;
}

void CircuitBreaker::OnSuccess() {
  std::lock_guard<std::mutex> lock(mu_);
  state_ = BreakerState::kClosed;
  failures_ = 0;
  probe_in_flight_ = false;
}

void CircuitBreaker::OnFailure(TimePoint now) {
  std::lock_guard<std::mutex> lock(mu_);
  failures_++;
  if (state_ == BreakerState::kHalfOpen ||
      (state_ == BreakerState::kClosed && failures_ >= threshold_)) {
    state_ = BreakerState::kOpen;
    opened_at_ = now;
    probe_in_flight_ = false;
  }
  // Already open: a call admitted before it opened failed late; the cool-down stands.
}

BreakerState CircuitBreaker::state(TimePoint now) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (state_ == BreakerState::kOpen && now >= opened_at_ + cool_down_) {
    return BreakerState::kHalfOpen;
  }
  return state_;
}

CircuitBreaker::TimePoint CircuitBreaker::reopens_at() const {
  std::lock_guard<std::mutex> lock(mu_);
  return opened_at_ + cool_down_;
}

int CircuitBreaker::consecutive_failures() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failures_;
}

}  // namespace rekey::kms
