// KmsRegistry: one KmsClient per provider name, built on first use. The data-key cache resolves
// each key's rekey.keys.kms_provider through it, so one process can read keys wrapped by
// different providers (e.g. during a move from "local" to "aws-kms").
//
// A provider whose construction fails (ConfigError: missing environment) is not remembered: the
// error reaches the caller that needed it, and the next Get() tries again.
//
// Thread-safety: Get() is thread-safe; returned references stay valid for the registry's lifetime.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "kms/kms_client.h"

namespace rekey::kms {

class KmsRegistry {
 public:
  using Factory = std::function<std::unique_ptr<KmsClient>(const std::string& provider)>;

  // Builds clients with MakeKmsClient(provider, getenv).
  explicit KmsRegistry(GetenvFn getenv = ProcessGetenv);
  // Builds clients with `factory` (tests).
  explicit KmsRegistry(Factory factory);

  KmsClient& Get(const std::string& provider);
  // Adds (or replaces) the client for client->provider(). Replacing invalidates references to the
  // old one, so do it before sharing the registry.
  void Add(std::unique_ptr<KmsClient> client);
  // True iff every client built so far is Available() (no open circuit breaker): the workers'
  // "may I claim?" seam (rotation::WorkerOptions::kms_available).
  bool Available();
  // A resolver bound to this registry, for keyring::DataKeyCache.
  std::function<KmsClient&(const std::string&)> Resolver();

 private:
  Factory factory_;
  std::mutex mu_;  // guards clients_; held while building one (construction makes no network call)
  std::map<std::string, std::unique_ptr<KmsClient>> clients_;
};

}  // namespace rekey::kms
