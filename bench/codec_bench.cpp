// Micro-benchmarks of the per-value client CPU of a rotation: the codecs (crypto/codec.h), the
// AES-256-GCM primitive under them (crypto/aes_gcm.h), and the text-format bytea conversions the
// rotator does around them today (hex decode of the selected value, hex encode into the bytea[]
// literal of the UPDATE). bench/run_bench.sh runs this next to `openssl speed -evp aes-256-gcm`
// on the same machine; bench/README.md explains the figures.
//
// Not a test: built only on request (`cmake --build B --target codec_bench`), never run by ctest.
#include <benchmark/benchmark.h>
#include <libpq-fe.h>

#include <cstdint>
#include <string>

#include "common/bytes.h"
#include "common/secret.h"
#include "crypto/aes_gcm.h"
#include "crypto/codec.h"

namespace rekey {
namespace {

// The fixture's data keys (shared/anchors/README.md): key 1 = 0x00..0x1f, key 2 = 0x20..0x3f.
Secret FixtureKey(uint8_t first) {
  uint8_t raw[crypto::kAesKeySize];
  for (size_t i = 0; i < sizeof raw; ++i) raw[i] = uint8_t(first + i);
  return Secret(raw, sizeof raw);
}

Bytes Plaintext(size_t size) {
  Bytes p(size);
  for (size_t i = 0; i < size; ++i) p[i] = uint8_t(i * 31 + 7);
  return p;
}

void SetCounters(benchmark::State& state, size_t size) {
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(size));
}

// --- AES-256-GCM primitive (one reused EVP context per direction, as the rotator uses it) -----

void BM_AesGcmSeal(benchmark::State& state) {
  const size_t size = size_t(state.range(0));
  crypto::AesGcmKey key(FixtureKey(0x20));
  const Bytes plaintext = Plaintext(size);
  Bytes out;
  out.reserve(size + crypto::kRawOverhead);
  for (auto _ : state) {
    out.clear();
    key.Seal(plaintext.data(), plaintext.size(), nullptr, 0, &out);
    benchmark::DoNotOptimize(out.data());
  }
  SetCounters(state, size);
}
BENCHMARK(BM_AesGcmSeal)->Arg(48)->Arg(64)->Arg(1024);

void BM_AesGcmOpen(benchmark::State& state) {
  const size_t size = size_t(state.range(0));
  crypto::AesGcmKey key(FixtureKey(0x00));
  const Bytes plaintext = Plaintext(size);
  Bytes sealed;
  key.Seal(plaintext.data(), plaintext.size(), nullptr, 0, &sealed);
  Bytes out;
  for (auto _ : state) {
    if (!key.Open(sealed.data(), sealed.size(), nullptr, 0, &out)) {
      state.SkipWithError("open failed");
      break;
    }
    benchmark::DoNotOptimize(out.data());
  }
  SetCounters(state, size);
}
BENCHMARK(BM_AesGcmOpen)->Arg(48)->Arg(64)->Arg(1024);

// The fresh IV every Seal draws: one CSPRNG call per value (Arg = 12), against drawing a whole
// 1000-value batch's IVs in one call (Arg = 12000; divide its time by 1000).
void BM_RandomBytes(benchmark::State& state) {
  const size_t size = size_t(state.range(0));
  Bytes out(size);
  for (auto _ : state) {
    crypto::RandomBytes(out.data(), out.size());
    benchmark::DoNotOptimize(out.data());
  }
  SetCounters(state, size);
}
BENCHMARK(BM_RandomBytes)->Arg(12)->Arg(12000);

// --- Tink codec ------------------------------------------------------------------------------

void BM_TinkSeal(benchmark::State& state) {
  const size_t size = size_t(state.range(0));
  crypto::AesGcmKey key(FixtureKey(0x20));
  const Bytes plaintext = Plaintext(size);
  Bytes out;
  out.reserve(size + crypto::kTinkOverhead);
  for (auto _ : state) {
    out.clear();
    crypto::SealTink(2, key, plaintext.data(), plaintext.size(), nullptr, 0, &out);
    benchmark::DoNotOptimize(out.data());
  }
  SetCounters(state, size);
}
BENCHMARK(BM_TinkSeal)->Arg(48)->Arg(64)->Arg(1024);

void BM_TinkOpen(benchmark::State& state) {
  const size_t size = size_t(state.range(0));
  crypto::AesGcmKey key(FixtureKey(0x00));
  const Bytes plaintext = Plaintext(size);
  Bytes sealed;
  crypto::SealTink(1, key, plaintext.data(), plaintext.size(), nullptr, 0, &sealed);
  const crypto::KeyLookup lookup = [&key](uint32_t id) { return id == 1 ? &key : nullptr; };
  Bytes out;
  uint32_t key_id = 0;
  for (auto _ : state) {
    if (crypto::OpenTink(sealed.data(), sealed.size(), lookup, nullptr, 0, &out, &key_id) !=
        crypto::DecodeStatus::kOk) {
      state.SkipWithError("open failed");
      break;
    }
    benchmark::DoNotOptimize(out.data());
  }
  SetCounters(state, size);
}
BENCHMARK(BM_TinkOpen)->Arg(48)->Arg(64)->Arg(1024);

// One value's whole crypto in a rotation: open under key 1, seal under key 2 (48 bytes is the
// anchors fixture's plaintext size, an 81-byte token).
void BM_TinkRotateValue(benchmark::State& state) {
  const size_t size = size_t(state.range(0));
  crypto::AesGcmKey old_key(FixtureKey(0x00));
  crypto::AesGcmKey new_key(FixtureKey(0x20));
  const Bytes plaintext = Plaintext(size);
  Bytes sealed;
  crypto::SealTink(1, old_key, plaintext.data(), plaintext.size(), nullptr, 0, &sealed);
  const crypto::KeyLookup lookup = [&old_key](uint32_t id) { return id == 1 ? &old_key : nullptr; };
  Bytes opened;
  Bytes out;
  uint32_t key_id = 0;
  for (auto _ : state) {
    crypto::OpenTink(sealed.data(), sealed.size(), lookup, nullptr, 0, &opened, &key_id);
    out.clear();
    crypto::SealTink(2, new_key, opened.data(), opened.size(), nullptr, 0, &out);
    benchmark::DoNotOptimize(out.data());
  }
  SetCounters(state, size);
}
BENCHMARK(BM_TinkRotateValue)->Arg(48)->Arg(64)->Arg(1024);

// --- Text-format bytea, as the rotator exchanges values with PostgreSQL today ------------------

// Server text output "\x<hex>" back to bytes (what pqxx::binarystring does via PQunescapeBytea).
void BM_ByteaTextDecode(benchmark::State& state) {
  const size_t size = size_t(state.range(0));
  const Bytes value = Plaintext(size);
  const std::string text = "\\x" + HexEncode(value);
  for (auto _ : state) {
    size_t n = 0;
    unsigned char* bytes =
        PQunescapeBytea(reinterpret_cast<const unsigned char*>(text.c_str()), &n);
    benchmark::DoNotOptimize(bytes);
    PQfreemem(bytes);
  }
  SetCounters(state, size);
}
BENCHMARK(BM_ByteaTextDecode)->Arg(81)->Arg(97)->Arg(1057);

// Bytes to one bytea[] literal element "\\x<hex>" (the rotator's AppendByteaElement).
void BM_ByteaArrayElementEncode(benchmark::State& state) {
  const size_t size = size_t(state.range(0));
  const Bytes value = Plaintext(size);
  std::string literal;
  literal.reserve(1000 * (2 * size + 6));
  int n = 0;
  for (auto _ : state) {
    if (++n == 1000) {
      literal.clear();
      n = 0;
    }
    literal += ",\"\\\\x";
    literal += HexEncode(value.data(), value.size());
    literal += '"';
    benchmark::DoNotOptimize(literal.data());
  }
  SetCounters(state, size);
}
BENCHMARK(BM_ByteaArrayElementEncode)->Arg(81)->Arg(97)->Arg(1057);

}  // namespace
}  // namespace rekey
