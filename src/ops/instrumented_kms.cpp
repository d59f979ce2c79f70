#include "ops/instrumented_kms.h"

#include <algorithm>
#include <chrono>

#include "common/error.h"
#include "kms/resilient_kms.h"

namespace rekey::ops {

std::vector<KmsStatus> KmsWatch::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<KmsStatus> out;
  for (InstrumentedKms* c : clients_) {
    out.push_back({c->provider(), c->default_key_ref(), c->breaker_state()});
  }
  return out;
}

void KmsWatch::Add(InstrumentedKms* client) {
  std::lock_guard<std::mutex> lock(mu_);
  clients_.push_back(client);
}

void KmsWatch::Remove(InstrumentedKms* client) {
  std::lock_guard<std::mutex> lock(mu_);
  clients_.erase(std::remove(clients_.begin(), clients_.end(), client), clients_.end());
}

std::string KmsOutcome(const std::exception& e) {
  if (dynamic_cast<const TransientError*>(&e) != nullptr) return "transient_error";
  if (dynamic_cast<const KeyError*>(&e) != nullptr) return "key_error";
  return "error";
}

InstrumentedKms::InstrumentedKms(std::unique_ptr<kms::KmsClient> inner, Metrics& metrics,
                                 KmsWatch& watch)
    : inner_(std::move(inner)), metrics_(metrics), watch_(watch) {
  watch_.Add(this);
}

InstrumentedKms::~InstrumentedKms() {
  watch_.Remove(this);
}

template <typename Fn>
auto InstrumentedKms::Timed(const char* operation, Fn&& call) -> decltype(call()) {
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&start] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  try {
    auto result = call();
    metrics_.ObserveKmsCall(inner_->provider(), operation, "success", seconds());
    return result;
  } catch (const std::exception& e) {
    metrics_.ObserveKmsCall(inner_->provider(), operation, KmsOutcome(e), seconds());
    throw;
  }
}

kms::GeneratedDataKey InstrumentedKms::GenerateDataKey(uint32_t key_id) {
  return Timed("generate_data_key", [&] { return inner_->GenerateDataKey(key_id); });
}

kms::GeneratedDataKey InstrumentedKms::WrapDataKey(uint32_t key_id, const Secret& plaintext) {
  return Timed("wrap_data_key", [&] { return inner_->WrapDataKey(key_id, plaintext); });
}

Secret InstrumentedKms::UnwrapDataKey(uint32_t key_id, const std::string& kms_key_ref,
                                      const Bytes& wrapped) {
  return Timed("unwrap_data_key",
               [&] { return inner_->UnwrapDataKey(key_id, kms_key_ref, wrapped); });
}

kms::GeneratedDataKey InstrumentedKms::RewrapDataKey(uint32_t key_id,
                                                     const std::string& source_key_ref,
                                                     const Bytes& wrapped,
                                                     const std::string& destination_key_ref) {
  return Timed("rewrap_data_key", [&] {
    return inner_->RewrapDataKey(key_id, source_key_ref, wrapped, destination_key_ref);
  });
}

Bytes InstrumentedKms::EncryptBlob(const std::string& key_ref, const Secret& plaintext,
                                   const Bytes& associated_data) {
  return Timed("encrypt_blob",
               [&] { return inner_->EncryptBlob(key_ref, plaintext, associated_data); });
}

Secret InstrumentedKms::DecryptBlob(const std::string& key_ref, const Bytes& ciphertext,
                                    const Bytes& associated_data) {
  return Timed("decrypt_blob",
               [&] { return inner_->DecryptBlob(key_ref, ciphertext, associated_data); });
}

std::optional<kms::BreakerState> InstrumentedKms::breaker_state() const {
  if (auto* resilient = dynamic_cast<kms::ResilientKms*>(inner_.get())) return resilient->state();
  return std::nullopt;
}

}  // namespace rekey::ops
