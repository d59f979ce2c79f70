// Choosing a KMS provider by name (the --kms flag and rekey.keys.kms_provider).
#pragma once

#include <memory>
#include <string>

#include "kms/kms_client.h"

namespace rekey::kms {

// Returns a client for `provider` ("local"), configured from the environment read through
// `getenv`. Throws ConfigError for an unknown or not yet supported provider, or a provider whose
// configuration is missing or malformed (e.g. no master key for "local").
std::unique_ptr<KmsClient> MakeKmsClient(const std::string& provider,
                                         const GetenvFn& getenv = ProcessGetenv);

}  // namespace rekey::kms
