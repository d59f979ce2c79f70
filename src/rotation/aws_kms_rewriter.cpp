#include "rotation/aws_kms_rewriter.h"

#include <utility>

#include "common/error.h"

namespace rekey::rotation {
namespace {

using crypto::RewriteOutcome;

constexpr char kEmptyDetail[] = "an empty value is not an AWS KMS ciphertext blob";

void Quarantine(const char* error_class, std::string detail, crypto::RewrittenValue* out) {
  out->outcome = RewriteOutcome::kPoison;
  out->error_class = error_class;
  out->failed_key.reset();
  out->detail = std::move(detail).substr(0, 500);
}

}  // namespace

void CheckAwsKmsKeys(AwsKmsService& service, const jobs::JobDefinition& job) {
  for (const std::string* arn : {&job.aws_kms_source_key_arn, &*job.aws_kms_key_arn}) {
    // A key ARN resolves to itself; anything else means the key is not the one the job names.
    const std::string resolved = service.KeyArn(*arn);
    if (resolved != *arn) {
      throw KeyError("KMS key " + *arn + " resolves to " + resolved +
                     "; the job was created for the former, so nothing is rotated");
    }
  }
}

AwsKmsRewriter::AwsKmsRewriter(const jobs::JobDefinition& job, AwsKmsSource service, bool rollback)
    : job_(job),
      service_(std::move(service)),
      to_arn_(rollback ? &job.aws_kms_source_key_arn : &*job.aws_kms_key_arn),
      from_arn_(rollback ? &*job.aws_kms_key_arn : &job.aws_kms_source_key_arn),
      to_key_(rollback ? kAwsKmsSourceKey : kAwsKmsDestinationKey),
      from_key_(rollback ? kAwsKmsDestinationKey : kAwsKmsSourceKey) {}

void AwsKmsRewriter::OpenBatch(const crypto::StoredValue* values, size_t count,
                               crypto::OpenedValue* out) {
  for (size_t v = 0; v < count; ++v) {
    if (values[v].size == 0) {
      out[v].Failed(crypto::OpenOutcome::kPoison, "empty", std::nullopt, kEmptyDetail);
    } else {
      out[v].Failed(crypto::OpenOutcome::kUnproven, "");
      out[v].key_name.clear();
    }
  }
}

void AwsKmsRewriter::RewriteBatch(const crypto::StoredValue* values, size_t count,
                                  crypto::RewrittenValue* out) {
  for (size_t v = 0; v < count; ++v) {
    crypto::RewrittenValue& o = out[v];
    if (values[v].size == 0) {
      Quarantine("empty", kEmptyDetail, &o);
      continue;
    }
    // One call per value: KMS has no batch ReEncrypt. A throw (after the service's retries)
    // leaves `out` half filled, and the caller writes nothing of the batch.
    blob_.assign(values[v].data, values[v].data + values[v].size);
    AwsKmsService::Result result = service_().ReEncrypt(blob_, *to_arn_, job_.aws_kms_context);
    if (!result.refusal.empty()) {
      Quarantine(kAwsKmsRejectedClass, std::move(result.refusal), &o);
    } else if (result.key_arn != *to_arn_) {
      throw PermanentError("AWS KMS ReEncrypt to " + *to_arn_ + " answered a blob under " +
                           result.key_arn + "; nothing of the batch was written");
    } else if (result.source_key_arn == *to_arn_) {
      o.outcome = RewriteOutcome::kUnchanged;  // already there; the fresh blob is not needed
    } else if (result.source_key_arn == *from_arn_) {
      o.outcome = RewriteOutcome::kRewritten;
      o.value = std::move(result.blob);
      o.from_key = from_key_;
      o.to_key = to_key_;
    } else {
      Quarantine(kAwsKmsOtherKeyClass,
                 "under KMS key " + result.source_key_arn + ", neither " + *from_arn_ + " nor " +
                     *to_arn_ + " of the job; left as it is",
                 &o);
    }
  }
}

}  // namespace rekey::rotation
