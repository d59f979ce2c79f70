// The chain's encodings against vectors computed independently (Python hashlib, see the comment
// on each table), and ParseHead over good and bad inputs.
#include "audit/audit_chain.h"

#include <gtest/gtest.h>

#include <set>

#include "common/error.h"

namespace rekey::audit {
namespace {

using Fields = std::vector<std::optional<std::string>>;

struct ChainVector {
  Fields fields;
  std::string canonical;
  std::string row_digest;
  std::string chain_hash;  // after this row, the rows above it chained first from genesis
};

// python3: canon = ",".join("-" if f is None else f"{len(f.encode())}:{f}" for f in fields);
// d = sha256(canon); chain = sha256(prev + seq.to_bytes(8, "big") + d), prev0 = bytes(32)
const ChainVector kVectors[] = {
    {{"1", "2026-11-22T09:22:54.123456Z", "postgres", "job.created", "success", "5", std::nullopt,
      R"({"a": 1})", "745"},
     R"(1:1,27:2026-11-22T09:22:54.123456Z,8:postgres,11:job.created,7:success,1:5,-,8:{"a": 1},3:745)",
     "9e2f680f1387007ebddfa867d8dd0a3f1670350133fddd74faf432ece46c5078",
     "1ddbf2cc25b25d7f4edc20492d3cf472039a8c15d5b9ad071e3b2ae1d4935e3b"},
    // Lengths count octets, not characters ("ö" is two).
    {{"2", "2026-11-22T09:22:55.000000Z", "w\xc3\xb6rker:1/0", "rotation.batch.completed",
      "success", "5", "17", "{}", "746"},
     "1:2,27:2026-11-22T09:22:55.000000Z,11:w\xc3\xb6rker:1/0,24:rotation.batch.completed,7:"
     "success,1:5,2:17,2:{},3:746",
     "c3c95bb2fa69334c9b69df97d7d7d390d08cb6985d677d6eaa6d189b3d11909c",
     "3f352a8bd42f42bb14817beb77aa53ea19779e8b395adb9b00eb16682bf2105d"},
};

TEST(AuditChainTest, Vectors) {
  Bytes prev(32, 0);
  int64_t seq = 0;
  for (const auto& v : kVectors) {
    const Bytes canonical = CanonicalRow(v.fields);
    EXPECT_EQ(std::string(AsStringView(canonical)), v.canonical);
    const Bytes digest = Sha256(canonical);
    EXPECT_EQ(HexEncode(digest), v.row_digest);
    prev = ChainHash(prev, ++seq, digest);
    EXPECT_EQ(HexEncode(prev), v.chain_hash);
  }
}

TEST(AuditChainTest, EncodingIsUnambiguous) {
  // Field boundaries and NULL versus empty versus "-" all encode differently.
  const Fields cases[] = {{"a,b", "c"}, {"a", "b,c"}, {std::nullopt},
                          {""},         {"-"},        {"1:a"},
                          {"1", ":a"},  {},           {std::nullopt, std::nullopt},
                          {"", ""}};
  std::set<std::string> seen;
  for (const auto& c : cases) {
    EXPECT_TRUE(seen.insert(std::string(AsStringView(CanonicalRow(c)))).second)
        << std::string(AsStringView(CanonicalRow(c)));
  }
}

TEST(AuditChainTest, ChainHashDependsOnEveryInput) {
  const Bytes zero(32, 0), one(32, 1);
  const Bytes base = ChainHash(zero, 1, one);
  EXPECT_NE(ChainHash(one, 1, one), base);
  EXPECT_NE(ChainHash(zero, 2, one), base);
  EXPECT_NE(ChainHash(zero, 1, zero), base);
  EXPECT_NE(ChainHash(zero, int64_t(1) << 40 | 1, one), base);  // all 8 bytes of seq count
}

TEST(AuditChainTest, ParseHead) {
  const std::string hash(64, 'a');
  Head h = ParseHead("42:" + hash);
  EXPECT_EQ(h.seq, 42);
  EXPECT_EQ(h.chain_hash, hash);
  EXPECT_EQ(ParseHead("7:" + std::string(64, 'F')).chain_hash, std::string(64, 'f'));
  for (const std::string& bad :
       {std::string(""), std::string(":") + hash, "x:" + hash, "-1:" + hash, "42" + hash,
        "42:" + hash.substr(1), "42:" + hash + "0", "42:" + std::string(63, 'a') + "g",
        "1234567890123456789012:" + hash, "4 2:" + hash}) {
    EXPECT_THROW(ParseHead(bad), ConfigError) << bad;
  }
}

}  // namespace
}  // namespace rekey::audit
