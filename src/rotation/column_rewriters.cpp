#include "rotation/column_rewriters.h"

#include <string>

#include "rotation/transit_rewriter.h"

namespace rekey::rotation {

ColumnRewriters MakeColumnRewriters(const jobs::JobDefinition& job,
                                    const std::map<uint32_t, uint32_t>* moves, bool rollback,
                                    const crypto::CodecKeys& keys,
                                    const TransitClientSource& transit,
                                    const AwsKmsSource& aws_kms) {
  const crypto::TableBinding table{&job.associated_data, job.schema_name, job.table_name};
  std::map<std::string, crypto::LockboxKeyNames> lockbox_names;
  for (const auto& column : job.columns) {
    if (column.codec == crypto::CodecKind::kLockbox) {
      lockbox_names[column.name] = {column.lockbox_key_table, column.lockbox_key_attribute};
    }
  }
  ColumnRewriters made;
  std::map<crypto::CodecKind, size_t> by_codec;
  for (const auto& column : job.columns) {
    auto [it, added] = by_codec.emplace(column.codec, made.rewriters.size());
    if (added) {
      // The remote services' codecs here; every other one is local (crypto/codec_rewriters.h).
      if (column.codec == crypto::CodecKind::kVaultTransit) {
        made.rewriters.push_back(std::make_unique<TransitRewriter>(job, transit));
      } else if (column.codec == crypto::CodecKind::kAwsKms) {
        made.rewriters.push_back(std::make_unique<AwsKmsRewriter>(job, aws_kms, rollback));
      } else {
        made.rewriters.push_back(
            crypto::MakeLocalRewriter(column.codec, moves, table, lockbox_names, keys));
      }
    }
    made.of_column.push_back(it->second);
  }
  return made;
}

}  // namespace rekey::rotation
