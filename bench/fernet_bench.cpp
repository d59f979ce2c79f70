// The cost of trial decryption (crypto/fernet.h): a Fernet token names no key, so a rotation
// tries the job's keys in turn. A wrong key is rejected by the token's HMAC-SHA256 before any
// decryption, so each extra key costs one HMAC over the token. Measured here per token of a
// card-number-sized plaintext, against the Tink codec's open (which the value's prefix points at
// the right key); docs/FORMAT.md (section 11, "Trial decryption and its cost") quotes the figures.
//
// Not a test: built only on request (`cmake --build B --target fernet_bench`), never run by ctest.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "common/bytes.h"
#include "common/secret.h"
#include "crypto/aes_gcm.h"
#include "crypto/codec.h"
#include "crypto/fernet.h"

namespace rekey {
namespace {

constexpr size_t kPlaintextSize = 19;  // "4111 1111 1111 1111"

Secret KeyBytes(uint8_t first) {
  uint8_t raw[32];
  for (size_t i = 0; i < sizeof raw; ++i) raw[i] = uint8_t(first + i);
  return Secret(raw, sizeof raw);
}

// Opens one token whose key is the last of range(0) + 1 keys tried: range(0) wrong keys first.
void BM_FernetTrialOpen(benchmark::State& state) {
  const int wrong = int(state.range(0));
  std::vector<std::unique_ptr<crypto::FernetKey>> keys;
  std::vector<uint32_t> ids;
  for (int i = 0; i <= wrong; ++i) {
    keys.push_back(std::make_unique<crypto::FernetKey>(KeyBytes(uint8_t(32 * i))));
    ids.push_back(uint32_t(i));
  }
  const Bytes plaintext(kPlaintextSize, 0x34);
  Bytes token;
  keys.back()->Seal(1700000000, plaintext.data(), plaintext.size(), &token);
  const crypto::FernetKeyLookup lookup = [&](uint32_t id) { return keys[id].get(); };
  Bytes out;
  uint32_t key_id = 0;
  for (auto _ : state) {
    const crypto::DecodeStatus status =
        crypto::OpenFernetTrial(token.data(), token.size(), ids, lookup, &out, nullptr, &key_id);
    benchmark::DoNotOptimize(status);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_FernetTrialOpen)->Arg(0)->Arg(1)->Arg(3)->Arg(7);

// One rotation of a token: open under the source key (the first tried), seal under the target.
void BM_FernetRotate(benchmark::State& state) {
  const crypto::FernetKey source(KeyBytes(0x00));
  const crypto::FernetKey target(KeyBytes(0x20));
  const Bytes plaintext(kPlaintextSize, 0x34);
  Bytes token;
  source.Seal(1700000000, plaintext.data(), plaintext.size(), &token);
  Bytes opened;
  Bytes rotated;
  uint64_t timestamp = 0;
  for (auto _ : state) {
    source.Open(token.data(), token.size(), &opened, &timestamp);
    target.Seal(timestamp, opened.data(), opened.size(), &rotated);
    benchmark::DoNotOptimize(rotated.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_FernetRotate);

// The Tink codec's rotation of a value of the same plaintext, for comparison.
void BM_TinkRotate(benchmark::State& state) {
  crypto::AesGcmKey source(KeyBytes(0x00));
  crypto::AesGcmKey target(KeyBytes(0x20));
  const Bytes plaintext(kPlaintextSize, 0x34);
  Bytes value;
  crypto::SealTink(1, source, plaintext.data(), plaintext.size(), nullptr, 0, &value);
  const crypto::KeyLookup lookup = [&](uint32_t) { return &source; };
  Bytes opened;
  Bytes rotated;
  for (auto _ : state) {
    crypto::OpenTink(value.data(), value.size(), lookup, nullptr, 0, &opened, nullptr);
    rotated.clear();
    crypto::SealTink(2, target, opened.data(), opened.size(), nullptr, 0, &rotated);
    benchmark::DoNotOptimize(rotated.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_TinkRotate);

}  // namespace
}  // namespace rekey
