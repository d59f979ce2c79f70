// Fernet keys in the form applications configure them (docs/FORMAT.md, "fernet"): one key is the
// base64url text of 32 bytes (Fernet.generate_key()); a MultiFernet configuration is a list of
// them, the primary first, comma-separated as Airflow's fernet_key and Django's settings take it
// (newlines accepted too). rekey keeps a Fernet key in its keyring as the 32-byte data key it is
// (signing 16 || encryption 16), so `rekey keys import --format fernet` only reads the form.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/secret.h"

namespace rekey::keyring {

// The keys of a Fernet key list, in order. Throws KeyError (one line, never echoing key
// material) unless every item is a Fernet key and there is at least one.
std::vector<Secret> ParseFernetKeyList(std::string_view text);

// The list in the applications' form: "k1,k2", primary first.
std::string FernetKeyList(const std::vector<const Secret*>& keys);

}  // namespace rekey::keyring
