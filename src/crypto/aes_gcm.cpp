#include "crypto/aes_gcm.h"

#include <openssl/rand.h>
#include <pthread.h>

#include <atomic>
#include <cstring>
#include <string>

#include "common/error.h"

namespace rekey::crypto {
namespace {

EVP_CIPHER_CTX* NewContext(const Secret& key, bool encrypt) {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  if (ctx == nullptr) throw PermanentError("OpenSSL: cannot allocate a cipher context");
  int ok = encrypt ? EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, key.data(), nullptr)
                   : EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, key.data(), nullptr);
  if (ok != 1) {
    EVP_CIPHER_CTX_free(ctx);
    throw PermanentError("OpenSSL: cannot initialise AES-256-GCM");
  }
  return ctx;
}

}  // namespace

void RandomBytes(uint8_t* out, size_t size) {
  if (RAND_bytes(out, static_cast<int>(size)) != 1) {
    throw PermanentError("OpenSSL: the random number generator failed");
  }
}

namespace {

// Bumped in a fork's child: buffers filled before the fork are then discarded, so parent and
// child never hand out the same nonce.
std::atomic<uint64_t> fork_generation{0};

struct IvBuffer {
  static constexpr size_t kSize = 4096 - 4096 % kGcmIvSize;
  uint8_t bytes[kSize];
  size_t used = kSize;
  uint64_t generation = 0;
  ~IvBuffer() { OPENSSL_cleanse(bytes, sizeof bytes); }
};

}  // namespace

void RandomIv(uint8_t* iv) {
  static const bool registered = [] {
    pthread_atfork(nullptr, nullptr, [] { fork_generation.fetch_add(1); });
    return true;
  }();
  (void)registered;
  thread_local IvBuffer buffer;
  const uint64_t generation = fork_generation.load(std::memory_order_relaxed);
  if (buffer.used == IvBuffer::kSize || buffer.generation != generation) {
    RandomBytes(buffer.bytes, IvBuffer::kSize);
    buffer.used = 0;
    buffer.generation = generation;
  }
  std::memcpy(iv, buffer.bytes + buffer.used, kGcmIvSize);
  OPENSSL_cleanse(buffer.bytes + buffer.used, kGcmIvSize);
  buffer.used += kGcmIvSize;
}

AesGcmKey::AesGcmKey(Secret key) : key_(std::move(key)) {
  if (key_.size() != kAesKeySize) {
    throw KeyError("an AES-256-GCM key must be 32 bytes, got " + std::to_string(key_.size()));
  }
  encrypt_ = NewContext(key_, true);
  decrypt_ = NewContext(key_, false);
}

AesGcmKey::~AesGcmKey() {
  EVP_CIPHER_CTX_free(encrypt_);
  EVP_CIPHER_CTX_free(decrypt_);
}

AesGcmKey::AesGcmKey(AesGcmKey&& other) noexcept
    : key_(std::move(other.key_)), encrypt_(other.encrypt_), decrypt_(other.decrypt_) {
  other.encrypt_ = nullptr;
  other.decrypt_ = nullptr;
}

AesGcmKey& AesGcmKey::operator=(AesGcmKey&& other) noexcept {
  if (this != &other) {
    EVP_CIPHER_CTX_free(encrypt_);
    EVP_CIPHER_CTX_free(decrypt_);
    key_ = std::move(other.key_);
    encrypt_ = other.encrypt_;
    decrypt_ = other.decrypt_;
    other.encrypt_ = nullptr;
    other.decrypt_ = nullptr;
  }
  return *this;
}

void AesGcmKey::Seal(const uint8_t* plaintext, size_t size, const uint8_t* ad, size_t ad_size,
                     Bytes* out) {
  uint8_t iv[kGcmIvSize];
  RandomIv(iv);
  SealWithIv(iv, plaintext, size, ad, ad_size, out);
}

void AesGcmKey::SealWithIv(const uint8_t* iv, const uint8_t* plaintext, size_t size,
                           const uint8_t* ad, size_t ad_size, Bytes* out) {
  const size_t start = out->size();
  out->resize(start + kGcmIvSize + size + kGcmTagSize);
  uint8_t* dst = out->data() + start;
  std::copy(iv, iv + kGcmIvSize, dst);
  int len = 0;
  bool ok = EVP_EncryptInit_ex(encrypt_, nullptr, nullptr, nullptr, iv) == 1;
  if (ok && ad_size > 0) ok = EVP_EncryptUpdate(encrypt_, nullptr, &len, ad, int(ad_size)) == 1;
  if (ok && size > 0) {
    ok = EVP_EncryptUpdate(encrypt_, dst + kGcmIvSize, &len, plaintext, int(size)) == 1;
  }
  if (ok) ok = EVP_EncryptFinal_ex(encrypt_, dst + kGcmIvSize + size, &len) == 1;
  if (ok) {
    ok = EVP_CIPHER_CTX_ctrl(encrypt_, EVP_CTRL_GCM_GET_TAG, int(kGcmTagSize),
                             dst + kGcmIvSize + size) == 1;
  }
  if (!ok) {
    out->resize(start);
    throw PermanentError("OpenSSL: AES-256-GCM encryption failed");
  }
}

bool AesGcmKey::Open(const uint8_t* sealed, size_t size, const uint8_t* ad, size_t ad_size,
                     Bytes* plaintext) {
  plaintext->clear();
  if (size < kGcmIvSize + kGcmTagSize) return false;
  const size_t ct_size = size - kGcmIvSize - kGcmTagSize;
  plaintext->resize(ct_size);
  int len = 0;
  // OpenSSL's GCM never writes through the tag pointer on decrypt; the cast is its API's.
  void* tag = const_cast<uint8_t*>(sealed + kGcmIvSize + ct_size);
  bool ok = EVP_DecryptInit_ex(decrypt_, nullptr, nullptr, nullptr, sealed) == 1;
  if (ok && ad_size > 0) ok = EVP_DecryptUpdate(decrypt_, nullptr, &len, ad, int(ad_size)) == 1;
  if (ok && ct_size > 0) {
    ok = EVP_DecryptUpdate(decrypt_, plaintext->data(), &len, sealed + kGcmIvSize, int(ct_size)) ==
         1;
  }
  if (ok) ok = EVP_CIPHER_CTX_ctrl(decrypt_, EVP_CTRL_GCM_SET_TAG, int(kGcmTagSize), tag) == 1;
  if (ok) ok = EVP_DecryptFinal_ex(decrypt_, plaintext->data() + ct_size, &len) == 1;
  if (!ok) {
    OPENSSL_cleanse(plaintext->data(), plaintext->size());
    plaintext->clear();
  }
  return ok;
}

}  // namespace rekey::crypto
