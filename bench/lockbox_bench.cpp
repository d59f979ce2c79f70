// The cost of the lockbox codec's trial decryption (crypto/lockbox.h): a Lockbox value names no
// key, so a rotation tries the job's keys in turn, each as the column's attribute key. A wrong key
// is rejected by the GCM tag, which costs a whole AES-GCM open of the value (there is no cheaper
// check first, unlike Fernet's HMAC); and each batch derives the attribute keys afresh
// (HKDF-SHA384). Measured per value of a card-number-sized plaintext; docs/FORMAT.md (section 12,
// "lockbox", Cost) quotes the figures.
//
// Not a test: built only on request (`cmake --build B --target lockbox_bench`), never run by ctest.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "common/bytes.h"
#include "common/secret.h"
#include "crypto/lockbox.h"

namespace rekey {
namespace {

constexpr size_t kPlaintextSize = 19;  // "4111 1111 1111 1111"
const crypto::LockboxKeyNames kNames{"users", "card_ciphertext"};

Secret KeyBytes(uint8_t first) {
  uint8_t raw[32];
  for (size_t i = 0; i < sizeof raw; ++i) raw[i] = uint8_t(first + i);
  return Secret(raw, sizeof raw);
}

crypto::LockboxMasterKeySource Masters() {
  return [](uint32_t id) { return KeyBytes(uint8_t(32 * id)); };
}

// Opens one value whose key is the last of range(0) + 1 keys tried: range(0) wrong keys first.
// Attribute keys are derived once, outside the loop, as within one batch.
void BM_LockboxTrialOpen(benchmark::State& state) {
  const int wrong = int(state.range(0));
  crypto::LockboxAttributeKeys keys(Masters());
  std::vector<uint32_t> ids;
  for (int i = 0; i <= wrong; ++i) ids.push_back(uint32_t(i));
  const Bytes plaintext(kPlaintextSize, 0x34);
  Bytes value;
  crypto::SealLockbox(*keys.Get(ids.back(), kNames), plaintext.data(), plaintext.size(), &value);
  Bytes out;
  uint32_t key_id = 0;
  for (auto _ : state) {
    const crypto::DecodeStatus status =
        crypto::OpenLockboxTrial(value.data(), value.size(), ids, kNames, keys, &out, &key_id);
    benchmark::DoNotOptimize(status);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_LockboxTrialOpen)->Arg(0)->Arg(1)->Arg(3)->Arg(7);

// One rotation of a value: open under the source key (the first tried), seal under the target.
void BM_LockboxRotate(benchmark::State& state) {
  crypto::LockboxAttributeKeys keys(Masters());
  const Bytes plaintext(kPlaintextSize, 0x34);
  Bytes value;
  crypto::SealLockbox(*keys.Get(0, kNames), plaintext.data(), plaintext.size(), &value);
  const std::vector<uint32_t> ids = {0};
  Bytes out, sealed;
  uint32_t key_id = 0;
  for (auto _ : state) {
    crypto::OpenLockboxTrial(value.data(), value.size(), ids, kNames, keys, &out, &key_id);
    crypto::SealLockbox(*keys.Get(1, kNames), out.data(), out.size(), &sealed);
    benchmark::DoNotOptimize(sealed.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_LockboxRotate);

// One attribute key derivation (HKDF-SHA384), paid per key and column per batch.
void BM_LockboxAttributeKey(benchmark::State& state) {
  const Secret master = KeyBytes(0);
  for (auto _ : state) {
    Secret key = crypto::LockboxAttributeKey(master, kNames);
    benchmark::DoNotOptimize(key.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_LockboxAttributeKey);

}  // namespace
}  // namespace rekey
