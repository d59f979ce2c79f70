#include "kms/kms_factory.h"

#include "common/error.h"
#include "kms/aws_credentials.h"
#include "kms/aws_kms.h"
#include "kms/http_transport.h"
#include "kms/local_kms.h"
#include "kms/resilient_kms.h"
#include "kms/vault_transit.h"

namespace rekey::kms {

namespace {

std::unique_ptr<KmsClient> MakeAwsKms(const GetenvFn& getenv) {
  AwsKmsConfig config = AwsKmsConfigFromEnv(getenv);
  auto transport = std::make_shared<CurlTransport>();
  std::shared_ptr<AwsCredentialsProvider> credentials =
      MakeAwsCredentialsProvider(getenv, *transport, config.region);
  auto client = std::make_unique<AwsKmsClient>(std::move(config), transport, credentials);
  return std::make_unique<ResilientKms>(std::move(client), ResilienceOptionsFromEnv(getenv));
}

std::unique_ptr<KmsClient> MakeVaultTransit(const GetenvFn& getenv) {
  VaultTransitConfig config = VaultTransitConfigFromEnv(getenv);
  auto client =
      std::make_unique<VaultTransitClient>(std::move(config), std::make_shared<CurlTransport>());
  return std::make_unique<ResilientKms>(std::move(client), ResilienceOptionsFromEnv(getenv));
}

}  // namespace

std::unique_ptr<KmsClient> MakeKmsClient(const std::string& provider, const GetenvFn& getenv) {
  if (provider == kLocalProvider) return std::make_unique<LocalKms>(getenv);
  if (provider == kAwsKmsProvider) return MakeAwsKms(getenv);
  if (provider == kVaultTransitProvider) return MakeVaultTransit(getenv);
  throw ConfigError("unknown KMS provider '" + provider +
                    "'; expected one of: local, aws-kms, vault-transit");
}

}  // namespace rekey::kms
