// ResilientKms over a scripted inner client, with a fake clock and sleeper: no real waiting.
#include "kms/resilient_kms.h"

#include <gtest/gtest.h>

#include <deque>

#include "common/error.h"
#include "kms/kms_registry.h"
#include "kms/token_bucket.h"

namespace rekey::kms {
namespace {

using std::chrono::milliseconds;
using std::chrono::nanoseconds;

// Fails (or not) as scripted: 'T' transient, 'K' KeyError, 'C' ConfigError, '.' success.
class ScriptedKms : public KmsClient {
 public:
  explicit ScriptedKms(std::string script) : script_(std::move(script)) {}
  std::string provider() const override { return "scripted"; }
  std::string default_key_ref() const override { return "ref"; }
  GeneratedDataKey GenerateDataKey(uint32_t) override {
    Next();
    GeneratedDataKey k;
    k.plaintext = Secret(32);
    return k;
  }
  GeneratedDataKey WrapDataKey(uint32_t id, const Secret&) override { return GenerateDataKey(id); }
  Secret UnwrapDataKey(uint32_t, const std::string&, const Bytes&) override {
    Next();
    return Secret(32);
  }
  std::string Describe() override {
    Next();
    return "scripted";
  }
  Bytes EncryptBlob(const std::string&, const Secret& plaintext, const Bytes&) override {
    Next();
    return Bytes(plaintext.data(), plaintext.data() + plaintext.size());
  }
  Secret DecryptBlob(const std::string&, const Bytes& ciphertext, const Bytes&) override {
    Next();
    return Secret(ciphertext.data(), ciphertext.size());
  }
  int calls = 0;

 private:
  void Next() {
    char c = calls < static_cast<int>(script_.size()) ? script_[calls] : '.';
    calls++;
    if (c == 'T') throw TransientError("throttled");
    if (c == 'K') throw KeyError("denied");
    if (c == 'C') throw ConfigError("bad region");
  }
  std::string script_;
};

struct Fixture {
  std::chrono::steady_clock::time_point now{std::chrono::hours(1)};
  std::vector<nanoseconds> sleeps;
  ScriptedKms* inner = nullptr;

  std::unique_ptr<ResilientKms> Make(const std::string& script, ResilienceOptions o) {
    auto k = std::make_unique<ScriptedKms>(script);
    inner = k.get();
    return std::make_unique<ResilientKms>(
        std::move(k), o, [this] { return now; },
        [this](nanoseconds d) {
          sleeps.push_back(d);
          now += std::chrono::duration_cast<std::chrono::steady_clock::duration>(d);
        },
        42);
  }
};

ResilienceOptions Options() {
  ResilienceOptions o;
  o.calls_per_second = 0;  // unlimited unless a test says otherwise
  o.max_attempts = 5;
  o.base_backoff = milliseconds(100);
  o.max_backoff = milliseconds(1000);
  o.breaker_failures = 100;
  o.breaker_cool_down = milliseconds(5000);
  return o;
}

TEST(ResilientKms, TableOfScripts) {
  struct Case {
    std::string script;
    std::string outcome;  // "ok", "transient", "key", "config"
    int calls;
  };
  const std::vector<Case> cases = {
      {"", "ok", 1},   {"T", "ok", 2},   {"TTTT", "ok", 5},  {"TTTTT", "transient", 5},
      {"K", "key", 1}, {"TK", "key", 2}, {"C", "config", 1}, {"TTTTTTTT", "transient", 5},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.script);
    Fixture f;
    auto kms = f.Make(c.script, Options());
    std::string outcome = "ok";
    try {
      kms->UnwrapDataKey(1, "ref", Bytes{1});
    } catch (const TransientError& e) {
      outcome = "transient";
      EXPECT_NE(std::string(e.what()).find("throttled"), std::string::npos) << e.what();
    } catch (const KeyError&) {
      outcome = "key";
    } catch (const ConfigError&) {
      outcome = "config";
    }
    EXPECT_EQ(outcome, c.outcome);
    EXPECT_EQ(f.inner->calls, c.calls);
    EXPECT_EQ(kms->attempts(), static_cast<uint64_t>(c.calls));
    // Full jitter: every backoff within [0, min(max, base * 2^n)].
    for (size_t i = 0; i < f.sleeps.size(); i++) {
      int64_t cap = std::min<int64_t>(1000, 100LL << i);
      EXPECT_LE(f.sleeps[i], milliseconds(cap)) << i;
    }
  }
}

TEST(ResilientKms, BreakerOpensFailsFastAndRecovers) {
  Fixture f;
  ResilienceOptions o = Options();
  o.max_attempts = 2;
  o.breaker_failures = 4;
  auto kms = f.Make("TTTT", o);
  EXPECT_THROW(kms->GenerateDataKey(1), TransientError);  // 2 failures
  EXPECT_EQ(kms->state(), BreakerState::kClosed);
  EXPECT_THROW(kms->GenerateDataKey(1), TransientError);  // 4 failures: open
  EXPECT_EQ(kms->state(), BreakerState::kOpen);
  EXPECT_THROW(kms->GenerateDataKey(1), TransientError);
  EXPECT_EQ(f.inner->calls, 4);  // failed fast
  f.now += milliseconds(5000);
  EXPECT_EQ(kms->state(), BreakerState::kHalfOpen);
  kms->GenerateDataKey(1);  // the probe succeeds
  EXPECT_EQ(kms->state(), BreakerState::kClosed);
  EXPECT_EQ(f.inner->calls, 5);
}

TEST(ResilientKms, PermanentErrorsDoNotTripTheBreaker) {
  Fixture f;
  ResilienceOptions o = Options();
  o.breaker_failures = 2;
  auto kms = f.Make("KKKKKK", o);
  for (int i = 0; i < 6; i++) EXPECT_THROW(kms->Describe(), KeyError);
  EXPECT_EQ(kms->state(), BreakerState::kClosed);
}

TEST(TokenBucket, PacesCallsAfterTheBurst) {
  TokenBucket bucket(10, 3);  // 10/s, burst 3
  auto t = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
  EXPECT_EQ(bucket.Reserve(t).count(), 0);
  EXPECT_EQ(bucket.Reserve(t).count(), 0);
  EXPECT_EQ(bucket.Reserve(t).count(), 0);
  EXPECT_EQ(bucket.Reserve(t), milliseconds(100));
  EXPECT_EQ(bucket.Reserve(t), milliseconds(200));
  t += milliseconds(1000);  // refills to at most the burst
  EXPECT_EQ(bucket.Reserve(t).count(), 0);
  TokenBucket unlimited(0, 1);
  for (int i = 0; i < 100; i++) EXPECT_EQ(unlimited.Reserve(t).count(), 0);
}

TEST(ResilientKms, RateLimitSleepsThroughTheSleeper) {
  Fixture f;
  ResilienceOptions o = Options();
  o.calls_per_second = 100;
  o.burst = 1;
  auto kms = f.Make("", o);
  for (int i = 0; i < 5; i++) kms->GenerateDataKey(1);
  ASSERT_EQ(f.sleeps.size(), 4u);
  for (nanoseconds d : f.sleeps) EXPECT_EQ(d, milliseconds(10));
}

TEST(ResilienceOptions, FromEnvironment) {
  std::map<std::string, std::string> env = {{"REKEY_KMS_MAX_ATTEMPTS", "3"}};
  GetenvFn getenv = [&](const char* n) -> std::optional<std::string> {
    auto it = env.find(n);
    return it == env.end() ? std::nullopt : std::optional<std::string>(it->second);
  };
  EXPECT_EQ(ResilienceOptionsFromEnv(getenv).max_attempts, 3);
  for (const char* bad : {"0", "-1", "x", "3x", ""}) {
    env["REKEY_KMS_CALLS_PER_SECOND"] = bad;
    if (std::string(bad).empty()) {
      EXPECT_NO_THROW(ResilienceOptionsFromEnv(getenv));
    } else {
      EXPECT_THROW(ResilienceOptionsFromEnv(getenv), ConfigError) << bad;
    }
  }
}

}  // namespace
}  // namespace rekey::kms

