// ResilientKms: a KmsClient decorator that makes a remote KMS safe to call from many workers.
//
//  * rate limit: a token bucket (calls per second, burst) shared by every thread of the process,
//    so a pool of workers does not trip the KMS's own throttling;
//  * retries: a TransientError (throttling, 5xx, timeouts) is retried up to max_attempts calls in
//    all, sleeping a "full jitter" backoff between them (uniform in [0, min(max_backoff,
//    base_backoff * 2^retry)]) so that throttled workers do not retry in lockstep;
//  * circuit breaker (circuit_breaker.h): after breaker_failures consecutive transient failures,
//    calls fail fast with TransientError for breaker_cool_down, then one probe is let through.
//
// Permanent errors (KeyError, ConfigError) pass through at once and are never retried. When all
// attempts fail, the last TransientError's message is kept and the attempt count added.
//
// Clock, sleeper and random seed are injectable for tests. Thread-safety: thread-safe if the inner
// client is.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>

#include "common/error.h"
#include "kms/circuit_breaker.h"
#include "kms/kms_client.h"
#include "kms/token_bucket.h"

namespace rekey::kms {

struct ResilienceOptions {
  double calls_per_second = 100;  // <= 0: unlimited
  double burst = 20;
  int max_attempts = 8;  // calls in all, the first included
  std::chrono::milliseconds base_backoff{50};
  std::chrono::milliseconds max_backoff{5000};
  int breaker_failures = 10;
  std::chrono::milliseconds breaker_cool_down{15000};
};

// Reads REKEY_KMS_CALLS_PER_SECOND, REKEY_KMS_MAX_ATTEMPTS, REKEY_KMS_BREAKER_FAILURES and
// REKEY_KMS_BREAKER_COOLDOWN_MS over the defaults. Throws ConfigError for a malformed value.
ResilienceOptions ResilienceOptionsFromEnv(const GetenvFn& getenv);

using SteadyClock = std::function<std::chrono::steady_clock::time_point()>;
using Sleeper = std::function<void(std::chrono::nanoseconds)>;

class ResilientKms : public KmsClient {
 public:
  ResilientKms(std::unique_ptr<KmsClient> inner, ResilienceOptions options,
               SteadyClock clock = std::chrono::steady_clock::now, Sleeper sleeper = nullptr,
               uint64_t seed = std::random_device{}());

  std::string provider() const override { return inner_->provider(); }
  std::string default_key_ref() const override { return inner_->default_key_ref(); }
  GeneratedDataKey GenerateDataKey(uint32_t key_id) override;
  GeneratedDataKey WrapDataKey(uint32_t key_id, const Secret& plaintext) override;
  Secret UnwrapDataKey(uint32_t key_id, const std::string& kms_key_ref,
                       const Bytes& wrapped) override;
  std::string Describe() override;
  GeneratedDataKey RewrapDataKey(uint32_t key_id, const std::string& source_key_ref,
                                 const Bytes& wrapped,
                                 const std::string& destination_key_ref) override;
  Bytes EncryptBlob(const std::string& key_ref, const Secret& plaintext,
                    const Bytes& associated_data) override;
  Secret DecryptBlob(const std::string& key_ref, const Bytes& ciphertext,
                     const Bytes& associated_data) override;
  std::string CanonicalKeyRef(const std::string& key_ref) override;
  // False iff the breaker is open (half-open counts as available: a probe may go).
  bool Available() const override { return state() != BreakerState::kOpen; }

  BreakerState state() const { return breaker_.state(clock_()); }
  KmsClient& inner() { return *inner_; }
  // Calls made to the inner client, and how many of them were retries (for tests and metrics).
  uint64_t attempts() const { return attempts_.load(); }
  uint64_t retries() const { return retries_.load(); }

  // Runs `call` under the rate limit, retries and breaker (for provider-specific operations such
  // as AwsKmsClient::ReEncrypt).
  template <typename Fn>
  auto Run(const char* what, Fn&& call) -> decltype(call());

 private:
  void BeforeAttempt(const char* what, int attempt, const std::string& last_error);
  bool AfterTransient(int attempt);  // true iff another attempt follows (after sleeping)
  [[noreturn]] void GiveUp(const char* what, int attempts, const std::string& last_error);

  std::unique_ptr<KmsClient> inner_;
  const ResilienceOptions options_;
  SteadyClock clock_;
  Sleeper sleeper_;
  TokenBucket bucket_;
  CircuitBreaker breaker_;
  std::mutex rng_mu_;
  std::mt19937_64 rng_;
  std::atomic<uint64_t> attempts_{0};
  std::atomic<uint64_t> retries_{0};
};

template <typename Fn>
auto ResilientKms::Run(const char* what, Fn&& call) -> decltype(call()) {
  std::string last_error;
  for (int attempt = 1;; attempt++) {
    BeforeAttempt(what, attempt, last_error);
    try {
      auto result = call();
      breaker_.OnSuccess();
      return result;
    } catch (const TransientError& e) {
      breaker_.OnFailure(clock_());
      last_error = e.what();
      if (!AfterTransient(attempt)) GiveUp(what, attempt, last_error);
    } catch (const Error&) {
      breaker_.OnSuccess();  // the service answered: it is healthy, the request was not
      throw;
    } catch (...) {
      breaker_.OnFailure(clock_());
      throw;
    }
  }
}

}  // namespace rekey::kms
