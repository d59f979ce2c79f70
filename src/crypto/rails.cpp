#include "crypto/rails.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cctype>
#include <utility>

#include "common/bytes.h"
#include "common/error.h"
#include "crypto/text_encoding.h"

namespace rekey::crypto {
namespace {

using Json = nlohmann::ordered_json;

// Rails nests a message in a header at most once (MessageSerializer#validate_message_data_format:
// level > 2 is refused).
constexpr int kMaxNesting = 2;

// Header values are strict, padded base64 (MessageSerializer#encode_if_needed: strict_encode64).
bool DecodeB64(const Json& value, Bytes* out) {
  if (!value.is_string()) return false;
  return DecodeText(TextEncoding::kBase64, value.get_ref<const std::string&>(), out);
}

std::string EncodeB64(const Bytes& bytes) {
  std::string out;
  EncodeText(TextEncoding::kBase64, bytes.data(), bytes.size(), TextStyle{}, &out);
  return out;
}

void Wipe(Bytes* bytes) {
  if (!bytes->empty()) OPENSSL_cleanse(bytes->data(), bytes->size());
  bytes->clear();
}

std::string Lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

std::optional<RailsDigest> ParseRailsDigest(std::string_view name) {
  std::string n = Lower(name);
  constexpr std::string_view kRubyPrefix = "openssl::digest::";
  if (n.compare(0, kRubyPrefix.size(), kRubyPrefix) == 0) n.erase(0, kRubyPrefix.size());
  if (n == "sha1") return RailsDigest::kSha1;
  if (n == "sha256") return RailsDigest::kSha256;
  return std::nullopt;
}

std::string_view RailsDigestName(RailsDigest digest) {
  return digest == RailsDigest::kSha1 ? "SHA1" : "SHA256";
}

Secret DeriveRailsKey(std::string_view password, std::string_view salt, RailsDigest digest) {
  Secret key(kRailsKeySize);
  const EVP_MD* md = digest == RailsDigest::kSha1 ? EVP_sha1() : EVP_sha256();
  if (PKCS5_PBKDF2_HMAC(password.data(), int(password.size()),
                        reinterpret_cast<const unsigned char*>(salt.data()), int(salt.size()),
                        kRailsPbkdf2Iterations, md, int(kRailsKeySize), key.mutable_data()) != 1) {
    throw PermanentError("OpenSSL: PBKDF2 failed");
  }
  return key;
}

std::string RailsKeyReference(const Secret& key) {
  uint8_t digest[SHA_DIGEST_LENGTH];
  SHA1(key.data(), key.size(), digest);
  return HexEncode(digest, 2);  // 4 hex digits: Key#id's Digest::SHA1.hexdigest(secret).first(4)
}

RailsKey::RailsKey(Secret key)
    : secret_(key.Clone()), aead_(std::move(key)), reference_(RailsKeyReference(secret_)) {}

bool RailsKey::Open(const Bytes& iv, const Bytes& payload, const Bytes& tag, Bytes* plaintext) {
  sealed_.clear();
  sealed_.insert(sealed_.end(), iv.begin(), iv.end());
  sealed_.insert(sealed_.end(), payload.begin(), payload.end());
  sealed_.insert(sealed_.end(), tag.begin(), tag.end());
  return aead_.Open(sealed_.data(), sealed_.size(), nullptr, 0, plaintext);
}

void RailsKey::Seal(const Bytes& plaintext, bool deterministic, Bytes* iv, Bytes* payload,
                    Bytes* tag) {
  sealed_.clear();
  if (deterministic) {
    // A synthetic IV: equal plaintexts must give equal messages (Rails' deterministic
    // attributes are queried by their ciphertext), which is the point of SealWithIv here.
    const Bytes synthetic = DeterministicIv(plaintext);
    aead_.SealWithIv(synthetic.data(), plaintext.data(), plaintext.size(), nullptr, 0, &sealed_);
  } else {
    aead_.Seal(plaintext.data(), plaintext.size(), nullptr, 0, &sealed_);
  }
  iv->assign(sealed_.begin(), sealed_.begin() + kGcmIvSize);
  payload->assign(sealed_.begin() + kGcmIvSize, sealed_.end() - kGcmTagSize);
  tag->assign(sealed_.end() - kGcmTagSize, sealed_.end());
}

Bytes RailsKey::DeterministicIv(const Bytes& plaintext) const {
  uint8_t mac[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (HMAC(EVP_sha256(), secret_.data(), int(secret_.size()), plaintext.data(), plaintext.size(),
           mac, &n) == nullptr) {
    throw PermanentError("OpenSSL: HMAC-SHA256 failed");
  }
  return Bytes(mac, mac + kGcmIvSize);
}

void RailsMessage::Wipe() {
  crypto::Wipe(&plaintext_);
  crypto::Wipe(&data_key_plain_);
  opened_with_ = nullptr;
}

std::string_view RailsMessage::ParseSealed(const Json& object, int level, Sealed* out) {
  if (level > kMaxNesting || !object.is_object()) return kRailsNotMessageClass;
  const auto p = object.find("p");
  const auto h = object.find("h");
  if (p == object.end() || h == object.end() || !h->is_object()) return kRailsNotMessageClass;
  const auto iv = h->find("iv");
  const auto at = h->find("at");
  if (iv == h->end() || at == h->end()) return kRailsNotMessageClass;
  // MessageSerializer#parse_properties reads every object among the headers as a message, one
  // level deep at most.
  for (const auto& header : h->items()) {
    if (!header.value().is_object()) continue;
    if (level >= kMaxNesting || !header.value().contains("p")) return kRailsNotMessageClass;
  }
  if (!DecodeB64(*p, &out->payload) || !DecodeB64(*iv, &out->iv) || !DecodeB64(*at, &out->tag)) {
    return kRailsBadEncodingClass;
  }
  // Aes256Gcm#decrypt refuses a tag that is not 16 bytes (ruby/openssl#63); the IV is 12.
  if (out->iv.size() != kGcmIvSize || out->tag.size() != kGcmTagSize) return kRailsTruncatedClass;
  return "";
}

void RailsMessage::WriteSealed(const Sealed& sealed, Json* object) {
  (*object)["p"] = EncodeB64(sealed.payload);
  Json& headers = (*object)["h"];
  headers["iv"] = EncodeB64(sealed.iv);
  headers["at"] = EncodeB64(sealed.tag);
}

std::string_view RailsMessage::Parse(std::string_view text) {
  Wipe();
  envelope_ = false;
  key_reference_.reset();
  if (text.empty()) return kRailsEmptyClass;
  json_ = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (json_.is_discarded()) {
    // Rails writes {"p":... first (MessageSerializer#message_to_json): such a text cut short is
    // a truncated message, anything else is not JSON at all.
    return text.rfind("{\"p\":", 0) == 0 ? kRailsTruncatedClass : kRailsNotJsonClass;
  }
  const std::string_view outer = ParseSealed(json_, 1, &outer_);
  if (!outer.empty()) return outer;
  const Json& headers = json_["h"];
  if (const auto k = headers.find("k"); k != headers.end()) {
    const std::string_view nested = ParseSealed(*k, 2, &data_key_);
    if (!nested.empty()) return nested;
    envelope_ = true;
  }
  if (const auto i = headers.find("i"); i != headers.end()) {
    Bytes reference;
    if (!DecodeB64(*i, &reference)) return kRailsBadEncodingClass;
    key_reference_.emplace(reference.begin(), reference.end());
  }
  return "";
}

std::string_view RailsMessage::Open(const std::vector<uint32_t>& key_ids,
                                    const RailsKeyLookup& keys, uint32_t* key_id) {
  Wipe();
  bool referenced = false;
  for (uint32_t id : key_ids) {
    RailsKey* key = keys(id);
    if (key == nullptr) continue;
    // KeyProvider#decryption_keys: with "i", only the keys of that id are tried.
    if (key_reference_ && key->reference() != *key_reference_) continue;
    referenced = true;
    if (!envelope_) {
      if (!key->Open(outer_.iv, outer_.payload, outer_.tag, &plaintext_)) continue;
    } else {
      if (!key->Open(data_key_.iv, data_key_.payload, data_key_.tag, &data_key_plain_)) continue;
      if (data_key_plain_.size() != kRailsKeySize) {
        crypto::Wipe(&data_key_plain_);
        continue;
      }
      RailsKey data_key(Secret(data_key_plain_.data(), data_key_plain_.size()));
      if (!data_key.Open(outer_.iv, outer_.payload, outer_.tag, &plaintext_)) {
        // The data key is right (GCM authenticated it) but the payload is not: tampered.
        crypto::Wipe(&data_key_plain_);
        return kRailsAuthFailedClass;
      }
    }
    opened_with_ = key;
    *key_id = id;
    return "";
  }
  return key_reference_ && !referenced ? kRailsUnknownKeyClass : kRailsAuthFailedClass;
}

void RailsMessage::Reseal(RailsKey& to, std::string* text) {
  Json& headers = json_["h"];
  if (envelope_) {
    // EnvelopeEncryptionKeyProvider#encrypt_data_key: the data key sealed with a random IV. The
    // payload stays as it is, sealed under the same data key.
    Sealed resealed;
    to.Seal(data_key_plain_, false, &resealed.iv, &resealed.payload, &resealed.tag);
    WriteSealed(resealed, &headers["k"]);
  } else {
    const bool deterministic = opened_with_->DeterministicIv(plaintext_) == outer_.iv;
    Sealed resealed;
    to.Seal(plaintext_, deterministic, &resealed.iv, &resealed.payload, &resealed.tag);
    WriteSealed(resealed, &json_);
  }
  if (key_reference_) {
    headers["i"] = EncodeB64(Bytes(to.reference().begin(), to.reference().end()));
  }
  *text = json_.dump();
}

}  // namespace rekey::crypto
