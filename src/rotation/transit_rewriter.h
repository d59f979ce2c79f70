// ValueRewriter (crypto/value_rewriter.h) for the vault-transit column codec: values are Vault
// Transit ciphertexts ("vault:vN:<base64>") in text columns, rewrapped inside Vault to the latest
// version of the job's Transit key. rekey never decrypts them and holds neither key nor plaintext.
//
// A value at or above the job's target version is kUnchanged. The others go to Vault together, in
// one RewrapValues call per RewriteBatch (TransitService splits it into Vault's batch_input
// requests), each with its derivation context when the job has an associated-data template. An
// item Vault refuses is kPoison with class "vault_rejected" and Vault's message (prefixed with the
// value's version, at most 500 bytes) as its detail; a value that is not a Transit ciphertext is
// kPoison with class "bad_prefix". A failure of the whole request throws, and then nothing of the
// batch may be written. from_key and to_key of a rewritten value are Transit key versions.
//
// OpenBatch, without Vault and without plaintext: a value at or above the target version is
// kOpened under its version (has_plaintext false); one below it kKeyMissing "below_target_version"
// (failed_key: its version); one that is not a Transit ciphertext kPoison "bad_prefix".
#pragma once

#include <string>
#include <vector>

#include "crypto/value_rewriter.h"
#include "jobs/job.h"
#include "rotation/transit_service.h"

namespace rekey::rotation {

// Throws KeyError unless Transit key `key_ref` (whose `derived` flag was read from Vault) fits a
// job with or without a derivation context: a derived key needs one for every value, and a
// non-derived key would silently ignore one, so a job could not bind values to their rows.
void RequireTransitKeyFits(const std::string& key_ref, bool derived, bool has_context);

// The Transit derivation context of a value: base64 of the rendered associated-data template.
std::string TransitDerivationContext(const jobs::JobDefinition& job, const std::string& column,
                                     const std::string& pk);

// Reads vault-transit job `job`'s Transit key and throws KeyError unless it fits the job
// (RequireTransitKeyFits) and has reached the job's target version; throws as TransitService does.
void CheckTransitKey(TransitService& service, const jobs::JobDefinition& job);

class TransitRewriter : public crypto::ValueRewriter {
 public:
  // `job` (a vault-transit job) and `service` must outlive the rewriter; `service` is called only
  // when a batch holds a value to rewrap.
  TransitRewriter(const jobs::JobDefinition& job, TransitClientSource service);

  KeyNaming key_naming() const override { return KeyNaming::kKeyInValue; }
  void RewriteBatch(const crypto::StoredValue* values, size_t count,
                    crypto::RewrittenValue* out) override;
  void OpenBatch(const crypto::StoredValue* values, size_t count,
                 crypto::OpenedValue* out) override;
  bool reads_stored_text() const override { return true; }

 private:
  const jobs::JobDefinition& job_;
  TransitClientSource service_;
  std::vector<TransitService::Item> items_;  // reused across batches
  std::vector<size_t> item_values_;          // items_[k] rewraps values[item_values_[k]]
};

}  // namespace rekey::rotation
