#include "common/secret.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <memory>
#include <ostream>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace rekey {
namespace {

// Secrets cannot be copied implicitly or printed: checked at compile time.
static_assert(!std::is_copy_constructible_v<Secret>);
static_assert(!std::is_copy_assignable_v<Secret>);
static_assert(std::is_nothrow_move_constructible_v<Secret>);
static_assert(std::is_nothrow_move_assignable_v<Secret>);

template <typename T, typename = void>
struct IsStreamable : std::false_type {};
template <typename T>
struct IsStreamable<T, std::void_t<decltype(std::declval<std::ostream&>() << std::declval<T>())>>
    : std::true_type {};
static_assert(!IsStreamable<const Secret&>::value, "a Secret must not be printable");
static_assert(IsStreamable<int>::value, "the detector itself works");

Secret FromString(std::string_view s) {
  return Secret(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

std::string Contents(const Secret& s) {
  return std::string(reinterpret_cast<const char*>(s.data()), s.size());
}

TEST(SecretTest, ConstructFromBytes) {
  Secret s = FromString("key material");
  EXPECT_EQ(s.size(), 12u);
  EXPECT_FALSE(s.empty());
  EXPECT_EQ(Contents(s), "key material");
}

TEST(SecretTest, SizedIsZeroFilledAndWritable) {
  Secret s(32);
  ASSERT_EQ(s.size(), 32u);
  for (size_t i = 0; i < s.size(); ++i) EXPECT_EQ(s.data()[i], 0) << i;
  s.mutable_data()[3] = 7;
  EXPECT_EQ(s.data()[3], 7);
}

TEST(SecretTest, DefaultAndZeroSizeAreEmpty) {
  Secret a;
  Secret b(0);
  Secret c(nullptr, 0);
  for (const Secret* s : {&a, &b, &c}) {
    EXPECT_TRUE(s->empty());
    EXPECT_EQ(s->size(), 0u);
  }
  EXPECT_TRUE(a.Equals(b));
}

TEST(SecretTest, MoveConstructEmptiesSource) {
  Secret a = FromString("abc");
  const uint8_t* buffer = a.data();
  Secret b(std::move(a));
  EXPECT_EQ(Contents(b), "abc");
  EXPECT_EQ(b.data(), buffer);  // ownership moved, not copied: no stray copy left to wipe
  EXPECT_TRUE(a.empty());       // NOLINT(bugprone-use-after-move): the contract under test
  EXPECT_EQ(a.data(), nullptr);
}

TEST(SecretTest, MoveAssignReplacesAndEmptiesSource) {
  Secret a = FromString("new");
  Secret b = FromString("old value");
  b = std::move(a);
  EXPECT_EQ(Contents(b), "new");
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(a.data(), nullptr);
  // A moved-from Secret is reusable.
  a = FromString("again");
  EXPECT_EQ(Contents(a), "again");
}

TEST(SecretTest, SelfMoveAssignKeepsValue) {
  Secret a = FromString("same");
  Secret& alias = a;
  a = std::move(alias);
  EXPECT_EQ(Contents(a), "same");
}

TEST(SecretTest, Equals) {
  EXPECT_TRUE(FromString("abc").Equals(FromString("abc")));
  EXPECT_FALSE(FromString("abc").Equals(FromString("abd")));
  EXPECT_FALSE(FromString("abc").Equals(FromString("ab")));
  EXPECT_FALSE(FromString("").Equals(FromString("a")));
  EXPECT_TRUE(FromString("").Equals(Secret()));
  // Every single-byte difference over a key-sized secret is detected.
  Secret base(32);
  for (size_t i = 0; i < 32; ++i) {
    Secret other = base.Clone();
    other.mutable_data()[i] = 1;
    EXPECT_FALSE(base.Equals(other)) << i;
    EXPECT_FALSE(other.Equals(base)) << i;
  }
}

TEST(SecretTest, CloneIsADeepCopy) {
  Secret a = FromString("0123456789abcdef0123456789abcdef");
  Secret b = a.Clone();
  EXPECT_TRUE(a.Equals(b));
  EXPECT_NE(a.data(), b.data());
  b.mutable_data()[0] = 'X';
  EXPECT_FALSE(a.Equals(b));
  EXPECT_EQ(Contents(a)[0], '0');
  EXPECT_TRUE(Secret().Clone().empty());
}

// The sanitizers' runtimes intercept mlock and munlock and do nothing (locking their shadow
// memory would not be possible): the calls succeed, but VmLck stays 0.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kMlockIsIntercepted = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kMlockIsIntercepted = true;
#else
constexpr bool kMlockIsIntercepted = false;
#endif
#else
constexpr bool kMlockIsIntercepted = false;
#endif

// Kilobytes of locked memory of this process (VmLck in /proc/self/status), -1 iff unknown or
// not observable (under a sanitizer).
long LockedKilobytes() {
  if (kMlockIsIntercepted) return -1;
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmLck:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

TEST(SecretTest, KeyMaterialIsLockedInMemoryWhereTheLimitAllows) {
  rlimit limit{};
  ASSERT_EQ(getrlimit(RLIMIT_MEMLOCK, &limit), 0);
  // Root has CAP_IPC_LOCK (no limit applies); anyone else needs room for a few pages.
  if (geteuid() != 0 && limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < 64 * 1024) {
    GTEST_SKIP() << "RLIMIT_MEMLOCK is " << limit.rlim_cur << " bytes: mlock cannot succeed";
  }
  const long before = LockedKilobytes();
  Secret key = FromString("0123456789abcdef0123456789abcdef");
  EXPECT_TRUE(key.locked());
  if (before >= 0) {
    EXPECT_GT(LockedKilobytes(), before) << "no page was locked";
  }
  Secret moved = std::move(key);
  EXPECT_TRUE(moved.locked());
  EXPECT_FALSE(key.locked());  // NOLINT(bugprone-use-after-move): moved-from is specified empty
  EXPECT_TRUE(moved.Clone().locked());
  EXPECT_FALSE(Secret().locked());
}

// mlock does not nest: unlocking one Secret's page must not unlock its neighbours on that page.
TEST(SecretTest, DestroyingOneSecretKeepsItsNeighboursLocked) {
  rlimit limit{};
  ASSERT_EQ(getrlimit(RLIMIT_MEMLOCK, &limit), 0);
  if (geteuid() != 0 && limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < 1024 * 1024) {
    GTEST_SKIP() << "RLIMIT_MEMLOCK is " << limit.rlim_cur << " bytes: too small for this test";
  }
  if (LockedKilobytes() < 0) GTEST_SKIP() << "no VmLck in /proc/self/status";
  const long before = LockedKilobytes();
  // Many small Secrets: neighbours share heap pages.
  std::vector<std::unique_ptr<Secret>> secrets;
  for (int i = 0; i < 64; ++i) secrets.push_back(std::make_unique<Secret>(32));
  for (size_t i = 1; i < secrets.size(); i += 2) secrets[i].reset();
  const long page = sysconf(_SC_PAGESIZE);
  std::set<uintptr_t> pages;
  for (const auto& s : secrets) {
    if (!s) continue;
    ASSERT_TRUE(s->locked());
    const auto begin = reinterpret_cast<uintptr_t>(s->data());
    for (uintptr_t p = begin & ~uintptr_t(page - 1); p < begin + s->size(); p += page) {
      pages.insert(p);
    }
  }
  EXPECT_GE(LockedKilobytes() - before, static_cast<long>(pages.size()) * page / 1024)
      << "pages of live Secrets were unlocked";
}

}  // namespace
}  // namespace rekey
