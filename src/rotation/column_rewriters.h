// The rewriters of a job's columns (crypto/value_rewriter.h), one per codec in use: the one place
// a job's codecs are mapped to their ValueRewriters, for the batch path and for verification
// (rotation/verifier.h). Local codecs come from crypto/codec_rewriters.h; vault-transit and aws-kms
// columns get a TransitRewriter or AwsKmsRewriter over the process's service.
//
// Builds nothing remote: a service source is called only when a rewriter sends a request, and
// OpenBatch sends none.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "crypto/codec_rewriters.h"
#include "crypto/value_rewriter.h"
#include "jobs/job.h"
#include "rotation/aws_kms_rewriter.h"
#include "rotation/transit_service.h"

namespace rekey::rotation {

struct ColumnRewriters {
  std::vector<std::unique_ptr<crypto::ValueRewriter>> rewriters;  // one per codec in use
  std::vector<size_t> of_column;  // by job column index: its rewriter in `rewriters`
};

// The rewriters of `job`'s columns for one direction: `moves` (source key id -> target key id;
// the job's key map, or it reversed with `rollback`). `keys` and the service sources are copied;
// `job`, `moves` and what the copied functions refer to must outlive the rewriters. A service
// source may be empty when the job has no column of its codec, or when only OpenBatch is called.
ColumnRewriters MakeColumnRewriters(const jobs::JobDefinition& job,
                                    const std::map<uint32_t, uint32_t>* moves, bool rollback,
                                    const crypto::CodecKeys& keys,
                                    const TransitClientSource& transit,
                                    const AwsKmsSource& aws_kms);

}  // namespace rekey::rotation
