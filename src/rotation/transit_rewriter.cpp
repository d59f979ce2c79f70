#include "rotation/transit_rewriter.h"

#include <optional>
#include <string_view>
#include <utility>

#include "common/bytes.h"
#include "common/error.h"
#include "kms/vault_transit.h"  // TransitCiphertextVersion: the format, not the client

namespace rekey::rotation {
namespace {

using crypto::RewriteOutcome;

constexpr char kBadPrefixDetail[] = "not a Vault Transit ciphertext (vault:vN:<base64>)";

std::optional<int> VersionOf(const crypto::StoredValue& value) {
  return kms::TransitCiphertextVersion(
      std::string_view(reinterpret_cast<const char*>(value.data), value.size));
}

void Quarantine(const std::string& error_class, std::string detail, crypto::RewrittenValue* out) {
  out->outcome = RewriteOutcome::kPoison;
  out->error_class = error_class;
  out->failed_key.reset();
  out->detail = std::move(detail);
}

}  // namespace

void RequireTransitKeyFits(const std::string& key_ref, bool derived, bool has_context) {
  if (derived && !has_context) {
    throw KeyError("Transit key " + key_ref +
                   " is derived, so each value was encrypted with a context; give the job the "
                   "template that renders it (--ad-template, e.g. '{table}:{pk}')");
  }
  if (!derived && has_context) {
    throw KeyError("Transit key " + key_ref +
                   " is not derived, so Vault would ignore the job's derivation context "
                   "(--ad-template); drop it, or use a key created with derived=true");
  }
}

std::string TransitDerivationContext(const jobs::JobDefinition& job, const std::string& column,
                                     const std::string& pk) {
  if (job.associated_data.empty()) return "";
  std::string rendered;
  job.associated_data.Render(job.schema_name, job.table_name, column, pk, &rendered);
  return Base64Encode(reinterpret_cast<const uint8_t*>(rendered.data()), rendered.size());
}

void CheckTransitKey(TransitService& service, const jobs::JobDefinition& job) {
  const std::string& key_ref = *job.transit_key_ref;
  const TransitService::KeyInfo info = service.ReadKey(key_ref);
  RequireTransitKeyFits(key_ref, info.derived, !job.associated_data.empty());
  if (info.latest_version < job.transit_min_version) {
    throw KeyError("Transit key " + key_ref + " is at version " +
                   std::to_string(info.latest_version) + ", below the job's target version " +
                   std::to_string(job.transit_min_version) + "; rotate the key in Vault first");
  }
}

TransitRewriter::TransitRewriter(const jobs::JobDefinition& job, TransitClientSource service)
    : job_(job), service_(std::move(service)) {}

void TransitRewriter::OpenBatch(const crypto::StoredValue* values, size_t count,
                                crypto::OpenedValue* out) {
  for (size_t v = 0; v < count; ++v) {
    const std::optional<int> version = VersionOf(values[v]);
    if (!version) {
      out[v].Failed(crypto::OpenOutcome::kPoison, "bad_prefix", std::nullopt, kBadPrefixDetail);
    } else if (*version < job_.transit_min_version) {
      out[v].Failed(crypto::OpenOutcome::kKeyMissing, "below_target_version", uint32_t(*version));
    } else {
      out[v].Opened(uint32_t(*version), /*with_plaintext=*/false);
    }
  }
}

void TransitRewriter::RewriteBatch(const crypto::StoredValue* values, size_t count,
                                   crypto::RewrittenValue* out) {
  items_.clear();
  item_values_.clear();
  for (size_t v = 0; v < count; ++v) {
    const std::optional<int> version = VersionOf(values[v]);
    if (!version) {
      Quarantine("bad_prefix", kBadPrefixDetail, &out[v]);
    } else if (*version >= job_.transit_min_version) {
      out[v].outcome = RewriteOutcome::kUnchanged;
    } else {
      out[v].from_key = uint32_t(*version);
      item_values_.push_back(v);
      items_.push_back({std::string(reinterpret_cast<const char*>(values[v].data), values[v].size),
                        TransitDerivationContext(job_, std::string(values[v].column),
                                                 std::string(values[v].pk))});
    }
  }
  if (items_.empty()) return;
  const std::vector<TransitService::Result> results =
      service_().RewrapValues(*job_.transit_key_ref, items_);
  for (size_t k = 0; k < item_values_.size(); ++k) {
    const TransitService::Result& result = results.at(k);
    crypto::RewrittenValue& o = out[item_values_[k]];
    if (!result.error.empty()) {
      Quarantine("vault_rejected",
                 ("v" + std::to_string(o.from_key) + ": " + result.error).substr(0, 500), &o);
      continue;
    }
    o.outcome = RewriteOutcome::kRewritten;
    o.value.assign(result.ciphertext.begin(), result.ciphertext.end());
    o.to_key = uint32_t(result.key_version);
  }
}

}  // namespace rekey::rotation
