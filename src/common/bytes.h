// Byte strings and their text encodings (hex, base64), as used in the wire formats, the JSON test
// vectors and the KMS protocols.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace rekey {

using Bytes = std::vector<uint8_t>;

inline std::string_view AsStringView(const Bytes& b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}
inline Bytes ToBytes(std::string_view s) {
  return Bytes(s.begin(), s.end());
}

std::string HexEncode(const uint8_t* data, size_t size);
inline std::string HexEncode(const Bytes& b) {
  return HexEncode(b.data(), b.size());
}
// Returns nullopt iff `hex` has odd length or a non-hex character. Accepts upper and lower case.
std::optional<Bytes> HexDecode(std::string_view hex);

std::string Base64Encode(const uint8_t* data, size_t size);
inline std::string Base64Encode(const Bytes& b) {
  return Base64Encode(b.data(), b.size());
}
// Standard alphabet with padding (RFC 4648 section 4); surrounding whitespace is ignored.
// Returns nullopt iff the input is not valid base64.
std::optional<Bytes> Base64Decode(std::string_view text);

void PutUint32BigEndian(uint32_t v, uint8_t* out);
uint32_t GetUint32BigEndian(const uint8_t* in);

}  // namespace rekey
