// AES-256-GCM through OpenSSL's EVP interface: the one AEAD primitive under every rekey codec and
// the local KMS wrapping.
//
// Thread-safety: an AesGcmKey keeps initialised cipher contexts, so the key schedule is computed
// once rather than per value. Seal and Open therefore mutate internal state: use one AesGcmKey per
// thread (they are cheap to create from the same Secret via Secret::Clone()).
#pragma once

#include <openssl/evp.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "common/bytes.h"
#include "common/secret.h"

namespace rekey::crypto {

constexpr size_t kAesKeySize = 32;
constexpr size_t kGcmIvSize = 12;
constexpr size_t kGcmTagSize = 16;

class AesGcmKey {
 public:
  // Takes ownership of `key`. Throws KeyError unless it is exactly 32 bytes.
  explicit AesGcmKey(Secret key);
  ~AesGcmKey();
  AesGcmKey(AesGcmKey&&) noexcept;
  AesGcmKey& operator=(AesGcmKey&&) noexcept;
  AesGcmKey(const AesGcmKey&) = delete;
  AesGcmKey& operator=(const AesGcmKey&) = delete;

  // Appends IV || ciphertext || tag to `out`, with a fresh random 96-bit IV.
  void Seal(const uint8_t* plaintext, size_t size, const uint8_t* ad, size_t ad_size, Bytes* out);
  // As Seal with a caller-chosen IV (kGcmIvSize bytes). Only for test vectors: reusing an IV under
  // one key destroys GCM's security.
  void SealWithIv(const uint8_t* iv, const uint8_t* plaintext, size_t size, const uint8_t* ad,
                  size_t ad_size, Bytes* out);
  // `sealed` is IV || ciphertext || tag. Returns true iff it authenticates under this key and
  // `ad`; then `*plaintext` holds the plaintext (replacing its contents). On false, `*plaintext`
  // is cleared. Never throws for malformed input.
  bool Open(const uint8_t* sealed, size_t size, const uint8_t* ad, size_t ad_size,
            Bytes* plaintext);

 private:
  Secret key_;
  EVP_CIPHER_CTX* encrypt_ = nullptr;
  EVP_CIPHER_CTX* decrypt_ = nullptr;
};

// Fills `size` bytes from OpenSSL's CSPRNG. Throws PermanentError if it fails.
void RandomBytes(uint8_t* out, size_t size);

// Fills a fresh random GCM nonce (kGcmIvSize bytes) from OpenSSL's CSPRNG, drawn in blocks of a
// few KiB per thread: one RAND_bytes call costs about 6,700 instructions in OpenSSL 3, more than
// the encryption of a short value. Every byte is handed out at most once; a forked child never
// reuses its parent's buffered bytes. Nonces are public, so the buffer holds no secret. Not for
// key material (use RandomBytes). Throws PermanentError if the CSPRNG fails. Thread-safe.
void RandomIv(uint8_t* iv);

}  // namespace rekey::crypto
