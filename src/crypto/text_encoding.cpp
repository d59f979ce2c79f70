#include "crypto/text_encoding.h"

#include <array>
#include <cstdint>

namespace rekey::crypto {
namespace {

constexpr char kStandard[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr char kUrlSafe[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
constexpr char kHexDigits[] = "0123456789abcdef";

using DecodeTable = std::array<int8_t, 256>;

DecodeTable MakeTable(const char* alphabet) {
  DecodeTable table;
  table.fill(-1);
  for (int i = 0; i < 64; ++i) table[static_cast<uint8_t>(alphabet[i])] = int8_t(i);
  return table;
}

const DecodeTable& TableFor(TextEncoding encoding) {
  static const DecodeTable standard = MakeTable(kStandard);
  static const DecodeTable url_safe = MakeTable(kUrlSafe);
  return encoding == TextEncoding::kBase64 ? standard : url_safe;
}

// Base64 in either alphabet. Standard base64 must be padded; base64url may be, and then must be
// to a multiple of four like the standard form.
bool DecodeBase64(TextEncoding encoding, std::string_view text, Bytes* out, TextStyle* style) {
  size_t data_chars = text.size();
  while (data_chars > 0 && text[data_chars - 1] == '=') --data_chars;
  const size_t padding = text.size() - data_chars;
  const bool padded = padding > 0 || data_chars % 4 == 0;
  if (padding > 2 || data_chars % 4 == 1) return false;
  if ((padding > 0 || encoding == TextEncoding::kBase64) && text.size() % 4 != 0) return false;
  const DecodeTable& table = TableFor(encoding);
  out->reserve(data_chars * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < data_chars; ++i) {
    const int8_t v = table[static_cast<uint8_t>(text[i])];
    if (v < 0) return false;
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out->push_back(uint8_t(acc >> bits));
    }
  }
  if (style) style->padded = padded;
  return true;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool DecodeHex(std::string_view text, Bytes* out) {
  if (text.size() % 2 != 0) return false;
  out->reserve(text.size() / 2);
  for (size_t i = 0; i < text.size(); i += 2) {
    const int hi = HexValue(text[i]);
    const int lo = HexValue(text[i + 1]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(uint8_t(hi << 4 | lo));
  }
  return true;
}

}  // namespace

std::optional<TextEncoding> ParseTextEncoding(std::string_view name) {
  if (name == "bytea") return TextEncoding::kBytea;
  if (name == "base64") return TextEncoding::kBase64;
  if (name == "base64url") return TextEncoding::kBase64Url;
  if (name == "hex") return TextEncoding::kHex;
  return std::nullopt;
}

std::string_view TextEncodingName(TextEncoding encoding) {
  switch (encoding) {
    case TextEncoding::kBytea:
      return "bytea";
    case TextEncoding::kBase64:
      return "base64";
    case TextEncoding::kBase64Url:
      return "base64url";
    case TextEncoding::kHex:
      return "hex";
  }
  return "bytea";
}

bool DecodeText(TextEncoding encoding, std::string_view text, Bytes* out, TextStyle* style) {
  out->clear();
  bool ok = false;
  switch (encoding) {
    case TextEncoding::kBytea:
      break;  // not a text form
    case TextEncoding::kBase64:
    case TextEncoding::kBase64Url:
      ok = DecodeBase64(encoding, text, out, style);
      break;
    case TextEncoding::kHex:
      ok = DecodeHex(text, out);
      break;
  }
  if (!ok) out->clear();
  return ok;
}

void EncodeText(TextEncoding encoding, const uint8_t* data, size_t size, TextStyle style,
                std::string* out) {
  out->clear();
  if (encoding == TextEncoding::kHex) {
    out->resize(2 * size);
    for (size_t i = 0; i < size; ++i) {
      (*out)[2 * i] = kHexDigits[data[i] >> 4];
      (*out)[2 * i + 1] = kHexDigits[data[i] & 0x0f];
    }
    return;
  }
  const char* alphabet = encoding == TextEncoding::kBase64 ? kStandard : kUrlSafe;
  out->reserve((size + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= size; i += 3) {
    const uint32_t v = uint32_t(data[i]) << 16 | uint32_t(data[i + 1]) << 8 | data[i + 2];
    for (int shift = 18; shift >= 0; shift -= 6) out->push_back(alphabet[(v >> shift) & 63]);
  }
  const size_t rest = size - i;
  if (rest == 0) return;
  uint32_t v = uint32_t(data[i]) << 16;
  if (rest == 2) v |= uint32_t(data[i + 1]) << 8;
  out->push_back(alphabet[(v >> 18) & 63]);
  out->push_back(alphabet[(v >> 12) & 63]);
  if (rest == 2) out->push_back(alphabet[(v >> 6) & 63]);
  if (encoding == TextEncoding::kBase64 || style.padded) out->append(rest == 1 ? "==" : "=");
}

}  // namespace rekey::crypto
