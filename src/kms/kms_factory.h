// Choosing a KMS provider by name (the --kms flag and rekey.keys.kms_provider).
#pragma once

#include <memory>
#include <string>

#include "kms/kms_client.h"

namespace rekey::kms {

// Returns a client for `provider`, configured from the environment read through `getenv`:
//   "local"          LocalKms (local_kms.h)
//   "aws-kms"        AwsKmsClient (aws_kms.h) over libcurl, inside ResilientKms (resilient_kms.h)
//   "vault-transit"  VaultTransitClient (vault_transit.h) over libcurl, inside ResilientKms
// Construction makes no network call. Throws ConfigError for an unknown provider, or a provider
// whose configuration is missing or malformed (e.g. no master key for "local", no region for
// "aws-kms", no VAULT_ADDR for "vault-transit").
std::unique_ptr<KmsClient> MakeKmsClient(const std::string& provider,
                                         const GetenvFn& getenv = ProcessGetenv);

}  // namespace rekey::kms
