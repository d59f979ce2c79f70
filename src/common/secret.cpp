#include "common/secret.h"

#include <openssl/crypto.h>
#include <sys/mman.h>

#include <cstring>
#include <new>

namespace rekey {

Secret::Secret(size_t size) : size_(size) {
  if (size_ == 0) return;
  data_ = new uint8_t[size_]();
  // mlock fails without CAP_IPC_LOCK beyond RLIMIT_MEMLOCK; the wipe still protects the key.
  locked_ = mlock(data_, size_) == 0;
}

Secret::Secret(const uint8_t* data, size_t size) : Secret(size) {
  if (size_ != 0) std::memcpy(data_, data, size_);
}

Secret::~Secret() {
  Wipe();
}

Secret::Secret(Secret&& other) noexcept
    : data_(other.data_), size_(other.size_), locked_(other.locked_) {
  other.data_ = nullptr;
  other.size_ = 0;
  other.locked_ = false;
}

Secret& Secret::operator=(Secret&& other) noexcept {
  if (this != &other) {
    Wipe();
    data_ = other.data_;
    size_ = other.size_;
    locked_ = other.locked_;
    other.data_ = nullptr;
    other.size_ = 0;
    other.locked_ = false;
  }
  return *this;
}

bool Secret::Equals(const Secret& other) const {
  if (size_ != other.size_) return false;
  if (size_ == 0) return true;
  return CRYPTO_memcmp(data_, other.data_, size_) == 0;
}

void Secret::Wipe() noexcept {
  if (data_ == nullptr) return;
  OPENSSL_cleanse(data_, size_);
  if (locked_) munlock(data_, size_);
  delete[] data_;
  data_ = nullptr;
  size_ = 0;
  locked_ = false;
}

void WipeAndClear(std::string* buffer) {
  if (!buffer->empty()) OPENSSL_cleanse(buffer->data(), buffer->size());
  buffer->clear();
}

void WipeAndClear(std::vector<uint8_t>* buffer) {
  if (!buffer->empty()) OPENSSL_cleanse(buffer->data(), buffer->size());
  buffer->clear();
}

}  // namespace rekey
