// `rekey keys rewrap` with the local provider: a master-key rotation (old master key -> new one)
// against a real PostgreSQL, driving the real binary.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/error.h"
#include "crypto/aes_gcm.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;

class KeysRewrapTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ImportTestKeys(conn(), {1, 2, 3});
    // Key 3 is destroyed: nothing left to re-wrap.
    Exec(
        "UPDATE rekey.keys SET status = 'retired' WHERE key_id = 3;"
        "UPDATE rekey.keys SET status = 'destroyed' WHERE key_id = 3");
    Secret m(32);
    crypto::RandomBytes(m.mutable_data(), m.size());
    new_master_ = Base64Encode(m.data(), m.size());
    new_ref_ = kms::LocalKms(m.Clone(), "test").default_key_ref();
    old_ref_ = TestKms().default_key_ref();
  }

  // The new master key in REKEY_MASTER_KEY, the old one (if `with_old`) in REKEY_OLD_MASTER_KEY.
  ProcessResult Rewrap(std::vector<std::string> args, bool with_old = true) {
    args.insert(args.begin(), {"--db", conninfo(), "keys", "rewrap"});
    return RunRekey(args,
                    {{"REKEY_MASTER_KEY", new_master_},
                     {"REKEY_MASTER_KEY_FILE", std::nullopt},
                     {"REKEY_OLD_MASTER_KEY_FILE", std::nullopt},
                     {"REKEY_OLD_MASTER_KEY",
                      with_old ? std::optional<std::string>(TestMasterKeyBase64()) : std::nullopt},
                     {"DATABASE_URL", std::nullopt}});
  }

  std::string Refs() {
    return Scalar(
        "SELECT string_agg(key_id || '=' || kms_key_ref, ' ' ORDER BY key_id) FROM "
        "rekey.keys WHERE wrapped_key IS NOT NULL");
  }

  std::string new_master_, new_ref_, old_ref_;
};

TEST_F(KeysRewrapTest, RotatesTheMasterKeyResumablyAuditedWithoutTouchingData) {
  SeedTinkTable(conn(), "public.cards", 500, 1);
  const std::string digest_sql = "SELECT md5(string_agg(token::text, ',' ORDER BY id)) FROM cards";
  const std::string digest = Scalar(digest_sql);
  const std::string before = "1=" + old_ref_ + " 2=" + old_ref_;
  ASSERT_EQ(Refs(), before);

  // Refusals, each before any key changes.
  ProcessResult r = Rewrap({"--to-kms-key", new_ref_}, /*with_old=*/false);
  EXPECT_EQ(r.exit_code, kExitUsage) << r.err;
  EXPECT_THAT(r.err, HasSubstr("REKEY_OLD_MASTER_KEY_FILE"));
  EXPECT_THAT(r.err, HasSubstr(old_ref_));
  r = Rewrap({"--to-kms-key", "local:0000000000000000"});
  EXPECT_EQ(r.exit_code, kExitUsage) << r.err;
  EXPECT_THAT(r.err, HasSubstr("--to-kms-key " + new_ref_));
  r = Rewrap({"--to-kms-key", new_ref_, "--to-kms", "nope"});
  EXPECT_EQ(r.exit_code, kExitUsage) << r.err;
  r = Rewrap({"--key-id", "1"});
  EXPECT_EQ(r.exit_code, kExitUsage) << r.err;  // --to-kms-key is required
  r = Rewrap({"--to-kms-key", new_ref_, "--key-id", "99"});
  EXPECT_EQ(r.exit_code, kExitKey) << r.err;
  EXPECT_EQ(Refs(), before);

  // One key first (as an interrupted run would leave it), then all: key 1 is skipped.
  r = Rewrap({"--to-kms-key", new_ref_, "--key-id", "1"});
  ASSERT_EQ(r.exit_code, kExitOk) << r.err;
  EXPECT_EQ(r.out, "key 1: re-wrapped local:" + old_ref_ + " -> local:" + new_ref_ +
                       "\nre-wrapped 1 key(s) under local:" + new_ref_ +
                       ", 0 skipped; no data row was touched\n");
  r = Rewrap({"--to-kms-key", new_ref_});
  ASSERT_EQ(r.exit_code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("key 1: already under local:" + new_ref_ + ", skipped\n"));
  EXPECT_THAT(r.out, HasSubstr("key 2: re-wrapped local:" + old_ref_ + " -> local:" + new_ref_));
  EXPECT_THAT(r.out, HasSubstr("key 3: destroyed, skipped\n"));
  EXPECT_THAT(r.out, HasSubstr("re-wrapped 1 key(s)"));
  EXPECT_EQ(Refs(), "1=" + new_ref_ + " 2=" + new_ref_);

  // The same data keys, now under the new master key only.
  Bytes raw = *Base64Decode(new_master_);
  kms::LocalKms fresh(Secret(raw.data(), raw.size()), "test");
  pqxx::read_transaction txn(conn());
  for (uint32_t id : {1u, 2u}) {
    pqxx::row row = txn.exec1(
        "SELECT kms_key_ref, encode(wrapped_key, 'hex') FROM rekey.keys "
        "WHERE key_id = " +
        std::to_string(id));
    Bytes wrapped = *HexDecode(row[1].as<std::string>());
    EXPECT_TRUE(fresh.UnwrapDataKey(id, row[0].as<std::string>(), wrapped).Equals(TestDataKey(id)));
    EXPECT_THROW(TestKms().UnwrapDataKey(id, row[0].as<std::string>(), wrapped), KeyError);
  }
  // Audited by the database (one row per key) and by the run (one row per run that finished).
  EXPECT_EQ(txn.exec1("SELECT count(*) FROM rekey.audit WHERE action = 'key.rewrapped' AND "
                      "details->>'to' = 'local:" +
                      new_ref_ + "'")[0]
                .as<int>(),
            2);
  EXPECT_EQ(txn.exec1("SELECT string_agg(details->>'keys_rewrapped', ',' ORDER BY audit_id) FROM "
                      "rekey.audit WHERE action = 'keys.rewrap'")[0]
                .as<std::string>(),
            "1,1");
  txn.commit();
  EXPECT_EQ(Scalar(digest_sql), digest) << "a data row was touched";
}

}  // namespace
}  // namespace rekey::testing
