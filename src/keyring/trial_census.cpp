#include "keyring/trial_census.h"

#include <memory>
#include <set>
#include <utility>

#include "common/error.h"
#include "crypto/associated_data.h"
#include "crypto/codec.h"
#include "crypto/codec_rewriters.h"
#include "crypto/text_encoding.h"
#include "db/bytea.h"
#include "db/connection.h"
#include "db/identifiers.h"
#include "db/named_query.h"
#include "keyring/keyring.h"

namespace rekey::keyring {
namespace {

// Values fetched per round trip, and handed to the rewriter at once.
constexpr int kBatchRows = 1000;

// The rewriter that opens a trial codec's values (crypto/codec_rewriters.h): every candidate key
// maps to itself, so OpenBatch tries exactly the candidates (in key id order).
std::unique_ptr<crypto::ValueRewriter> TrialRewriter(crypto::CodecKind codec,
                                                     const TrialColumn& column,
                                                     const std::map<uint32_t, uint32_t>* identity,
                                                     const crypto::CodecKeys& keys) {
  if (!IsTrialCodec(std::string(crypto::CodecKindName(codec)))) {
    throw ConfigError("codec " + std::string(crypto::CodecKindName(codec)) +
                      " is counted by SQL, not by trial decryption");
  }
  static const crypto::AssociatedDataTemplate kNone;  // no trial codec binds associated data
  std::map<std::string, crypto::LockboxKeyNames> names;
  names[column.column] = {column.lockbox_key_table, column.lockbox_key_attribute};
  return crypto::MakeLocalRewriter(codec, identity, {&kNone, "", ""}, names, keys);
}

// The cursor of DeclareValues, built here with it (its name is not in a named query).
constexpr char kCloseValues[] = "CLOSE rekey_trial_values";

// The cursor over a column's non-NULL values, each as `v` in its stored text or bytes.
std::string DeclareValues(pqxx::transaction_base& txn, const TrialColumn& column) {
  std::string value = db::QuoteIdent(column.column);
  if (column.json_path) {
    value = "(" + value + " #>> " + txn.quote(*column.json_path) + "::text[])";
  }
  return "DECLARE rekey_trial_values NO SCROLL CURSOR FOR SELECT " + value + " AS v FROM " +
         column.relation + " WHERE " + value + " IS NOT NULL";
}

// The value of `field` as the codec sees it (rotation/stored_form.h reads it the same way);
// false iff it is not text of the column's encoding.
bool ReadValue(crypto::CodecKind codec, const TrialColumn& column, const pqxx::field& field,
               Bytes* out) {
  const std::string_view text(field.c_str(), field.size());
  if (codec == crypto::CodecKind::kCloak || codec == crypto::CodecKind::kRails) {
    out->assign(text.begin(), text.end());
    return true;
  }
  const std::optional<crypto::TextEncoding> encoding = crypto::ParseTextEncoding(column.encoding);
  if (!encoding || *encoding == crypto::TextEncoding::kBytea) {
    db::ReadBytea(field, out);
    return true;
  }
  return crypto::DecodeText(*encoding, text, out);
}

}  // namespace

const std::vector<std::string>& TrialCodecs() {
  static const std::vector<std::string> codecs = {"fernet", "cloak", "rails", "lockbox"};
  return codecs;
}

bool IsTrialCodec(const std::string& codec) {
  for (const std::string& c : TrialCodecs()) {
    if (c == codec) return true;
  }
  return false;
}

std::vector<TrialColumn> TrialColumns(pqxx::transaction_base& txn) {
  const pqxx::result rows = db::Classified("listing the columns counted by trial decryption", [&] {
    return txn.exec_params(db::Query("keyring/trial_census.trial_columns"),
                           db::TextArrayLiteral(TrialCodecs()));
  });
  std::vector<TrialColumn> columns;
  for (const pqxx::row& row : rows) {
    TrialColumn& c = columns.emplace_back();
    c.target_id = row["target_id"].as<int64_t>();
    c.codec = row["codec"].as<std::string>();
    c.relation = row["relation"].as<std::string>();
    c.column = row["column_name"].as<std::string>();
    c.encoding = row["encoding"].as<std::string>();
    if (!row["json_path"].is_null()) c.json_path = row["json_path"].as<std::string>();
    c.ref = row["ref"].as<std::string>();
    c.lockbox_key_table = row["lockbox_key_table"].as<std::string>();
    c.lockbox_key_attribute = row["lockbox_key_attribute"].as<std::string>();
  }
  return columns;
}

TrialCount CountByTrial(pqxx::transaction_base& txn, const TrialColumn& column,
                        const std::vector<uint32_t>& candidates, const TrialKeySource& keys) {
  const std::optional<crypto::CodecKind> codec = crypto::ParseCodecKind(column.codec);
  if (!codec) throw ConfigError("target " + std::to_string(column.target_id) + ": unknown codec");
  std::map<uint32_t, uint32_t> identity;
  for (uint32_t id : candidates) identity.emplace(id, id);
  crypto::OpeningKeys opening_keys(keys);
  const std::unique_ptr<crypto::ValueRewriter> rewriter =
      TrialRewriter(*codec, column, &identity, opening_keys.keys());
  const std::string context = "counting " + column.ref + " by trial decryption";
  db::Classified(context, [&] { txn.exec0(DeclareValues(txn, column)); });
  const std::string fetch =
      "FETCH FORWARD " + std::to_string(kBatchRows) + " FROM rekey_trial_values";
  TrialCount count;
  std::vector<Bytes> buffers(kBatchRows);
  std::vector<crypto::StoredValue> values;
  std::vector<crypto::OpenedValue> out(kBatchRows);
  for (;;) {
    const pqxx::result chunk = db::Classified(context, [&] { return txn.exec(fetch); });
    values.clear();
    for (size_t i = 0; i < chunk.size(); ++i) {
      ++count.values;
      if (!ReadValue(*codec, column, chunk[pqxx::result::size_type(i)]["v"], &buffers[i])) {
        ++count.unopened;
        ++count.unopened_by_class[std::string(crypto::kBadEncodingClass)];
        continue;
      }
      values.push_back({buffers[i].data(), buffers[i].size(), column.column, "", std::nullopt});
    }
    rewriter->OpenBatch(values.data(), values.size(), out.data());
    for (size_t i = 0; i < values.size(); ++i) {
      if (out[i].outcome == crypto::OpenOutcome::kOpened) {
        ++count.by_key[out[i].key];
      } else if (out[i].outcome != crypto::OpenOutcome::kUnencrypted) {
        // Lockbox's "" is under no key; anything else that does not open counts as opened by
        // none: a census never under-counts.
        ++count.unopened;
        ++count.unopened_by_class[out[i].error_class];
      }
      WipeAndClear(&out[i].plaintext);
    }
    if (chunk.size() < size_t(kBatchRows)) break;
  }
  db::Classified(context, [&] { txn.exec0(kCloseValues); });
  return count;
}

std::vector<uint32_t> TrialCandidates(pqxx::transaction_base& txn, uint32_t key_id) {
  const KeyRecord key = GetKey(txn, key_id);
  std::vector<uint32_t> ids = {key_id};
  for (const KeyRecord& k : ListKeys(txn)) {
    if (k.key_id != key_id && k.scope == key.scope && k.status != KeyStatus::kDestroyed) {
      ids.push_back(k.key_id);
    }
  }
  return ids;
}

std::vector<std::string> KeyCensusByTrial(
    pqxx::transaction_base& txn, uint32_t key_id, const std::function<TrialKeySource()>& keys,
    const std::function<void(const CensusColumn&)>& on_column) {
  std::vector<CensusColumn> listed;
  KeyCensus(txn, key_id, [&](const CensusColumn& c) { listed.push_back(c); });
  std::map<int64_t, TrialColumn> trial;
  for (TrialColumn& c : TrialColumns(txn)) trial.emplace(c.target_id, std::move(c));
  std::vector<std::string> proven;
  std::optional<TrialKeySource> source;
  std::vector<uint32_t> candidates;
  for (CensusColumn& c : listed) {
    const auto it = c.target_id ? trial.find(*c.target_id) : trial.end();
    if (c.status != "unknown" || it == trial.end()) {
      on_column(c);
      continue;
    }
    if (!source) {
      source = keys();
      candidates = TrialCandidates(txn, key_id);
    }
    const TrialCount count = CountByTrial(txn, it->second, candidates, *source);
    const auto under = count.by_key.find(key_id);
    c.values = under == count.by_key.end() ? 0 : under->second;
    c.formats = {it->second.codec};
    c.unknown.reset();
    if (count.unopened > 0) {
      std::string classes;
      for (const auto& [name, n] : count.unopened_by_class) {
        classes += (classes.empty() ? "" : ", ") + std::to_string(n) + " " + name;
      }
      c.unknown = std::to_string(count.unopened) + " of its " + std::to_string(count.values) +
                  " values open under no key of the key's scope (" + classes +
                  "): another scope's key, or not of the format; counted by trial decryption";
    }
    c.status = *c.values > 0 ? "in_use" : c.unknown ? "unknown" : "clear";
    if (c.status == "clear") {
      proven.push_back(c.ref);
      continue;
    }
    on_column(c);
  }
  return proven;
}

}  // namespace rekey::keyring
