#include "kms/resilient_kms.h"

#include <algorithm>
#include <thread>

namespace rekey::kms {

ResilienceOptions ResilienceOptionsFromEnv(const GetenvFn& getenv) {
  ResilienceOptions o;
  o.calls_per_second = static_cast<double>(GetenvInteger(
      getenv, "REKEY_KMS_CALLS_PER_SECOND", static_cast<int64_t>(o.calls_per_second), 1));
  o.max_attempts =
      static_cast<int>(GetenvInteger(getenv, "REKEY_KMS_MAX_ATTEMPTS", o.max_attempts, 1));
  o.breaker_failures =
      static_cast<int>(GetenvInteger(getenv, "REKEY_KMS_BREAKER_FAILURES", o.breaker_failures, 1));
  o.breaker_cool_down = std::chrono::milliseconds(
      GetenvInteger(getenv, "REKEY_KMS_BREAKER_COOLDOWN_MS", o.breaker_cool_down.count(), 1));
  return o;
}

ResilientKms::ResilientKms(std::unique_ptr<KmsClient> inner, ResilienceOptions options,
                           SteadyClock clock, Sleeper sleeper, uint64_t seed)
    : inner_(std::move(inner)),
      options_(options),
      clock_(std::move(clock)),
      sleeper_(sleeper ? std::move(sleeper) : Sleeper([](std::chrono::nanoseconds d) {
        std::this_thread::sleep_for(d);
      })),
      bucket_(options.calls_per_second, options.burst),
      breaker_(options.breaker_failures, options.breaker_cool_down),
      rng_(seed) {}

void ResilientKms::BeforeAttempt(const char* what, int attempt, const std::string& last_error) {
  if (!breaker_.Allow(clock_())) {
    auto wait = std::chrono::duration_cast<std::chrono::seconds>(breaker_.reopens_at() - clock_());
    throw TransientError(
        std::string("KMS ") + what + " not attempted: the circuit breaker is open after " +
        std::to_string(breaker_.consecutive_failures()) + " consecutive failures" +
        (last_error.empty() ? "" : " (last: " + last_error + ")") + "; next probe in " +
        std::to_string(std::max<int64_t>(wait.count(), 0)) + "s");
  }
  std::chrono::nanoseconds wait = bucket_.Reserve(clock_());
  if (wait.count() > 0) sleeper_(wait);
  attempts_++;
  if (attempt > 1) retries_++;
}

bool ResilientKms::AfterTransient(int attempt) {
  if (attempt >= options_.max_attempts) return false;
  // Full jitter: uniform in [0, min(max, base * 2^(attempt-1))].
  int64_t cap = options_.base_backoff.count();
  for (int i = 1; i < attempt && cap < options_.max_backoff.count(); i++) cap *= 2;
  cap = std::min<int64_t>(cap, options_.max_backoff.count());
  int64_t sleep_ms;
  {
    std::lock_guard<std::mutex> lock(rng_mu_);
    sleep_ms = std::uniform_int_distribution<int64_t>(0, std::max<int64_t>(cap, 0))(rng_);
  }
  if (sleep_ms > 0) sleeper_(std::chrono::milliseconds(sleep_ms));
  return true;
}

void ResilientKms::GiveUp(const char* what, int attempts, const std::string& last_error) {
  throw TransientError(std::string("KMS ") + what + " failed " + std::to_string(attempts) +
                       " times in a row; last error: " + last_error);
}

GeneratedDataKey ResilientKms::GenerateDataKey(uint32_t key_id) {
  return Run("GenerateDataKey", [&] { return inner_->GenerateDataKey(key_id); });
}

GeneratedDataKey ResilientKms::WrapDataKey(uint32_t key_id, const Secret& plaintext) {
  return Run("WrapDataKey", [&] { return inner_->WrapDataKey(key_id, plaintext); });
}

Secret ResilientKms::UnwrapDataKey(uint32_t key_id, const std::string& kms_key_ref,
                                   const Bytes& wrapped) {
  return Run("UnwrapDataKey", [&] { return inner_->UnwrapDataKey(key_id, kms_key_ref, wrapped); });
}

GeneratedDataKey ResilientKms::RewrapDataKey(uint32_t key_id, const std::string& source_key_ref,
                                             const Bytes& wrapped,
                                             const std::string& destination_key_ref) {
  return Run("RewrapDataKey", [&] {
    return inner_->RewrapDataKey(key_id, source_key_ref, wrapped, destination_key_ref);
  });
}

std::string ResilientKms::CanonicalKeyRef(const std::string& key_ref) {
  return Run("CanonicalKeyRef", [&] { return inner_->CanonicalKeyRef(key_ref); });
}

Bytes ResilientKms::EncryptBlob(const std::string& key_ref, const Secret& plaintext,
                                const Bytes& associated_data) {
  return Run("EncryptBlob",
             [&] { return inner_->EncryptBlob(key_ref, plaintext, associated_data); });
}

Secret ResilientKms::DecryptBlob(const std::string& key_ref, const Bytes& ciphertext,
                                 const Bytes& associated_data) {
  return Run("DecryptBlob",
             [&] { return inner_->DecryptBlob(key_ref, ciphertext, associated_data); });
}

std::string ResilientKms::Describe() {
  return Run("Describe", [&] { return inner_->Describe(); });
}

}  // namespace rekey::kms
