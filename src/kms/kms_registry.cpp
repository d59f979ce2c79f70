#include "kms/kms_registry.h"

#include "kms/kms_factory.h"

namespace rekey::kms {

KmsRegistry::KmsRegistry(GetenvFn getenv)
    : factory_([getenv = std::move(getenv)](const std::string& provider) {
        return MakeKmsClient(provider, getenv);
      }) {}

KmsRegistry::KmsRegistry(Factory factory) : factory_(std::move(factory)) {}

KmsClient& KmsRegistry::Get(const std::string& provider) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = clients_.find(provider);
  if (it != clients_.end()) return *it->second;
  std::unique_ptr<KmsClient> client = factory_(provider);
  KmsClient& ref = *client;
  clients_[provider] = std::move(client);
  return ref;
}

void KmsRegistry::Add(std::unique_ptr<KmsClient> client) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string name = client->provider();
  clients_[name] = std::move(client);
}

bool KmsRegistry::Available() {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& entry : clients_) {
    if (!entry.second->Available()) return false;
  }
  return true;
}

std::function<KmsClient&(const std::string&)> KmsRegistry::Resolver() {
  return [this](const std::string& provider) -> KmsClient& { return Get(provider); };
}

}  // namespace rekey::kms
