// Hostile input against a real PostgreSQL: every value a rotation can meet that is not a sound
// ciphertext under a source key ends in quarantine (or is left alone when it claims another key),
// never a crash or a partial write; hostile job definitions and targets that vanish or change
// under a running job end in a clear error.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;

class HostileInputTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ImportTestKeys(conn(), {1, 2});
  }
  ProcessResult Rekey(std::vector<std::string> args) {
    args.insert(args.begin(), {"--db", conninfo()});
    return RunRekey(args, WorkerEnv());
  }
  void Insert(int64_t id, const std::optional<std::string>& value) {
    pqxx::work txn(conn());
    if (value) {
      txn.exec_params("INSERT INTO public.t (id, token) VALUES ($1, $2)", id,
                      pqxx::binarystring(*value));
    } else {
      txn.exec_params("INSERT INTO public.t (id, token) VALUES ($1, NULL)", id);
    }
    txn.commit();
  }
  std::map<int64_t, std::string> Values() {
    std::map<int64_t, std::string> out;
    pqxx::read_transaction txn(conn());
    for (const auto& row :
         txn.exec("SELECT id, coalesce(encode(token, 'hex'), 'NULL') FROM public.t")) {
      out[row[0].as<int64_t>()] = row[1].as<std::string>();
    }
    return out;
  }
};

