// Stored forms of binary ciphertext values (issue #18; docs/FORMAT.md, "Stored forms"): an
// application that keeps Tink, raw or Fernet values in a text column (or a JSON string) stores
// them in one of these encodings. Decoding is strict and an expected-outcome operation: a value
// that is not of the column's encoding is quarantined as "bad_encoding", never guessed at.
//
//   bytea      the binary value itself in a bytea column (no text form)
//   base64     RFC 4648 section 4, standard alphabet, with '=' padding
//   base64url  RFC 4648 section 5, URL-safe alphabet ('-', '_'), padding optional
//   hex        RFC 4648 section 8, either case on reading, lower case on writing
//
// A rewritten value is written in the form it was read in, including its padding, so the
// application sees the same kind of text it wrote (a base64url value read without padding is
// written without padding).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "common/bytes.h"

namespace rekey::crypto {

enum class TextEncoding { kBytea, kBase64, kBase64Url, kHex };

// "bytea", "base64", "base64url", "hex" (exact lower case; rekey.targets.encoding); nullopt for
// anything else.
std::optional<TextEncoding> ParseTextEncoding(std::string_view name);
std::string_view TextEncodingName(TextEncoding encoding);

// The stable error class (rekey.row_failures.error_class) of a value that is not text of its
// column's encoding. Never rename it.
inline constexpr std::string_view kBadEncodingClass = "bad_encoding";

// How a decoded value was written, so it is written back the same way.
struct TextStyle {
  bool padded = true;  // base64url: it ended in '=' padding (or needed none)
};

// Decodes `text` (encoding != kBytea) into *out (replaced). Returns false, with *out cleared, iff
// `text` is not strictly of the encoding: a character outside its alphabet (whitespace included),
// an impossible length, padding anywhere but at the end. `style` (optional) receives how it was
// written.
bool DecodeText(TextEncoding encoding, std::string_view text, Bytes* out,
                TextStyle* style = nullptr);

// Replaces *out with `size` bytes at `data` in `encoding` (!= kBytea), in `style`.
void EncodeText(TextEncoding encoding, const uint8_t* data, size_t size, TextStyle style,
                std::string* out);

}  // namespace rekey::crypto
