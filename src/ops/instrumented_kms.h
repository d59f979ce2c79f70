// InstrumentedKms: a KmsClient decorator that counts and times every call for Metrics
// (rekey_kms_requests_total, rekey_kms_request_duration_seconds) and exposes the breaker state of
// the client it wraps (when that is a ResilientKms) for /readyz and rekey_kms_breaker_state.
//
// KmsWatch lists the live InstrumentedKms of a process, so the health and metrics endpoints can
// ask each provider for its state without owning the clients.
//
// Thread-safety: both classes are thread-safe (the inner client must be, as every KmsClient is).
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "kms/circuit_breaker.h"
#include "kms/kms_client.h"
#include "ops/metrics.h"

namespace rekey::ops {

class InstrumentedKms;

struct KmsStatus {
  std::string provider;
  std::string key_ref;                       // default_key_ref(): which KMS key, never material
  std::optional<kms::BreakerState> breaker;  // nullopt: the client has no breaker (local)
};

class KmsWatch {
 public:
  std::vector<KmsStatus> Snapshot() const;

 private:
  friend class InstrumentedKms;
  void Add(InstrumentedKms* client);
  void Remove(InstrumentedKms* client);

  mutable std::mutex mu_;
  std::vector<InstrumentedKms*> clients_;
};

// The outcome label of a KMS call that threw `e` (transient_error, key_error or error).
std::string KmsOutcome(const std::exception& e);

class InstrumentedKms : public kms::KmsClient {
 public:
  // `metrics` and `watch` must outlive this client.
  InstrumentedKms(std::unique_ptr<kms::KmsClient> inner, Metrics& metrics, KmsWatch& watch);
  ~InstrumentedKms() override;

  std::string provider() const override { return inner_->provider(); }
  std::string default_key_ref() const override { return inner_->default_key_ref(); }
  kms::GeneratedDataKey GenerateDataKey(uint32_t key_id) override;
  kms::GeneratedDataKey WrapDataKey(uint32_t key_id, const Secret& plaintext) override;
  Secret UnwrapDataKey(uint32_t key_id, const std::string& kms_key_ref,
                       const Bytes& wrapped) override;
  std::string Describe() override { return inner_->Describe(); }
  kms::GeneratedDataKey RewrapDataKey(uint32_t key_id, const std::string& source_key_ref,
                                      const Bytes& wrapped,
                                      const std::string& destination_key_ref) override;
  Bytes EncryptBlob(const std::string& key_ref, const Secret& plaintext,
                    const Bytes& associated_data) override;
  Secret DecryptBlob(const std::string& key_ref, const Bytes& ciphertext,
                     const Bytes& associated_data) override;
  std::string CanonicalKeyRef(const std::string& key_ref) override {
    return inner_->CanonicalKeyRef(key_ref);
  }
  // The inner client's: a worker with metrics on must still pause while the breaker is open.
  bool Available() const override { return inner_->Available(); }

  std::optional<kms::BreakerState> breaker_state() const;

 private:
  template <typename Fn>
  auto Timed(const char* operation, Fn&& call) -> decltype(call());

  std::unique_ptr<kms::KmsClient> inner_;
  Metrics& metrics_;
  KmsWatch& watch_;
};

}  // namespace rekey::ops
