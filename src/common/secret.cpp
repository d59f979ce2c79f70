#include "common/secret.h"

#include <openssl/crypto.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>

namespace rekey {
namespace {

// mlock and munlock act on whole pages and do not nest: munlock for one Secret would unlock the
// page a neighbouring Secret on the same heap page still lives on. So the pages are counted, and
// a page is unlocked only when the last Secret on it goes.
std::mutex g_pages_mu;

std::unordered_map<uintptr_t, size_t>& LockedPages() {
  static auto* pages = new std::unordered_map<uintptr_t, size_t>();  // never destroyed: static
  return *pages;                                                     // Secrets may outlive it
}

uintptr_t PageSize() {
  static const uintptr_t size = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  return size;
}

// Locks the pages of [data, data + size); true iff they are all locked.
bool LockPages(const uint8_t* data, size_t size) {
  std::lock_guard<std::mutex> lock(g_pages_mu);
  // mlock fails without CAP_IPC_LOCK beyond RLIMIT_MEMLOCK; the wipe still protects the key.
  if (mlock(data, size) != 0) return false;
  const uintptr_t first = reinterpret_cast<uintptr_t>(data) & ~(PageSize() - 1);
  const uintptr_t last = (reinterpret_cast<uintptr_t>(data) + size - 1) & ~(PageSize() - 1);
  for (uintptr_t page = first; page <= last; page += PageSize()) LockedPages()[page]++;
  return true;
}

void UnlockPages(const uint8_t* data, size_t size) noexcept {
  std::lock_guard<std::mutex> lock(g_pages_mu);
  const uintptr_t first = reinterpret_cast<uintptr_t>(data) & ~(PageSize() - 1);
  const uintptr_t last = (reinterpret_cast<uintptr_t>(data) + size - 1) & ~(PageSize() - 1);
  for (uintptr_t page = first; page <= last; page += PageSize()) {
    auto it = LockedPages().find(page);
    if (it == LockedPages().end() || --it->second > 0) continue;
    LockedPages().erase(it);
    munlock(reinterpret_cast<void*>(page), PageSize());
  }
}

}  // namespace

Secret::Secret(size_t size) : size_(size) {
  if (size_ == 0) return;
  data_ = new uint8_t[size_]();
  locked_ = LockPages(data_, size_);
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
  if (locked_) UnlockPages(data_, size_);
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
