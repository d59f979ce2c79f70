#include "kms/kms_factory.h"

#include "common/error.h"
#include "kms/aws_credentials.h"
#include "kms/aws_kms.h"
#include "kms/http_transport.h"
#include "kms/local_kms.h"
#include "kms/resilient_kms.h"

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

}  // namespace

std::unique_ptr<KmsClient> MakeKmsClient(const std::string& provider, const GetenvFn& getenv) {
  if (provider == kLocalProvider) return std::make_unique<LocalKms>(getenv);
  if (provider == kAwsKmsProvider) return MakeAwsKms(getenv);
  if (provider == "vault-transit") {
    throw ConfigError(
        "KMS provider vault-transit is not supported yet; use --kms local or aws-kms");
  }
  throw ConfigError("unknown KMS provider '" + provider +
                    "'; expected one of: local, aws-kms, vault-transit");
}

}  // namespace rekey::kms
