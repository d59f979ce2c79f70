// Fuzz target: the column codecs (crypto/codec.h) and associated-data templates
// (crypto/associated_data.h) -- every stored value and every template an operator writes passes
// through them.
//
// Input: [mode][ad length][ad][value]. Mode (low 2 bits) picks what is exercised:
//   0  OpenTink under a fixed keyring (the ids 0 and 1 of tests/vectors/tink_aes256gcm.json)
//   1  OpenRaw under key 0
//   2  AssociatedDataTemplate::Compile of ad+value as template text, then Render
//   3  the other parsers of stored values: TinkKeyId, TransitCiphertextVersion, ParseCodecKind
// Invariants: opening never throws; a value that opens re-seals to exactly the same bytes (same
// key, IV and associated data); sealing then opening round-trips.
#include <cstdint>
#include <cstring>
#include <string>

#include "common/bytes.h"
#include "crypto/aes_gcm.h"
#include "crypto/associated_data.h"
#include "crypto/codec.h"
#include "fuzz_support.h"
#include "kms/vault_transit.h"

namespace {

using rekey::Bytes;
using rekey::crypto::AesGcmKey;
using rekey::crypto::DecodeStatus;
using rekey::fuzz::FuzzCheck;

AesGcmKey MakeKey(const char* hex) {
  std::optional<Bytes> raw = rekey::HexDecode(hex);
  return AesGcmKey(rekey::Secret(raw->data(), raw->size()));
}

// Static: the key schedule is computed once, and the target is single-threaded.
AesGcmKey& Key(uint32_t id) {
  static AesGcmKey key0 =
      MakeKey("17725378a8fdb54b3b94ebe22d21c5b8dec33db15c150691a73225a6ab7d7503");
  static AesGcmKey key1 =
      MakeKey("b06f218c3fe744f6f12e782bb8d8b15b08e144a4fba36443666dd0e0a182f9b3");
  return id == 0 ? key0 : key1;
}

void FuzzTink(const uint8_t* value, size_t size, const uint8_t* ad, size_t ad_size) {
  Bytes plaintext{0xAA};  // must be cleared unless the value opens
  uint32_t key_id = 0xDEADBEEF;
  const rekey::crypto::KeyLookup keys = [](uint32_t id) -> AesGcmKey* {
    return id <= 1 ? &Key(id) : nullptr;
  };
  const DecodeStatus status =
      rekey::crypto::OpenTink(value, size, keys, ad, ad_size, &plaintext, &key_id);
  FuzzCheck(!rekey::crypto::DecodeStatusName(status).empty(), "status without a name");
  if (status != DecodeStatus::kOk) {
    FuzzCheck(plaintext.empty(), "OpenTink left plaintext behind on failure");
    return;
  }
  FuzzCheck(size >= rekey::crypto::kTinkOverhead, "OpenTink accepted a value shorter than 33");
  FuzzCheck(plaintext.size() == size - rekey::crypto::kTinkOverhead, "plaintext size");
  FuzzCheck(rekey::crypto::TinkKeyId(value, size) == key_id, "key id disagrees with TinkKeyId");
  Bytes again;
  rekey::crypto::SealTinkWithIv(key_id, Key(key_id), value + rekey::crypto::kTinkPrefixSize,
                                plaintext.data(), plaintext.size(), ad, ad_size, &again);
  FuzzCheck(again.size() == size && std::memcmp(again.data(), value, size) == 0,
            "an opened Tink value does not re-seal to the same bytes");
}

void FuzzRaw(const uint8_t* value, size_t size, const uint8_t* ad, size_t ad_size) {
  Bytes plaintext{0xAA};
  const DecodeStatus status = rekey::crypto::OpenRaw(value, size, &Key(0), ad, ad_size, &plaintext);
  if (status == DecodeStatus::kOk) {
    FuzzCheck(plaintext.size() == size - rekey::crypto::kRawOverhead, "plaintext size");
  } else {
    FuzzCheck(plaintext.empty(), "OpenRaw left plaintext behind on failure");
  }
  FuzzCheck(rekey::crypto::OpenRaw(value, size, nullptr, ad, ad_size, &plaintext) ==
                (size == 0 ? DecodeStatus::kEmpty : DecodeStatus::kUnknownKey),
            "OpenRaw without a key");
}

void RoundTrip(const uint8_t* data, size_t size, const uint8_t* ad, size_t ad_size) {
  Bytes sealed;
  rekey::crypto::SealTink(1, Key(1), data, size, ad, ad_size, &sealed);
  FuzzCheck(sealed.size() == size + rekey::crypto::kTinkOverhead, "sealed size");
  Bytes plaintext;
  uint32_t key_id = 0;
  const rekey::crypto::KeyLookup keys = [](uint32_t id) { return id == 1 ? &Key(1) : nullptr; };
  FuzzCheck(rekey::crypto::OpenTink(sealed.data(), sealed.size(), keys, ad, ad_size, &plaintext,
                                    &key_id) == DecodeStatus::kOk &&
                key_id == 1 && plaintext == Bytes(data, data + size),
            "Tink seal/open round trip");
  sealed.clear();
  rekey::crypto::SealRaw(Key(0), data, size, ad, ad_size, &sealed);
  FuzzCheck(rekey::crypto::OpenRaw(sealed.data(), sealed.size(), &Key(0), ad, ad_size,
                                   &plaintext) == DecodeStatus::kOk &&
                plaintext == Bytes(data, data + size),
            "raw seal/open round trip");
}

void FuzzTemplate(const std::string& text) {
  rekey::fuzz::Guarded([&] {
    const auto t = rekey::crypto::AssociatedDataTemplate::Compile(text);
    FuzzCheck(t.text() == text, "template text not kept");
    std::string out;
    t.Render("public", "payment_methods", "token", "42", &out);
    std::string again;
    t.Render("public", "payment_methods", "token", "43", &again);
    FuzzCheck(t.uses_pk() == (out != again), "uses_pk() disagrees with what Render does");
    FuzzCheck(!t.empty() || out.empty(), "an empty template rendered text");
  });
}

void FuzzParsers(const std::string& text) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  (void)rekey::crypto::TinkKeyId(bytes, text.size());
  if (std::optional<int> v = rekey::kms::TransitCiphertextVersion(text)) {
    FuzzCheck(*v >= 0, "negative Transit key version");
  }
  if (auto kind = rekey::crypto::ParseCodecKind(text)) {
    FuzzCheck(rekey::crypto::CodecKindName(*kind) == text, "codec name does not round-trip");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  rekey::fuzz::Reader in(data, size);
  const uint8_t mode = in.Byte();
  const std::string ad = in.Bytes(in.Byte());
  const std::string value = in.Rest();
  const auto* v = reinterpret_cast<const uint8_t*>(value.data());
  const auto* a = reinterpret_cast<const uint8_t*>(ad.data());
  switch (mode & 3) {
    case 0:
      FuzzTink(v, value.size(), a, ad.size());
      if (value.size() <= 4096) RoundTrip(v, value.size(), a, ad.size());
      break;
    case 1:
      FuzzRaw(v, value.size(), a, ad.size());
      break;
    case 2:
      FuzzTemplate(ad + value);
      break;
    case 3:
      FuzzParsers(value);
      break;
  }
  return 0;
}
