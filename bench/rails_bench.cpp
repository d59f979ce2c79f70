// The cost of a Rails message (crypto/rails.h) in a rotation: the JSON parse, trial decryption
// (a message without "i" names no key: each wrong key costs one AES-GCM open whose tag fails),
// and the re-seal with its JSON re-serialization. Per message of a card-number-sized plaintext;
// docs/FORMAT.md (section 12, "rails") quotes the figures. bench/fernet_bench.cpp's BM_TinkRotate
// is the Tink codec's figure for the same plaintext.
//
// Not a test: built only on request (`cmake --build B --target rails_bench`), never run by ctest.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/secret.h"
#include "crypto/rails.h"

namespace rekey {
namespace {

Secret KeyBytes(uint8_t first) {
  uint8_t raw[32];
  for (size_t i = 0; i < sizeof raw; ++i) raw[i] = uint8_t(first + i);
  return Secret(raw, sizeof raw);
}

// A message of "4111 1111 1111 1111" under `key`, as Rails writes it (random IV).
std::string MessageUnder(crypto::RailsKey& key) {
  const Bytes plaintext(19, 0x34);
  Bytes iv, payload, tag;
  key.Seal(plaintext, false, &iv, &payload, &tag);
  return "{\"p\":\"" + Base64Encode(payload) + "\",\"h\":{\"iv\":\"" + Base64Encode(iv) +
         "\",\"at\":\"" + Base64Encode(tag) + "\"}}";
}

// Parses and opens one message whose key is the last of range(0) + 1 keys tried.
void BM_RailsTrialOpen(benchmark::State& state) {
  const int wrong = int(state.range(0));
  std::vector<std::unique_ptr<crypto::RailsKey>> keys;
  std::vector<uint32_t> ids;
  for (int i = 0; i <= wrong; ++i) {
    keys.push_back(std::make_unique<crypto::RailsKey>(KeyBytes(uint8_t(32 * i))));
    ids.push_back(uint32_t(i));
  }
  const std::string text = MessageUnder(*keys.back());
  const crypto::RailsKeyLookup lookup = [&](uint32_t id) { return keys[id].get(); };
  crypto::RailsMessage message;
  uint32_t key_id = 0;
  for (auto _ : state) {
    message.Parse(text);
    benchmark::DoNotOptimize(message.Open(ids, lookup, &key_id));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RailsTrialOpen)->Arg(0)->Arg(1)->Arg(3)->Arg(7);

// One rotation of a message: parse, open under the source key (the first tried), re-seal under
// the target and serialize.
void BM_RailsRotate(benchmark::State& state) {
  crypto::RailsKey source(KeyBytes(0x00));
  crypto::RailsKey target(KeyBytes(0x20));
  const std::string text = MessageUnder(source);
  const crypto::RailsKeyLookup lookup = [&](uint32_t id) { return id == 0 ? &source : &target; };
  crypto::RailsMessage message;
  std::string rotated;
  uint32_t key_id = 0;
  for (auto _ : state) {
    message.Parse(text);
    message.Open({0}, lookup, &key_id);
    message.Reseal(target, &rotated);
    benchmark::DoNotOptimize(rotated.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RailsRotate);

}  // namespace
}  // namespace rekey
