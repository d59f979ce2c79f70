#include "rotation/verifier.h"

#include <openssl/evp.h>

#include <memory>
#include <unordered_map>

#include "common/bytes.h"
#include "common/error.h"
#include "crypto/codec.h"
#include "db/bytea.h"
#include "db/identifiers.h"
#include "jobs/rollout_planner.h"
#include "kms/vault_transit.h"

namespace rekey::rotation {
namespace {

struct Sha256 {
  Sha256() : ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
    EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  }
  void Update(const void* data, size_t size) { EVP_DigestUpdate(ctx.get(), data, size); }
  std::string HexFinal() {
    uint8_t out[32];
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx.get(), out, &n);
    return HexEncode(out, n);
  }
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx;
};

}  // namespace

int64_t VerifyReport::ValuesUnder(const std::vector<uint32_t>& keys) const {
  int64_t n = 0;
  for (uint32_t k : keys) {
    auto it = values_by_key.find(k);
    if (it != values_by_key.end()) n += it->second;
  }
  return n;
}

VerifyReport VerifyJob(pqxx::transaction_base& txn, const jobs::JobDefinition& job,
                       const DataKeySource& keys, const VerifyOptions& options) {
  // Rows hidden by a policy would be missing from every count: a gate would pass, and a
  // verification report a complete rotation, while they stay under the old key.
  const pqxx::row blocker =
      txn.exec_params1("SELECT rekey.row_security_blocker($1::regclass)", job.QualifiedTable());
  if (!blocker[0].is_null()) {
    throw ConfigError("cannot verify job " + std::to_string(job.job_id) + ": " +
                      blocker[0].as<std::string>());
  }
  const int page_size = options.page_size;
  std::unordered_map<uint32_t, std::unique_ptr<crypto::AesGcmKey>> cache;
  auto lookup = [&](uint32_t id) -> crypto::AesGcmKey* {
    auto it = cache.find(id);
    if (it != cache.end()) return it->second.get();
    std::unique_ptr<crypto::AesGcmKey> key;
    try {
      key = std::make_unique<crypto::AesGcmKey>(keys(id));
    } catch (const NoSuchKeyError&) {
      // Unknown or destroyed: its values count as unknown_key. Any other KeyError (the KMS
      // denying access, a disabled KMS key) is the environment's fault, not the data's: it
      // propagates, so a gate stops the worker with that error instead of failing the stage.
      key = nullptr;
    }
    return cache.emplace(id, std::move(key)).first->second.get();
  };

  const std::string pk = db::QuoteIdent(job.pk_column);
  // Qualified names: an unqualified ORDER BY pk would sort the pk::text output column.
  std::string select = "SELECT t." + pk + "::text";
  for (const auto& c : job.columns) select += ", t." + db::QuoteIdent(c.name);
  if (job.key_id_column) select += ", t." + db::QuoteIdent(*job.key_id_column);
  select += " FROM " + job.QualifiedTable() + " AS t";
  if (options.sample_percent < 100) {
    char sample[64];
    std::snprintf(sample, sizeof sample, " TABLESAMPLE SYSTEM (%.6f) REPEATABLE (%lld)",
                  options.sample_percent, static_cast<long long>(job.job_id));
    select += sample;
  }
  select += " WHERE ";
  // The stage test runs here, not in the database: its md5() costs about 1.9 us per row there,
  // and a gate's sampled pages hold several times more rows than it checks.
  jobs::StageBucketHasher hasher;
  const bool bucket_in_client = options.bucket_below && hasher.available();
  std::string scope;
  if (options.bucket_below && !bucket_in_client) {
    scope +=
        " AND rekey.stage_bucket(t." + pk + "::text) < " + std::to_string(*options.bucket_below);
  }
  if (job.scope_column) {
    scope += " AND t." + db::QuoteIdent(*job.scope_column) + " = $2::" + job.scope_type;
  }
  const std::string order = " ORDER BY t." + pk + " LIMIT " + std::to_string(page_size);
  const std::string first_page = select + "($1::text IS NULL)" + scope + order;
  const std::string next_page = select + "t." + pk + " > $1::" + job.pk_type + scope + order;

  VerifyReport report;
  Sha256 digest;
  std::optional<std::string> last;
  std::string ad;
  Bytes plaintext;
  Bytes value;
  const size_t ncols = job.columns.size();
  const int kid_field = job.key_id_column ? int(1 + ncols) : -1;
  const char* scope_value = job.scope_value ? job.scope_value->c_str() : nullptr;
  auto process = [&](const pqxx::result& page) {
    for (const auto& row : page) {
      const std::string pk_text = row[0].as<std::string>();
      if (bucket_in_client && hasher.Bucket(pk_text) >= *options.bucket_below) continue;
      ++report.rows;
      for (size_t i = 0; i < ncols; ++i) {
        if (row[int(1 + i)].is_null()) continue;
        ++report.values;
        const auto& column = job.columns[i];
        if (column.codec == crypto::CodecKind::kVaultTransit) {
          // No plaintext here (rekey never holds the Transit key): the version is the check.
          std::optional<int> version = kms::TransitCiphertextVersion(row[int(1 + i)].c_str());
          const char* failure = !version                             ? "bad_prefix"
                                : *version < job.transit_min_version ? "below_target_version"
                                                                     : nullptr;
          if (failure) {
            ++report.failures;
            ++report.failures_by_class[failure];
            if (report.failure_samples.size() < 20) {
              report.failure_samples.push_back(pk_text + "/" + column.name + ": " + failure);
            }
          } else {
            ++report.values_by_key[uint32_t(*version)];
          }
          continue;
        }
        db::ReadBytea(row[int(1 + i)], &value);
        if (!job.associated_data.empty()) {
          job.associated_data.Render(job.schema_name, job.table_name, column.name, pk_text, &ad);
        } else {
          ad.clear();
        }
        const auto* ad_data = reinterpret_cast<const uint8_t*>(ad.data());
        uint32_t key_id = 0;
        crypto::DecodeStatus status;
        if (column.codec == crypto::CodecKind::kTink) {
          status = crypto::OpenTink(value.data(), value.size(), lookup, ad_data, ad.size(),
                                    &plaintext, &key_id);
        } else if (kid_field < 0 || row[kid_field].is_null()) {
          status = crypto::DecodeStatus::kUnknownKey;
        } else {
          key_id = row[kid_field].as<uint32_t>();
          status = crypto::OpenRaw(value.data(), value.size(), lookup(key_id), ad_data, ad.size(),
                                   &plaintext);
        }
        if (status != crypto::DecodeStatus::kOk) {
          ++report.failures;
          ++report.failures_by_class[std::string(crypto::DecodeStatusName(status))];
          if (report.failure_samples.size() < 20) {
            report.failure_samples.push_back(pk_text + "/" + column.name + ": " +
                                             std::string(crypto::DecodeStatusName(status)));
          }
          continue;
        }
        ++report.values_by_key[key_id];
        uint8_t len[4];
        PutUint32BigEndian(uint32_t(plaintext.size()), len);
        digest.Update(pk_text.data(), pk_text.size());
        digest.Update("\0", 1);
        digest.Update(column.name.data(), column.name.size());
        digest.Update("\0", 1);
        digest.Update(len, 4);
        digest.Update(plaintext.data(), plaintext.size());
        OPENSSL_cleanse(plaintext.data(), plaintext.size());
      }
    }
  };

  bool keyed = false;
  if (options.planned_keys_of_stage) {
    keyed = txn.exec_params1(
                   "SELECT count(*) > 0 AND bool_and(keys IS NOT NULL) FROM "
                   "rekey.batches WHERE job_id = $1 AND stage_no = $2",
                   job.job_id, *options.planned_keys_of_stage)[0]
                .as<bool>();
  }
  if (keyed) {
    // One batch's keys at a time, so memory stays flat however large the stage.
    const std::string by_keys =
        select + "t." + pk + " = ANY ($1::" + job.pk_type + "[])" + scope + " ORDER BY t." + pk;
    int64_t batch_no = 0;
    while (true) {
      pqxx::result next = txn.exec_params(
          "SELECT batch_no, keys::text FROM rekey.batches WHERE job_id = $1 AND stage_no = $2 "
          "AND batch_no > $3 ORDER BY batch_no LIMIT 1",
          job.job_id, *options.planned_keys_of_stage, batch_no);
      if (next.empty()) break;
      batch_no = next[0][0].as<int64_t>();
      const std::string planned = next[0][1].as<std::string>();
      process(scope_value ? txn.exec_params(by_keys, planned, scope_value)
                          : txn.exec_params(by_keys, planned));
    }
  } else if (options.sample_percent < 100) {
    // A sample is read through a cursor in the table's order: sorting it by key, to page by
    // key, spilled to disk once the stage test no longer thinned it out in the database.
    const std::string scope_literal = scope_value ? txn.quote(scope_value) : "NULL";
    // The scope's one parameter, as a quoted literal (a cursor takes no parameters here); only
    // that occurrence, since the value itself may contain "$2".
    std::string sample_scope = scope;
    if (const size_t at = sample_scope.find("$2"); at != std::string::npos) {
      sample_scope.replace(at, 2, scope_literal);
    }
    txn.exec0("DECLARE rekey_verify_sample NO SCROLL CURSOR FOR " + select + "TRUE" + sample_scope);
    const std::string fetch = "FETCH " + std::to_string(page_size) + " FROM rekey_verify_sample";
    while (true) {
      pqxx::result page = txn.exec(fetch);
      process(page);
      if (page.size() < size_t(page_size)) break;
    }
    txn.exec0("CLOSE rekey_verify_sample");
  } else {
    while (true) {
      const char* last_pk = last ? last->c_str() : nullptr;
      const std::string& sql = last ? next_page : first_page;
      pqxx::result page =
          scope_value ? txn.exec_params(sql, last_pk, scope_value) : txn.exec_params(sql, last_pk);
      process(page);
      if (page.size() < size_t(page_size)) break;
      last = page[page.size() - 1][0].as<std::string>();
    }
  }
  report.plaintext_sha256 = digest.HexFinal();
  return report;
}

}  // namespace rekey::rotation
