// ValueRewriter (crypto/value_rewriter.h) for rekey's own AES-GCM codecs (crypto/codec.h): Tink
// values, which name their key in their prefix, and raw values, whose key the row's key-id column
// names. A value is opened under its source key and sealed under the key that source maps to, with
// a fresh IV and the same associated data (the job's template rendered for the value's column and
// row).
//
// Outcomes: a value under a key the job does not rotate (or, for raw, a row whose key-id column
// names no source key) is kUnchanged -- not ours to touch. A value that does not open is kPoison,
// or kKeyMissing when its key is not available, with DecodeStatusName as its error class and the
// key it named. A Tink value whose prefix does not parse is opened anyway, so it is quarantined
// rather than ignored.
//
// OpenBatch opens a Tink value under whatever key its prefix names, and a raw value under the key
// its row's key-id column names (none: "unknown_key"), whether or not the job rotates that key;
// a key KeyMoves::keys answers nullptr for (or NoSuchKeyError) is "unknown_key".
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "crypto/associated_data.h"
#include "crypto/codec.h"
#include "crypto/value_rewriter.h"

namespace rekey::crypto {

// Where the values live, for their associated data. The template must outlive the rewriter.
struct TableBinding {
  const AssociatedDataTemplate* associated_data = nullptr;  // not null; may be empty()
  std::string schema;
  std::string table;
};

// The keys of one direction. `moves` maps each source key id to its target key id; `keys` returns
// this thread's key for any id on either side of `moves` (it may throw if the key cannot be had,
// never returns nullptr for such an id), and for OpenBatch any id a value names (nullptr or
// NoSuchKeyError: not available). Both must outlive the rewriter.
struct KeyMoves {
  const std::map<uint32_t, uint32_t>* moves = nullptr;
  KeyLookup keys;
};

class AeadRewriter : public ValueRewriter {
 public:
  AeadRewriter(CodecKind kind, TableBinding table, KeyMoves keys);

  KeyNaming key_naming() const override;
  void RewriteBatch(const StoredValue* values, size_t count, RewrittenValue* out) override;
  void OpenBatch(const StoredValue* values, size_t count, OpenedValue* out) override;

 private:
  void Rewrite(const StoredValue& value, RewrittenValue* out);
  void Open(const StoredValue& value, OpenedValue* out);
  // The value's associated data, rendered into ad_.
  void RenderAssociatedData(const StoredValue& value);
  // The value's source key, nullopt if it names none; sets *ours to whether the job moves it.
  std::optional<uint32_t> SourceKey(const StoredValue& value, bool* ours) const;

  const CodecKind kind_;  // kTink or kRaw
  const TableBinding table_;
  const KeyMoves keys_;
  KeyLookup source_lookup_;  // keys_.keys, limited to source keys (OpenTink's lookup)
  KeyLookup any_lookup_;     // keys_.keys for any id, nullptr for one its source does not know
  std::string ad_;           // reused across values
  Bytes plaintext_;
};

}  // namespace rekey::crypto
