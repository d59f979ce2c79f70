#include "cli_support.h"

#include <csignal>
#include <mutex>
#include <utility>
#include <vector>

#include "db/connection.h"
#include "db/conninfo.h"
#include "kms/aws_kms.h"
#include "kms/kms_factory.h"
#include "kms/kms_registry.h"
#include "kms/resilient_kms.h"
#include "kms/vault_transit.h"

namespace rekey::cli {
namespace {
std::atomic<bool> g_stop{false};
extern "C" void OnStopSignal(int) {
  g_stop = true;
}
}  // namespace

std::string ConnInfo(const GlobalOptions& global) {
  return db::ResolveConnInfo(global.db);
}

std::unique_ptr<pqxx::connection> OpenDatabase(const GlobalOptions& global,
                                               const std::string& application_name) {
  return db::Connect(ConnInfo(global), application_name);
}

KeyServices::KeyServices(const std::string& conninfo, WrapClient wrap)
    : registry_(wrap ? std::make_unique<kms::KmsRegistry>([wrap](const std::string& provider) {
        return wrap(kms::MakeKmsClient(provider, kms::ProcessGetenv));
      })
                     : std::make_unique<kms::KmsRegistry>()),
      cache_(std::make_unique<keyring::DataKeyCache>(conninfo, registry_->Resolver(),
                                                     keyring::CacheOptionsFromEnv())) {}

std::function<bool()> KeyServices::Availability() {
  return [registry = registry_.get()] { return registry->Available(); };
}

rotation::DataKeySource KeyServices::Source() {
  return [cache = cache_.get()](uint32_t key_id) { return cache->Get(key_id); };
}

namespace {

// rotation's narrow view of Vault Transit (rotation/transit_service.h), served by Vault's client.
class VaultTransitService : public rotation::TransitService {
 public:
  explicit VaultTransitService(std::unique_ptr<kms::VaultTransitClient> client)
      : client_(std::move(client)) {}

  KeyInfo ReadKey(const std::string& key_ref) override {
    const kms::VaultTransitClient::KeyInfo info = client_->ReadTransitKey(key_ref);
    return {info.derived, info.latest_version};
  }

  std::vector<Result> RewrapValues(const std::string& key_ref,
                                   const std::vector<Item>& items) override {
    std::vector<kms::TransitRewrapItem> requests;
    requests.reserve(items.size());
    for (const Item& item : items) requests.push_back({item.ciphertext, item.context});
    std::vector<Result> results;
    results.reserve(items.size());
    for (auto& answer : client_->RewrapValues(key_ref, requests)) {
      results.push_back(
          {std::move(answer.ciphertext), std::move(answer.error), answer.key_version});
    }
    return results;
  }

 private:
  std::unique_ptr<kms::VaultTransitClient> client_;
};

}  // namespace

rotation::TransitClientSource LazyTransitClient() {
  struct Shared {
    std::mutex mu;
    std::unique_ptr<VaultTransitService> service;
  };
  auto shared = std::make_shared<Shared>();
  return [shared]() -> rotation::TransitService& {
    std::lock_guard<std::mutex> lock(shared->mu);
    if (!shared->service) {
      shared->service =
          std::make_unique<VaultTransitService>(std::make_unique<kms::VaultTransitClient>(
              kms::VaultTransitConfigFromEnv(kms::ProcessGetenv, /*require_key=*/false),
              std::make_shared<kms::CurlTransport>()));
    }
    return *shared->service;
  };
}

namespace {

// rotation's narrow view of AWS KMS (rotation/aws_kms_rewriter.h): AWS KMS's client, every call
// through the resilient layer's rate limit, retries and circuit breaker.
class AwsKmsBlobService : public rotation::AwsKmsService {
 public:
  explicit AwsKmsBlobService(std::unique_ptr<kms::KmsClient> client)
      : client_(std::move(client)),
        resilient_(dynamic_cast<kms::ResilientKms&>(*client_)),
        aws_(dynamic_cast<kms::AwsKmsClient&>(resilient_.inner())) {}

  std::string KeyArn(const std::string& key_ref) override {
    return resilient_.CanonicalKeyRef(key_ref);
  }

  Result ReEncrypt(const Bytes& blob, const std::string& destination_key_arn,
                   const std::string& context) override {
    kms::ReEncryptedBlob re = resilient_.Run(
        "ReEncrypt", [&] { return aws_.ReEncryptBlob(blob, "", destination_key_arn, context); });
    return {std::move(re.blob), std::move(re.source_key_arn), std::move(re.key_arn),
            std::move(re.refusal)};
  }

 private:
  std::unique_ptr<kms::KmsClient> client_;
  kms::ResilientKms& resilient_;
  kms::AwsKmsClient& aws_;
};

}  // namespace

rotation::AwsKmsSource LazyAwsKmsService() {
  struct Shared {
    std::mutex mu;
    std::unique_ptr<AwsKmsBlobService> service;
  };
  auto shared = std::make_shared<Shared>();
  return [shared]() -> rotation::AwsKmsService& {
    std::lock_guard<std::mutex> lock(shared->mu);
    if (!shared->service) {
      // The codec names its keys per job: the provider's default key is not needed.
      const kms::GetenvFn getenv = [](const char* name) -> std::optional<std::string> {
        std::optional<std::string> value = kms::ProcessGetenv(name);
        if (std::string_view(name) == kms::kAwsKmsKeyIdEnv && (!value || value->empty())) {
          return std::string("unused-by-the-aws-kms-codec");
        }
        return value;
      };
      shared->service =
          std::make_unique<AwsKmsBlobService>(kms::MakeKmsClient(kms::kAwsKmsProvider, getenv));
    }
    return *shared->service;
  };
}

const std::atomic<bool>& InstallStopSignals() {
  struct sigaction sa {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  return g_stop;
}

}  // namespace rekey::cli
