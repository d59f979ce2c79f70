#include "kms/kms_factory.h"

#include "common/error.h"
#include "kms/local_kms.h"

namespace rekey::kms {

std::unique_ptr<KmsClient> MakeKmsClient(const std::string& provider, const GetenvFn& getenv) {
  if (provider == kLocalProvider) return std::make_unique<LocalKms>(getenv);
  if (provider == "aws-kms" || provider == "vault-transit") {
    throw ConfigError("KMS provider " + provider + " is not supported yet; use --kms local");
  }
  throw ConfigError("unknown KMS provider '" + provider +
                    "'; expected one of: local, aws-kms, vault-transit");
}

}  // namespace rekey::kms
