#include "kms/local_kms.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <utility>

#include "common/error.h"
#include "crypto/aes_gcm.h"

namespace rekey::kms {

std::optional<std::string> ProcessGetenv(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

namespace {

constexpr char kNoMasterKey[] =
    "no master key: set REKEY_MASTER_KEY_FILE to a file holding 32 random bytes (e.g. `head -c32 "
    "/dev/urandom > master.key`) or REKEY_MASTER_KEY to their base64";

// Decodes base64 text of a 32-byte key. `what` names the source in messages; the text itself
// never appears in them.
Secret DecodeBase64MasterKey(std::string* text, const std::string& what) {
  static const std::string kExpected =
      "the master key must be 32 random bytes, or their base64 (44 characters, e.g. `head -c32 "
      "/dev/urandom | base64`)";
  size_t text_size = text->size();
  std::optional<Bytes> decoded = Base64Decode(*text);
  WipeAndClear(text);
  if (!decoded) {
    throw ConfigError(what + " is not valid base64 (" + std::to_string(text_size) + " bytes); " +
                      kExpected);
  }
  Secret key(decoded->data(), decoded->size());
  size_t size = decoded->size();
  WipeAndClear(&*decoded);
  if (size != kDataKeySize) {
    throw ConfigError(what + " decodes to " + std::to_string(size) + " bytes, not 32; " +
                      kExpected);
  }
  return key;
}

Secret ReadMasterKeyFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw ConfigError("cannot read REKEY_MASTER_KEY_FILE " + path + ": " + std::strerror(errno));
  }
  std::string contents((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) {
    WipeAndClear(&contents);
    throw ConfigError("cannot read REKEY_MASTER_KEY_FILE " + path);
  }
  // Exactly 32 bytes is the raw key; anything else must be its base64 text (44 characters, plus
  // perhaps a newline), which can never be 32 bytes long.
  if (contents.size() == kDataKeySize) {
    Secret key(reinterpret_cast<const uint8_t*>(contents.data()), contents.size());
    WipeAndClear(&contents);
    return key;
  }
  return DecodeBase64MasterKey(&contents, "REKEY_MASTER_KEY_FILE " + path);
}

}  // namespace

Bytes LocalWrapAssociatedData(uint32_t key_id) {
  Bytes ad = ToBytes(kLocalWrapAdPrefix);
  uint8_t id[4];
  PutUint32BigEndian(key_id, id);
  ad.insert(ad.end(), id, id + 4);
  return ad;
}

std::string LocalKms::KeyRefFor(const Secret& master_key) {
  uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned int digest_size = 0;
  if (EVP_Digest(master_key.data(), master_key.size(), digest, &digest_size, EVP_sha256(),
                 nullptr) != 1) {
    throw PermanentError("OpenSSL: SHA-256 failed");
  }
  return std::string(kLocalProvider) + ":" + HexEncode(digest, 8);
}

LocalKms::LocalKms(const GetenvFn& getenv) {
  std::optional<std::string> inline_key = getenv(kMasterKeyEnv);
  std::optional<std::string> file = getenv(kMasterKeyFileEnv);
  // An empty variable counts as unset, as shells and container runtimes often leave them so.
  if (inline_key && inline_key->empty()) inline_key.reset();
  if (file && file->empty()) file.reset();
  if (inline_key && file) {
    WipeAndClear(&*inline_key);
    throw ConfigError(
        "both REKEY_MASTER_KEY and REKEY_MASTER_KEY_FILE are set; set exactly one of them");
  }
  if (!inline_key && !file) throw ConfigError(kNoMasterKey);
  if (inline_key) {
    source_ = kMasterKeyEnv;
    master_key_ = DecodeBase64MasterKey(&*inline_key, "REKEY_MASTER_KEY");
  } else {
    source_ = kMasterKeyFileEnv;
    path_ = *file;
    master_key_ = ReadMasterKeyFile(path_);
  }
  key_ref_ = KeyRefFor(master_key_);
}

LocalKms::LocalKms(Secret master_key, std::string source)
    : master_key_(std::move(master_key)), source_(std::move(source)) {
  if (master_key_.size() != kDataKeySize) {
    throw ConfigError(source_ + " holds " + std::to_string(master_key_.size()) +
                      " bytes; the master key must be exactly 32 bytes");
  }
  key_ref_ = KeyRefFor(master_key_);
}

GeneratedDataKey LocalKms::GenerateDataKey(uint32_t key_id) {
  Secret key(kDataKeySize);
  crypto::RandomBytes(key.mutable_data(), key.size());
  GeneratedDataKey result = WrapDataKey(key_id, key);
  return result;
}

GeneratedDataKey LocalKms::WrapDataKey(uint32_t key_id, const Secret& plaintext) {
  if (plaintext.size() != kDataKeySize) {
    throw KeyError("data key " + std::to_string(key_id) + " is " +
                   std::to_string(plaintext.size()) + " bytes; data keys must be exactly 32 bytes");
  }
  crypto::AesGcmKey cipher(master_key_.Clone());
  Bytes ad = LocalWrapAssociatedData(key_id);
  GeneratedDataKey result;
  result.wrapped.push_back(kLocalWrapVersion);
  cipher.Seal(plaintext.data(), plaintext.size(), ad.data(), ad.size(), &result.wrapped);
  result.plaintext = plaintext.Clone();
  result.kms_key_ref = key_ref_;
  return result;
}

Secret LocalKms::UnwrapDataKey(uint32_t key_id, const std::string& kms_key_ref,
                               const Bytes& wrapped) {
  const std::string id = std::to_string(key_id);
  if (kms_key_ref.rfind(std::string(kLocalProvider) + ":", 0) != 0) {
    throw KeyError("cannot unwrap data key " + id + ": it is wrapped by " + kms_key_ref +
                   ", not by the local master key; use the KMS provider it was created with");
  }
  Bytes plaintext;
  bool ok = false;
  if (wrapped.size() > 1 && wrapped[0] == kLocalWrapVersion) {
    crypto::AesGcmKey cipher(master_key_.Clone());
    Bytes ad = LocalWrapAssociatedData(key_id);
    ok = cipher.Open(wrapped.data() + 1, wrapped.size() - 1, ad.data(), ad.size(), &plaintext);
  }
  if (!ok) {
    if (kms_key_ref != key_ref_) {
      throw KeyError("cannot unwrap data key " + id + ": it was wrapped under master key " +
                     kms_key_ref + " but " + source_ + " holds " + key_ref_ + "; point " + source_ +
                     " at the master key used when key " + id + " was created");
    }
    throw KeyError("cannot unwrap data key " + id + " with master key " + key_ref_ +
                   ": the wrapped key in rekey.keys is corrupt; restore rekey.keys from a backup");
  }
  Secret key(plaintext.data(), plaintext.size());
  size_t size = plaintext.size();
  WipeAndClear(&plaintext);
  if (size != kDataKeySize) {
    throw KeyError("data key " + id + " unwraps to " + std::to_string(size) +
                   " bytes, not 32: the wrapped key in rekey.keys is corrupt");
  }
  return key;
}

namespace {

void RequireThisMasterKey(const std::string& key_ref, const std::string& own_ref,
                          const std::string& source) {
  if (key_ref != own_ref) {
    throw KeyError("KMS key " + key_ref + " is not the local master key: " + source + " holds " +
                   own_ref + "; pass --kms-key " + own_ref + " or point " + source +
                   " at the master key " + key_ref + " names");
  }
}

}  // namespace

Bytes LocalKms::EncryptBlob(const std::string& key_ref, const Secret& plaintext,
                            const Bytes& associated_data) {
  RequireThisMasterKey(key_ref, key_ref_, source_);
  crypto::AesGcmKey cipher(master_key_.Clone());
  Bytes sealed;
  cipher.Seal(plaintext.data(), plaintext.size(), associated_data.data(), associated_data.size(),
              &sealed);
  return sealed;
}

Secret LocalKms::DecryptBlob(const std::string& key_ref, const Bytes& ciphertext,
                             const Bytes& associated_data) {
  RequireThisMasterKey(key_ref, key_ref_, source_);
  crypto::AesGcmKey cipher(master_key_.Clone());
  Bytes plaintext;
  if (!cipher.Open(ciphertext.data(), ciphertext.size(), associated_data.data(),
                   associated_data.size(), &plaintext)) {
    throw KeyError("it does not authenticate under master key " + key_ref_ + " from " + source_ +
                   " (another master key, or altered bytes); point REKEY_MASTER_KEY_FILE (or "
                   "REKEY_MASTER_KEY) at the master key it was encrypted with");
  }
  Secret out(plaintext.data(), plaintext.size());
  WipeAndClear(&plaintext);
  return out;
}

std::string LocalKms::Describe() {
  std::string line = std::string(kLocalProvider) + " (master key " + key_ref_ + " from " + source_;
  if (!path_.empty()) line += "=" + path_;
  return line + ")";
}

}  // namespace rekey::kms
