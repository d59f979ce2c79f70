// ValueRewriter (crypto/value_rewriter.h) for the aws-kms column codec: values are AWS KMS
// ciphertext blobs (an application called KMS Encrypt on each small secret), in bytea columns or
// as base64 text (decoded before and encoded after the rewriter, rotation/stored_form.h). They are
// moved inside KMS with ReEncrypt to the job's destination key (a rollback: back to its source
// key), so rekey never holds a plaintext nor a key.
//
// A blob names its key only to KMS: its cleartext header holds KMS's backing-key id (HBKID), not
// the key ARN (docs/kms.md, "Columns of AWS KMS ciphertext blobs"). So every value goes to
// ReEncrypt, and ReEncrypt's SourceKeyId decides: under the key the direction moves to, kUnchanged
// (the new blob is dropped, nothing written); under the key it moves from, kRewritten (from_key and
// to_key: kAwsKmsSourceKey and kAwsKmsDestinationKey, the job's two ARNs); under any other key,
// kPoison "aws_kms_other_key" naming that key. A blob KMS refuses (kms::kBlobRefusals: corrupt,
// forged, another encryption context) is kPoison "aws_kms_rejected" with KMS's exception and
// message as detail; an empty value kPoison "empty". Any other failure (throttling, KMS away,
// a disabled key, access denied) throws, after the service's retries, and then nothing of the
// batch may be written.
//
// OpenBatch calls no KMS: a blob names its key only to KMS (ReEncrypt or Decrypt would tell, and
// Decrypt would put the plaintext in this process), and its cleartext header holds KMS's
// backing-key id, whose layout is not published and which changes when KMS rotates the key's
// material (docs/FORMAT.md, "The aws-kms codec"). So a value that is not empty is kUnproven with
// no key_name, and an empty one kPoison "empty".
#pragma once

#include <functional>
#include <string>

#include "common/bytes.h"
#include "crypto/value_rewriter.h"
#include "jobs/job.h"

namespace rekey::rotation {

// The stable error classes of rekey.row_failures for aws-kms values.
constexpr char kAwsKmsRejectedClass[] = "aws_kms_rejected";
constexpr char kAwsKmsOtherKeyClass[] = "aws_kms_other_key";
// The key numbers of an aws-kms job's value audit and batch audit rows.
constexpr uint32_t kAwsKmsSourceKey = 1;
constexpr uint32_t kAwsKmsDestinationKey = 2;

// What rotation needs of AWS KMS for the aws-kms column codec. A narrow interface, so rotation/
// depends on no KMS provider: the process wires AWS KMS's client to it through the resilient
// layer (kms/resilient_kms.h: retries, token bucket, circuit breaker; worker/cli_support.h).
// Errors are rekey::Errors as KMS providers throw them (kms/kms_client.h). Thread-safe.
class AwsKmsService {
 public:
  struct Result {
    Bytes blob;                  // the blob under key_arn; empty iff refused
    std::string source_key_arn;  // the key ARN the blob was under (SourceKeyId)
    std::string key_arn;         // the key ARN it is under now (KeyId)
    std::string refusal;         // KMS's refusal of this blob ("<exception>: <message>")
  };
  virtual ~AwsKmsService() = default;

  // The key ARN of `key_ref` (key id, ARN, alias); throws KeyError unless the key is Enabled.
  virtual std::string KeyArn(const std::string& key_ref) = 0;
  // ReEncrypt of `blob` to `destination_key_arn` with the constant encryption context `context`
  // (JSON object, "" for none) on both sides. Refusals of this blob are returned, not thrown.
  virtual Result ReEncrypt(const Bytes& blob, const std::string& destination_key_arn,
                           const std::string& context) = 0;
};

// The AWS KMS service of aws-kms jobs, built on first use; throws ConfigError when AWS KMS is not
// configured. The service must outlive the rotators that call it.
using AwsKmsSource = std::function<AwsKmsService&()>;

// Throws KeyError unless both KMS keys of aws-kms job `job` exist, are Enabled and are still the
// ARNs the job recorded (throws as AwsKmsService does).
void CheckAwsKmsKeys(AwsKmsService& service, const jobs::JobDefinition& job);

class AwsKmsRewriter : public crypto::ValueRewriter {
 public:
  // `job` (an aws-kms job) and `service` must outlive the rewriter; `rollback` moves values back
  // to the source key. `service` is called only when a batch holds a value.
  AwsKmsRewriter(const jobs::JobDefinition& job, AwsKmsSource service, bool rollback);

  // Not kKeyInValue: SQL cannot read the key of a blob, so the SELECT takes every value.
  KeyNaming key_naming() const override { return KeyNaming::kTrialDecryption; }
  void RewriteBatch(const crypto::StoredValue* values, size_t count,
                    crypto::RewrittenValue* out) override;
  void OpenBatch(const crypto::StoredValue* values, size_t count,
                 crypto::OpenedValue* out) override;

 private:
  const jobs::JobDefinition& job_;
  AwsKmsSource service_;
  const std::string* to_arn_;    // the key values move to in this direction
  const std::string* from_arn_;  // the key they move from
  uint32_t to_key_;
  uint32_t from_key_;
  Bytes blob_;  // reused across values
};

}  // namespace rekey::rotation