// One row per hostile variant of one valid value: every single byte flipped, every truncation,
// empty, NULL, a key the job does not rotate, the wrong associated data, and 1 MiB values both
// sound and corrupt; among them sound rows that must rotate.
TEST_F(HostileInputTest, EveryHostileValueIsQuarantinedOrLeftAloneAndTheRestRotates) {
  Exec("CREATE TABLE public.t (id bigint PRIMARY KEY, token bytea)");
  // Values are bound to their row: associated data "t/<pk>" (docs/FORMAT.md).
  auto sound = [](int64_t id, const std::string& pt) {
    return TinkEncrypt(1, pt, "t/" + std::to_string(id));
  };
  std::map<int64_t, std::string> kind;  // id -> what the row holds
  int64_t id = 0;
  const std::string pt = "4111-1111-1111-1111";
  for (int i = 0; i < 100; ++i) {
    ++id;
    Insert(id, sound(id, pt + std::to_string(i)));
    kind[id] = "sound";
  }
  const size_t len = sound(0, pt).size();
  for (size_t i = 0; i < len; ++i) {
    ++id;
    std::string v = sound(id, pt);
    v[i] = char(v[i] ^ 0xff);
    Insert(id, v);
    kind[id] = "flip@" + std::to_string(i);
  }
  for (size_t n = 0; n < len; ++n) {
    ++id;
    Insert(id, sound(id, pt).substr(0, n));
    kind[id] = "truncated@" + std::to_string(n);
  }
  Insert(++id, std::nullopt);
  kind[id] = "null";
  Insert(++id, TinkEncrypt(1, pt, "t/999999"));  // copied from another row
  kind[id] = "wrong_ad";
  Insert(++id, TinkEncrypt(1, pt));  // no associated data at all
  kind[id] = "wrong_ad";
  ++id;
  Insert(id, TinkEncrypt(7, pt, "t/" + std::to_string(id)));  // under a key not in the job
  kind[id] = "other_key";
  const std::string mib(1 << 20, 'x');
  ++id;
  Insert(id, sound(id, mib));
  kind[id] = "sound_1mib";
  {
    ++id;
    std::string v = sound(id, mib);
    v[v.size() / 2] ^= 1;
    Insert(id, v);
    kind[id] = "flip_1mib";
  }
  const auto before = Values();

  ProcessResult r = Rekey({"job", "create", "--table", "public.t", "--column", "token", "--map",
                           "1:2", "--ad-template", "{table}/{pk}", "--batch-size", "50", "--stages",
                           "100", "--error-threshold", "0.9"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Rekey({"work", "--all", "--concurrency", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;  // no crash, whatever the values

  std::map<std::string, std::string> quarantined;
  {
    pqxx::read_transaction txn(conn());
    for (const auto& row : txn.exec("SELECT pk, error_class FROM rekey.row_failures")) {
      quarantined[row[0].as<std::string>()] = row[1].as<std::string>();
    }
  }
  const auto after = Values();
  int rotated = 0;
  for (const auto& [row, what] : kind) {
    const bool is_sound = what == "sound" || what == "sound_1mib";
    if (is_sound) {
      uint32_t key = 0;
      std::string hex = after.at(row);
      std::string value;
      for (size_t i = 0; i + 1 < hex.size(); i += 2)
        value += char(std::stoi(hex.substr(i, 2), nullptr, 16));
      EXPECT_NE(TinkDecrypt(value, &key, "t/" + std::to_string(row)).front(), '<') << what;
      EXPECT_EQ(key, 2u) << what;
      ++rotated;
      continue;
    }
    // Never a partial write: a hostile value is byte for byte what it was.
    EXPECT_EQ(after.at(row), before.at(row)) << what;
    const bool claims_source_key =
        before.at(row).size() >= 10 && before.at(row).substr(0, 10) == "0100000001";
    if (what == "null" || what == "other_key" || !claims_source_key) {
      // Not under a source key: not the job's business (verify reports it), not quarantined,
      // except malformed values that claim nothing, which are quarantined as malformed.
      if (what == "null" || what == "other_key") {
        EXPECT_EQ(quarantined.count(std::to_string(row)), 0u) << what;
      }
      continue;
    }
    EXPECT_EQ(quarantined.count(std::to_string(row)), 1u) << what << " was not quarantined";
  }
  EXPECT_EQ(rotated, 101);
  // Each quarantined value has a class a person can act on.
  for (const auto& [pk, cls] : quarantined) {
    EXPECT_THAT(cls, ::testing::AnyOf("auth_failed", "truncated", "empty", "bad_prefix",
                                      "unknown_key", "too_short"))
        << kind[std::stoll(pk)];
  }
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs"), "completed");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE state <> 'done'"), 0);
  // The verifier reports what did not move; a person decides.
  r = Rekey({"job", "verify", "1"});
  EXPECT_NE(r.exit_code, 0);
}

TEST_F(HostileInputTest, HostileTargetsAreRefusedWhenTheJobIsDefined) {
  Exec("CREATE TABLE public.nopk (id bigint, token bytea)");
  Exec("CREATE TABLE public.typed (id bigint PRIMARY KEY, token text, n int)");
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const Case cases[] = {
      {{"--table", "public.nopk", "--column", "token"}, "primary key"},
      {{"--table", "public.typed", "--column", "token"}, "bytea"},
      {{"--table", "public.typed", "--column", "n"}, "bytea"},
      {{"--table", "public.gone", "--column", "token"}, "does not exist"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args = {"job", "create", "--map", "1:2"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    ProcessResult r = Rekey(args);
    EXPECT_EQ(r.exit_code, 2) << c.args[1] << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.message)) << c.args[1];
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
  }
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.jobs"), 0);
}

TEST_F(HostileInputTest, ATargetThatVanishesOrChangesMidJobStopsWorkersWithAClearError) {
  for (const std::string change :
       {"DROP TABLE public.cards", "ALTER TABLE public.cards DROP COLUMN token",
        "ALTER TABLE public.cards RENAME COLUMN token TO token_old"}) {
    Exec("DROP TABLE IF EXISTS public.cards");
    SeedTinkTable(conn(), "public.cards", 2000, 1);
    ProcessResult r =
        Rekey({"job", "create", "--table", "public.cards", "--column", "token", "--key-id-column",
               "key_id", "--map", "1:2", "--batch-size", "100", "--stages", "100"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string job = Scalar("SELECT max(job_id) FROM rekey.jobs");
    Exec(change);
    r = Rekey({"work", "--job", job});
    EXPECT_EQ(r.exit_code, 2) << change << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr("no longer matches")) << change;
    // Nothing was half done: no batch is left running, none consumed an attempt.
    EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + job +
                    " AND (state <> 'pending' OR attempts > 0)"),
              0)
        << change;
    Rekey({"job", "cancel", job});
  }
}

}  // namespace
}  // namespace rekey::testing
