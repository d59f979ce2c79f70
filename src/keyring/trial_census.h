// The census by trial decryption (issue #18 item 5): counting, per key, the values of a registered
// column whose format SQL cannot read a key from -- Fernet tokens name no key at all (trial
// decryption), cloak strings name theirs by a fingerprint that only the key's material gives. The
// SQL census (keyring/census.h, rekey.key_census and rekey.key_usage) reports such a column as
// unknown; here the worker reads its values through the codec boundary (crypto/value_rewriter.h),
// opens each with the candidate keys and counts the values per key, and those no key opens.
//
// Generic over codecs: each column's values are opened by its codec's rewriter
// (crypto/codec_rewriters.h, OpenBatch), and a codec joins by its name in TrialCodecs(); the values
// are read in the column's stored form (rekey.targets.encoding, json_path). Memory: one batch of
// values (a server-side cursor, FETCH kBatchRows at a time), never the table. Cost:
// docs/keyring.md, "Census by trial decryption".
//
// Every function runs inside the caller's transaction (one snapshot per column: the cursor's).
// Database failures are classified by db::Classified; the key source may throw what the KMS throws.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <pqxx/pqxx>

#include "common/secret.h"
#include "keyring/census.h"

namespace rekey::keyring {

// A data key's material by id (the worker's data-key cache); may throw NoSuchKeyError.
using TrialKeySource = std::function<Secret(uint32_t key_id)>;

// A registered column whose codec SQL cannot count by key.
struct TrialColumn {
  int64_t target_id = 0;
  std::string codec;                     // "fernet", "cloak", "rails", "lockbox"
  std::string relation;                  // the table, quoted (regclass text)
  std::string column;                    // its current name
  std::string encoding;                  // rekey.targets.encoding
  std::optional<std::string> json_path;  // text[] literal, or nullopt
  std::string ref;                       // schema.table.column as the census prints it
  // lockbox: the names its attribute keys derive from (Lockbox's defaults filled in)
  std::string lockbox_key_table;
  std::string lockbox_key_attribute;
};

struct TrialCount {
  int64_t values = 0;                  // non-NULL values read
  std::map<uint32_t, int64_t> by_key;  // values each candidate key opened
  int64_t unopened = 0;                // values no candidate key opens (or not of the format)
  std::map<std::string, int64_t> unopened_by_class;  // their quarantine classes
};

// The codecs counted here (the others SQL counts, or holds no keyring key's values).
const std::vector<std::string>& TrialCodecs();

// Whether `codec` (a rekey.targets.codec) is one of TrialCodecs().
bool IsTrialCodec(const std::string& codec);

// Every registered, resolvable column of a trial codec.
std::vector<TrialColumn> TrialColumns(pqxx::transaction_base& txn);

// Reads every value of `column` and counts it under the first of `candidates` that opens it.
TrialCount CountByTrial(pqxx::transaction_base& txn, const TrialColumn& column,
                        const std::vector<uint32_t>& candidates, const TrialKeySource& keys);

// The keys a value of key `key_id`'s scope may be under: every key of that scope not destroyed,
// key_id first.
std::vector<uint32_t> TrialCandidates(pqxx::transaction_base& txn, uint32_t key_id);

// KeyCensus (keyring/census.h), with each column it reports unknown that is a trial column
// counted here instead: listed as in_use with the values under `key_id`, or as unknown when some
// values open under no candidate key (`unknown` says how many), or not listed at all when it holds
// neither. Returns the refs of the columns so proven clear, which a retire or destroy of the key
// may pass (AcceptUnknownColumns: audited as key.unknown_accepted). `keys` is called only if a
// trial column is listed.
std::vector<std::string> KeyCensusByTrial(
    pqxx::transaction_base& txn, uint32_t key_id, const std::function<TrialKeySource()>& keys,
    const std::function<void(const CensusColumn&)>& on_column);

}  // namespace rekey::keyring
