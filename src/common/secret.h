// Key material: the only type in rekey that holds plaintext data keys and master keys.
//
// A Secret owns a buffer that is wiped with OPENSSL_cleanse when the Secret is destroyed, moved
// from, or reassigned, and locked in memory (mlock) where the platform allows it, so it never
// reaches swap. It cannot be copied implicitly, streamed, formatted or converted to a string: the
// only way to the bytes is data()/size(), which crypto code uses to key a cipher. A Secret is not
// thread-safe to mutate; const access from several threads is safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <string_view>
#include <vector>

namespace rekey {

class Secret {
 public:
  Secret() = default;
  // Copies `size` bytes from `data`; the caller remains responsible for wiping its own copy.
  Secret(const uint8_t* data, size_t size);
  explicit Secret(size_t size);  // zero-filled, for filling in place (e.g. RAND_bytes)
  ~Secret();

  Secret(Secret&& other) noexcept;
  Secret& operator=(Secret&& other) noexcept;
  Secret(const Secret&) = delete;
  Secret& operator=(const Secret&) = delete;

  // An explicit copy, for the rare places that must keep two owners (a cache and a caller).
  Secret Clone() const { return Secret(data_, size_); }

  const uint8_t* data() const { return data_; }
  uint8_t* mutable_data() { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  // True iff the buffer is locked in memory (mlock succeeded: RLIMIT_MEMLOCK or CAP_IPC_LOCK
  // allowed it). An empty Secret holds nothing to lock.
  bool locked() const { return locked_; }

  // Constant-time comparison.
  bool Equals(const Secret& other) const;

 private:
  void Wipe() noexcept;

  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool locked_ = false;
};

// Wipes (OPENSSL_cleanse) and clears a transient buffer that held key material on its way into
// or out of a Secret: a base64 text from a file or the environment, a decoded KMS response.
void WipeAndClear(std::string* buffer);
void WipeAndClear(std::vector<uint8_t>* buffer);

// Printing a secret is a compile error, so it cannot slip into a log line or exception message.
std::ostream& operator<<(std::ostream&, const Secret&) = delete;

}  // namespace rekey