namespace rekey::kms {
namespace {

// The workers' "may I claim?" seam: unavailable exactly while the breaker is open, available
// again (half-open) when the cool-down ends, by the clock alone; a registry is unavailable iff
// one of its clients is.
TEST(ResilientKms, AvailableIsFalseExactlyWhileTheBreakerIsOpen) {
  Fixture f;
  ResilienceOptions o = Options();
  o.max_attempts = 1;
  o.breaker_failures = 2;
  auto kms = f.Make("TT", o);
  KmsClient* raw = kms.get();
  KmsRegistry registry(
      [&](const std::string&) -> std::unique_ptr<KmsClient> { return std::move(kms); });
  registry.Get("scripted");
  EXPECT_TRUE(raw->Available());
  EXPECT_TRUE(registry.Available());
  EXPECT_THROW(raw->UnwrapDataKey(1, "ref", {}), TransientError);
  EXPECT_TRUE(raw->Available());  // one failure: still closed
  EXPECT_THROW(raw->UnwrapDataKey(1, "ref", {}), TransientError);
  EXPECT_FALSE(raw->Available());
  EXPECT_FALSE(registry.Available());
  f.now += o.breaker_cool_down;
  EXPECT_TRUE(raw->Available());  // half-open: a probe may go
  raw->UnwrapDataKey(1, "ref", {});
  EXPECT_TRUE(registry.Available());
}

// KmsClient's default rewrap: unwrap + wrap under its one key; any other destination refused.
TEST(KmsClient, DefaultRewrapWrapsUnderTheDefaultKeyOnly) {
  ScriptedKms kms("");
  GeneratedDataKey k = kms.RewrapDataKey(1, "old", {1, 2, 3}, "ref");
  EXPECT_EQ(k.plaintext.size(), 0u);
  EXPECT_EQ(kms.calls, 2);  // one unwrap, one wrap
  EXPECT_THROW(kms.RewrapDataKey(1, "old", {1, 2, 3}, "another-key"), ConfigError);
  EXPECT_EQ(kms.calls, 2);
}

// A keyset's encryption through the KMS (Tink's KMS Aead) takes the same path as every call:
// transient failures retried, a KeyError at once.
TEST(ResilientKms, BlobsAreRetriedLikeEveryCall) {
  Fixture f;
  auto kms = f.Make("TT.K", Options());
  const Bytes blob = {1, 2, 3};
  EXPECT_EQ(kms->EncryptBlob("ref", Secret(blob.data(), blob.size()), Bytes()), blob);
  EXPECT_EQ(f.inner->calls, 3);
  EXPECT_EQ(kms->retries(), 2u);
  EXPECT_THROW(kms->DecryptBlob("ref", blob, Bytes()), KeyError);
  EXPECT_EQ(f.inner->calls, 4);
  Secret back = kms->DecryptBlob("ref", blob, Bytes());
  EXPECT_EQ(Bytes(back.data(), back.data() + back.size()), blob);
}

}  // namespace
}  // namespace rekey::kms
