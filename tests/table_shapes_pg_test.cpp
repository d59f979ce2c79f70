// Table shapes against the real PostgreSQL (issue 22): composite keys of every supported type and
// their session-independent key text (docs/FORMAT.md, "The key's text"), partitioned tables,
// tables keyed by a unique index, and the refusals -- driven through real `rekey` processes, every
// value decrypted here, with the associated data this file computes itself from the documented
// form.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "jobs/job.h"
#include "jobs/key_shape.h"
#include "rotation/batch_statements.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// The documented bucket: first 4 bytes of MD5(key text), big-endian, mod 10000.
int Bucket(const std::string& key_text) {
  uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(key_text.data(), key_text.size(), digest, &n, EVP_md5(), nullptr);
  uint32_t v =
      uint32_t(digest[0]) << 24 | uint32_t(digest[1]) << 16 | uint32_t(digest[2]) << 8 | digest[3];
  return int(v % 10000);
}

// A composite key's text as docs/FORMAT.md writes it, for components that need no JSON escape.
std::string JsonKey(const std::vector<std::string>& parts) {
  std::string out = "[";
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? ",\"" : "\"") + parts[i] + "\"";
  return out + "]";
}

std::string Uuid(int64_t n) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "00000000-0000-4000-8000-%012lld", static_cast<long long>(n));
  return buf;
}

const char* const kTenants[] = {"acme",
                                "b\xc3\xbc"
                                "cher",
                                "\xe6\x9d\xb1\xe4\xba\xac", "\xce\xa9mega"};

// Two sessions' worth of settings that change how dates, times and floats print.
const char kSettingsA[] =
    "SET DateStyle = 'ISO, MDY'; SET TimeZone = 'UTC'; SET extra_float_digits = 0";
const char kSettingsB[] =
    "SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Asia/Kolkata'; SET extra_float_digits = 3";

struct Row {
  std::string key_text;   // the documented text, computed here
  std::string plaintext;  // what its value must decrypt to
};

class TableShapesTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ImportTestKeys(conn(), {1, 2, 3});
  }

  ProcessResult Rekey(const std::vector<std::string>& args) {
    std::vector<std::string> full{"--db", conninfo()};
    full.insert(full.end(), args.begin(), args.end());
    return RunRekey(full, WorkerEnv());
  }

  std::unique_ptr<ChildProcess> Worker(int64_t job) {
    return std::make_unique<ChildProcess>(
        std::vector<std::string>{REKEY_BINARY, "--db", conninfo(), "work", "--job",
                                 std::to_string(job)},
        WorkerEnv());
  }

  void Work(int64_t job, int processes = 2) {
    std::vector<std::unique_ptr<ChildProcess>> workers;
    for (int i = 0; i < processes; ++i) workers.push_back(Worker(job));
    for (auto& w : workers) {
      ProcessResult r = w->Wait(120);
      EXPECT_EQ(r.exit_code, 0) << r.err;
    }
  }

  // `rekey job create` with `args`; returns the new job's id (0 if it failed).
  int64_t CreateJobCli(const std::vector<std::string>& args) {
    std::vector<std::string> full{"job", "create"};
    full.insert(full.end(), args.begin(), args.end());
    ProcessResult r = Rekey(full);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    if (r.exit_code != 0) return 0;
    return Count("SELECT max(job_id) FROM rekey.jobs");
  }

  std::string JobState(int64_t job) {
    return Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + std::to_string(job));
  }

  // Rows of `table` (alias t, key column `key`) that a stage of kind `stage_kind` of job `job`
  // does not cover exactly once: each batch's [lo, hi) compared with the column, as the workers'
  // statements compare (in the column's collation).
  int64_t RowsNotCoveredOnce(const std::string& table, const std::string& key, int64_t job,
                             const std::string& stage_kind) {
    return Count("SELECT count(*) FROM " + table + " AS t, rekey.job_stages s WHERE s.job_id = " +
                 std::to_string(job) + " AND s.kind = '" + stage_kind +
                 "' AND (SELECT count(*) FROM rekey.batches b WHERE b.job_id = s.job_id AND "
                 "b.stage_no = s.stage_no AND (b.lo IS NULL OR t." +
                 key + " >= b.lo) AND (b.hi IS NULL OR t." + key + " < b.hi)) <> 1");
  }

  // Inserts rows into `table`: `columns` the key columns' list, `values` one SQL row of key values
  // per row (already literals), token = Tink(key 1, plaintext, ad_prefix + key text).
  void Insert(const std::string& table, const std::string& columns,
              const std::vector<std::string>& values, const std::vector<Row>& rows,
              const std::string& ad_prefix) {
    pqxx::work txn(conn());
    std::string sql = "INSERT INTO " + table + " (" + columns + ", token) VALUES ";
    for (size_t i = 0; i < rows.size(); ++i) {
      const std::string token =
          TinkEncrypt(1, rows[i].plaintext, ad_prefix.empty() ? "" : ad_prefix + rows[i].key_text);
      sql += (i ? ", (" : "(") + values[i] + ", " + "'\\x" +
             HexEncode(reinterpret_cast<const uint8_t*>(token.data()), token.size()) + "'::bytea)";
    }
    txn.exec0(sql);
    txn.commit();
  }

  // Every value of `table` decrypts under `key` with associated data ad_prefix + its key text, to
  // the plaintext `expected` holds for that key text; and `expected` names every row.
  void ExpectAllUnder(const std::string& table, const std::string& key_text_sql, uint32_t key,
                      const std::map<std::string, std::string>& expected,
                      const std::string& ad_prefix) {
    pqxx::read_transaction txn(conn());
    size_t seen = 0;
    for (const auto& row :
         txn.exec("SELECT " + key_text_sql + " AS k, t.token FROM " + table + " AS t")) {
      const std::string k = row["k"].as<std::string>();
      auto it = expected.find(k);
      ASSERT_NE(it, expected.end()) << "unexpected row " << k;
      uint32_t kid = 0;
      const std::string pt = TinkDecrypt(pqxx::binarystring(row["token"]).str(), &kid,
                                         ad_prefix.empty() ? "" : ad_prefix + k);
      ASSERT_EQ(pt, it->second) << "row " << k;
      ASSERT_EQ(kid, key) << "row " << k;
      ++seen;
    }
    EXPECT_EQ(seen, expected.size());
  }
};

// The key text of every supported type, under two sessions that print dates, times and floats
// differently: the SQL builder (rekey.key_text_sql, what the planners use) and the C++ one
// (jobs::KeyShape, what the workers and the verifier use) give the documented text, byte for
// byte, and every text reads back to its row.
TEST_F(TableShapesTest, EveryKeyTypeHasOneDocumentedTextWhateverTheSession) {
  Exec(
      "CREATE TABLE public.shapes (t text, ts timestamptz, d date, n numeric, u uuid, b bigint, "
      "i integer, s smallint, v varchar(20), token bytea, PRIMARY KEY (t, ts, d, n, u, b, i, s, "
      "v))");
  Exec(std::string(kSettingsB) +
       "; INSERT INTO public.shapes VALUES "
       "('z\xc3\xbcrich \"q\" \\', '2026-03-05 10:00:00.5+00', '2026-03-05', 12.50, "
       "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 9007199254740993, -7, 3, 'v'),"
       "('x', '0044-03-15 12:00:00+00 BC', '0044-03-15 BC', 'NaN', "
       "'00000000-0000-0000-0000-000000000000', -1, 0, 0, ''),"
       "('y', 'infinity', '-infinity', 1e-20, '00000000-0000-0000-0000-000000000001', 0, 1, 1, "
       "'w')");
  const std::vector<std::string> want = {
      "[\"x\",\"0044-03-15T12:00:00.000000Z BC\",\"0044-03-15 BC\",\"NaN\","
      "\"00000000-0000-0000-0000-000000000000\",\"-1\",\"0\",\"0\",\"\"]",
      "[\"y\",\"infinity\",\"-infinity\",\"0.00000000000000000001\","
      "\"00000000-0000-0000-0000-000000000001\",\"0\",\"1\",\"1\",\"w\"]",
      "[\"z\xc3\xbcrich \\\"q\\\" \\\\\",\"2026-03-05T10:00:00.500000Z\",\"2026-03-05\","
      "\"12.50\",\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\",\"9007199254740993\",\"-7\",\"3\","
      "\"v\"]"};
  const std::vector<std::string> columns = {"t", "ts", "d", "n", "u", "b", "i", "s", "v"};
  const std::vector<std::string> types = {
      "text",     "timestamp with time zone", "date", "numeric", "uuid", "bigint", "integer",
      "smallint", "character varying"};
  const jobs::KeyShape shape(columns, types, true);
  const std::string sql_text = Scalar(
      "SELECT rekey.key_text_sql('{t,ts,d,n,u,b,i,s,v}', '{text,timestamp with time "
      "zone,date,numeric,uuid,bigint,integer,smallint,character varying}', 'canonical', "
      "'t')");
  const std::string sql_bound = Scalar(
      "SELECT rekey.key_bound_sql('{text,timestamp with time zone,date,numeric,uuid,bigint,"
      "integer,smallint,character varying}', 'x.k')");
  for (const char* settings : {kSettingsA, kSettingsB}) {
    pqxx::work txn(conn());
    txn.exec0(settings);
    std::vector<std::string> from_sql, from_cpp;
    for (const auto& row : txn.exec("SELECT " + sql_text + " AS a, " + shape.Text("t") +
                                    " AS b FROM public.shapes AS t ORDER BY t.t")) {
      from_sql.push_back(row["a"].as<std::string>());
      from_cpp.push_back(row["b"].as<std::string>());
    }
    EXPECT_EQ(from_sql, want) << settings;
    EXPECT_EQ(from_cpp, want) << settings;
    // Each text reads back to exactly its row, through either builder's bound.
    EXPECT_EQ(txn.exec1("SELECT count(*) FROM public.shapes AS t, (SELECT " + sql_text +
                        " AS k FROM public.shapes AS t) x WHERE " + shape.Row("t") + " = " +
                        sql_bound + " AND " + shape.Row("t") + " = " + shape.Bound("x.k"))[0]
                  .as<int>(),
              3)
        << settings;
  }
  // A bigint key is its decimal text, as before composite keys.
  EXPECT_EQ(Scalar("SELECT rekey.key_text_sql('{id}', '{bigint}', 'canonical', 't')"),
            "t.id::text");
  EXPECT_EQ(jobs::KeyShape({"id"}, {"bigint"}, true).Text("t"), "t.\"id\"::text");
}

// Jobs on a single bigint key keep their associated data and buckets byte for byte: values
// sealed with "{table}.{column}:{pk}" = "cards.token:<id>" before composite keys still open, the
// 1% canary is exactly the rows whose MD5(id text) bucket is below 100, and bounds stay decimal.
TEST_F(TableShapesTest, BigintKeysKeepTheirAssociatedDataBucketsAndBounds) {
  Exec("CREATE TABLE public.cards (id bigint PRIMARY KEY, token bytea)");
  std::vector<std::string> values;
  std::vector<Row> rows;
  std::map<std::string, std::string> expected;
  for (int64_t id = 1; id <= 3000; ++id) {
    values.push_back(std::to_string(id));
    rows.push_back({std::to_string(id), PlaintextFor(id)});
    expected[std::to_string(id)] = PlaintextFor(id);
  }
  Insert("public.cards", "id", values, rows, "cards.token:");
  const int64_t job =
      CreateJobCli({"--table", "public.cards", "--column", "token", "--map", "1:2", "--ad-template",
                    "{table}.{column}:{pk}", "--batch-size", "100", "--stages", "1,100"});
  ASSERT_GT(job, 0);
  const std::string j = std::to_string(job);
  EXPECT_EQ(Scalar("SELECT key_columns::text || key_types::text || key_text_form FROM rekey.jobs "
                   "WHERE job_id = " +
                   j),
            "{id}{bigint}canonical");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                  " AND (lo !~ '^[0-9]+$' OR hi !~ '^[0-9]+$')"),
            0);
  Work(job);
  ASSERT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs WHERE job_id = " + j),
            "1:awaiting_approval");
  int canary = 0, mismatched = 0;
  {
    pqxx::read_transaction txn(conn());
    for (const auto& row : txn.exec("SELECT id::text AS id, token FROM public.cards")) {
      uint32_t kid = 0;
      const std::string id = row["id"].as<std::string>();
      TinkDecrypt(pqxx::binarystring(row["token"]).str(), &kid, "cards.token:" + id);
      const bool in_canary = Bucket(id) < 100;
      canary += in_canary;
      mismatched += in_canary != (kid == 2);
    }
  }
  EXPECT_GT(canary, 10);
  EXPECT_EQ(mismatched, 0) << "the canary is exactly the rows of bucket < 100";
  ASSERT_EQ(Rekey({"job", "advance", j, "--observe", "0s"}).exit_code, 0);
  Work(job);
  EXPECT_EQ(JobState(job), "completed");
  ExpectAllUnder("public.cards", "t.id::text", 2, expected, "cards.token:");
}

// A text-and-uuid key with non-ASCII tenants, planned by the client planner under two sessions
// that print dates and times differently and by the database's planner: the same batches, bounds,
// recorded keys and buckets.
TEST_F(TableShapesTest, ATextAndUuidKeyPlansTheSameInEverySessionAndPlanner) {
  Exec(
      "CREATE TABLE public.accounts (tenant text, id uuid, token bytea, PRIMARY KEY (tenant, id))");
  std::vector<std::string> values;
  std::vector<Row> rows;
  for (int64_t n = 1; n <= 3000; ++n) {
    const std::string tenant = kTenants[n % 4];
    values.push_back("'" + tenant + "', '" + Uuid(n * 7919 % 100003) + "'");
    rows.push_back({JsonKey({tenant, Uuid(n * 7919 % 100003)}), PlaintextFor(n)});
  }
  Insert("public.accounts", "tenant, id", values, rows, "");
  const std::string plan_sql =
      "SELECT string_agg(concat_ws('|', b.stage_no, b.lo, b.hi, b.planned_rows, b.keys::text), "
      "E'\\n' ORDER BY b.batch_no) FROM rekey.batches b WHERE b.job_id = ";
  std::vector<std::string> plans;
  for (int planner = 0; planner < 3; ++planner) {
    pqxx::connection c(conninfo());
    int64_t job = 0;
    {
      pqxx::work txn(c);
      txn.exec0(planner == 0 ? kSettingsA : kSettingsB);
      if (planner < 2) {
        jobs::JobSpec spec;
        spec.table = "public.accounts";
        spec.columns = {"token"};
        spec.key_map = {{1, 2}};
        spec.batch_size = 100;
        spec.stages = "1,10,100";
        job = jobs::CreateJob(txn, spec);  // the client planner
      } else {
        job = txn.exec1(
                     "SELECT rekey.create_job('public.accounts', ARRAY['token'], '{\"1\": 2}', "
                     "p_batch_size => 100, p_stages => '{1,10,100}')")[0]
                  .as<int64_t>();  // the database's planner
      }
      txn.commit();
    }
    pqxx::work txn(c);
    txn.exec0(planner == 0 ? kSettingsA : kSettingsB);
    plans.push_back(txn.exec1(plan_sql + std::to_string(job))[0].as<std::string>());
    // Every recorded key of the partial stages is in the bucket range of its stage, by the
    // documented MD5 computed here.
    for (const auto& row : txn.exec_params(
             "SELECT k, s.bucket_lo, s.bucket_hi FROM rekey.batches b JOIN rekey.job_stages s "
             "USING (job_id, stage_no), unnest(b.keys) k WHERE b.job_id = $1",
             job)) {
      const int bucket = Bucket(row["k"].as<std::string>());
      ASSERT_GE(bucket, row["bucket_lo"].as<int>()) << row["k"].as<std::string>();
      ASSERT_LT(bucket, row["bucket_hi"].as<int>()) << row["k"].as<std::string>();
    }
    txn.exec_params("SELECT rekey.cancel_job($1)", job);
    txn.commit();
  }
  EXPECT_EQ(plans[0], plans[1]) << "client planner, two sessions";
  EXPECT_EQ(plans[0], plans[2]) << "client and database planners";
  EXPECT_THAT(plans[0], HasSubstr("[\"b\xc3\xbc"
                                  "cher\",\""));
  // The rows of the 1% stage are the keys whose documented text hashes below 100.
  int canary = 0;
  for (const Row& r : rows) canary += Bucket(r.key_text) < 100;
  EXPECT_EQ(Count("SELECT sum(planned_rows) FROM rekey.batches b JOIN rekey.job_stages s USING "
                  "(job_id, stage_no) WHERE s.stage_no = 1 AND b.job_id = (SELECT min(job_id) "
                  "FROM rekey.jobs)"),
            canary);
}

// A table partitioned by month with the key (tenant_id, created_at, id), 12 partitions and one
// attached mid-job, under non-default DateStyle and TimeZone: two workers (one SIGKILLed and
// replaced) and an application writing under the old key; every value decrypts with the
// associated data "{table}:{pk}" computed here from the documented key text.
TEST_F(TableShapesTest, AMonthPartitionedTableWithACompositeKeyRotatesCompletely) {
  Exec("ALTER DATABASE " + dbname() + " SET DateStyle = 'SQL, DMY'; ALTER DATABASE " + dbname() +
       " SET TimeZone = 'America/New_York'");
  Exec(
      "CREATE TABLE public.events (tenant_id text NOT NULL, created_at timestamptz NOT NULL, id "
      "bigint NOT NULL, token bytea, PRIMARY KEY (tenant_id, created_at, id)) PARTITION BY RANGE "
      "(created_at)");
  auto month = [](int year, int m) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%04d-%02d-01 00:00:00+00", year + (m - 1) / 12,
                  (m - 1) % 12 + 1);
    return std::string(buf);
  };
  for (int m = 1; m <= 12; ++m) {
    char name[32];
    std::snprintf(name, sizeof name, "events_2026_%02d", m);
    Exec("CREATE TABLE public." + std::string(name) +
         " PARTITION OF public.events FOR VALUES FROM ('" + month(2026, m) + "') TO ('" +
         month(2026, m + 1) + "')");
  }
  std::map<std::string, std::string> expected;
  std::map<int64_t, std::string> key_of;  // id -> key text
  auto make_rows = [&](int year, int m, int64_t first, int64_t count, std::vector<std::string>* v,
                       std::vector<Row>* r) {
    for (int64_t id = first; id < first + count; ++id) {
      char ts[40], iso[40];
      const int day = 1 + int(id % 28), hour = int(id % 24), minute = int(id % 60),
                second = int(id / 60 % 60);
      std::snprintf(ts, sizeof ts, "%04d-%02d-%02d %02d:%02d:%02d+00", year, m, day, hour, minute,
                    second);
      std::snprintf(iso, sizeof iso, "%04d-%02d-%02dT%02d:%02d:%02d.000000Z", year, m, day, hour,
                    minute, second);
      const std::string tenant = kTenants[id % 4];
      const std::string key = JsonKey({tenant, iso, std::to_string(id)});
      v->push_back("'" + tenant + "', '" + ts + "', " + std::to_string(id));
      r->push_back({key, PlaintextFor(id)});
      expected[key] = PlaintextFor(id);
      key_of[id] = key;
    }
  };
  int64_t next_id = 1;
  for (int m = 1; m <= 12; ++m) {
    std::vector<std::string> v;
    std::vector<Row> r;
    make_rows(2026, m, next_id, 300, &v, &r);
    next_id += 300;
    Insert("public.events", "tenant_id, created_at, id", v, r, "events:");
  }
  const int64_t job =
      CreateJobCli({"--table", "public.events", "--column", "token", "--map", "1:2",
                    "--ad-template", "{table}:{pk}", "--batch-size", "100", "--stages", "5,100"});
  ASSERT_GT(job, 0);
  const std::string j = std::to_string(job);
  Work(job);
  ASSERT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs WHERE job_id = " + j),
            "1:awaiting_approval")
      << Scalar("SELECT state_reason FROM rekey.jobs WHERE job_id = " + j);

  // A 13th month, filled under the old key, attached before the job goes on.
  Exec("CREATE TABLE public.events_2027_01 (LIKE public.events INCLUDING ALL)");
  {
    std::vector<std::string> v;
    std::vector<Row> r;
    make_rows(2027, 1, next_id, 300, &v, &r);
    next_id += 300;
    Insert("public.events_2027_01", "tenant_id, created_at, id", v, r, "events:");
  }
  Exec("ALTER TABLE public.events ATTACH PARTITION public.events_2027_01 FOR VALUES FROM ('" +
       month(2027, 1) + "') TO ('" + month(2027, 2) + "')");

  // An application still writing under the old key until the sweep opens.
  std::atomic<bool> stop{false};
  std::map<std::string, std::string> written;
  std::thread writer([&] {
    pqxx::connection app(conninfo());
    std::mt19937 rng(22);
    for (int n = 0; !stop; ++n) {
      const int64_t id = std::uniform_int_distribution<int64_t>(1, next_id - 1)(rng);
      const std::string& key = key_of[id];
      const std::string pt = "written-by-app-" + std::to_string(n);
      // The stage first, the job's row share-locked until the write commits, so the sweep never
      // opens between them (staged_rollout_pg_test's sweep test says why).
      pqxx::work txn(app);
      const std::string kind = txn.exec1(CurrentStageKindSharingJob(j))[0].as<std::string>();
      if (kind == "sweep") break;
      txn.exec_params("UPDATE public.events SET token = $1 WHERE id = $2",
                      pqxx::binarystring(TinkEncrypt(1, pt, "events:" + key)), id);
      txn.commit();
      written[key] = pt;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  ASSERT_EQ(Rekey({"job", "advance", j, "--observe", "0s"}).exit_code, 0);
  {
    auto victim = Worker(job);
    auto other = Worker(job);
    for (int i = 0; i < 500 && Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                                     " AND stage_no = 2 AND state = 'done'") < 10;
         ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    victim->Signal(SIGKILL);
    victim->Wait(10);
    auto replacement = Worker(job);
    EXPECT_EQ(other->Wait(120).exit_code, 0);
    EXPECT_EQ(replacement->Wait(120).exit_code, 0);
  }
  stop = true;
  writer.join();
  if (JobState(job) != "completed") Work(job, 1);  // what the killed worker held, once released
  EXPECT_EQ(JobState(job), "completed")
      << Scalar("SELECT coalesce(state_reason, '') FROM rekey.jobs WHERE job_id = " + j);
  EXPECT_FALSE(written.empty()) << "the application wrote during the job";
  EXPECT_GT(Count("SELECT coalesce(sum(rows_done), 0) FROM rekey.batches b JOIN rekey.job_stages s "
                  "USING (job_id, stage_no) WHERE job_id = " +
                  j + " AND s.kind = 'sweep'"),
            0)
      << "the sweep re-encrypted what the application wrote under the old key";
  for (const auto& [key, pt] : written) expected[key] = pt;
  ExpectAllUnder("public.events",
                 "'[' || to_json(t.tenant_id)::text || ',' || to_json(to_char(t.created_at AT TIME "
                 "ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))::text || ',' || "
                 "to_json(t.id::text)::text || ']'",
                 2, expected, "events:");
  EXPECT_EQ(Count("SELECT count(*) FROM public.events_2027_01"), 300);
}

// A hash-partitioned table and a list-then-hash (two-level) one rotate completely; partitions
// detached or dropped mid-job leave the job to finish the rest without a failure.
TEST_F(TableShapesTest,
       HashAndTwoLevelPartitionedTablesRotateAndADetachedOrDroppedPartitionIsLeft) {
  Exec(
      "CREATE TABLE public.docs (id uuid PRIMARY KEY, token bytea) PARTITION BY HASH (id);"
      "CREATE TABLE public.docs_0 PARTITION OF public.docs FOR VALUES WITH (MODULUS 4, REMAINDER "
      "0);"
      "CREATE TABLE public.docs_1 PARTITION OF public.docs FOR VALUES WITH (MODULUS 4, REMAINDER "
      "1);"
      "CREATE TABLE public.docs_2 PARTITION OF public.docs FOR VALUES WITH (MODULUS 4, REMAINDER "
      "2);"
      "CREATE TABLE public.docs_3 PARTITION OF public.docs FOR VALUES WITH (MODULUS 4, REMAINDER "
      "3);"
      "CREATE TABLE public.notes (region text, id bigint, token bytea, PRIMARY KEY (region, id)) "
      "PARTITION BY LIST (region);"
      "CREATE TABLE public.notes_eu PARTITION OF public.notes FOR VALUES IN ('eu') PARTITION BY "
      "HASH (id);"
      "CREATE TABLE public.notes_eu_0 PARTITION OF public.notes_eu FOR VALUES WITH (MODULUS 2, "
      "REMAINDER 0);"
      "CREATE TABLE public.notes_eu_1 PARTITION OF public.notes_eu FOR VALUES WITH (MODULUS 2, "
      "REMAINDER 1);"
      "CREATE TABLE public.notes_us PARTITION OF public.notes FOR VALUES IN ('us')");
  std::map<std::string, std::string> docs, notes;
  {
    std::vector<std::string> v;
    std::vector<Row> r;
    for (int64_t n = 1; n <= 2000; ++n) {
      v.push_back("'" + Uuid(n) + "'");
      r.push_back({Uuid(n), PlaintextFor(n)});
      docs[Uuid(n)] = PlaintextFor(n);
    }
    Insert("public.docs", "id", v, r, "docs:");
    v.clear();
    r.clear();
    for (int64_t n = 1; n <= 1000; ++n) {
      const std::string region = n % 3 ? "eu" : "us";
      v.push_back("'" + region + "', " + std::to_string(n));
      r.push_back({JsonKey({region, std::to_string(n)}), PlaintextFor(n)});
      notes[r.back().key_text] = PlaintextFor(n);
    }
    Insert("public.notes", "region, id", v, r, "notes:");
  }
  const int64_t docs_job =
      CreateJobCli({"--table", "public.docs", "--column", "token", "--map", "1:2", "--ad-template",
                    "{table}:{pk}", "--batch-size", "100", "--stages", "10,100"});
  ASSERT_GT(docs_job, 0);
  Work(docs_job);
  // Detached between stages: its rows are no longer the table's.
  std::map<std::string, std::string> detached;
  {
    pqxx::read_transaction txn(conn());
    for (const auto& row : txn.exec("SELECT id::text AS id FROM public.docs_3")) {
      const std::string id = row["id"].as<std::string>();
      detached[id] = docs[id];
      docs.erase(id);
    }
  }
  Exec("ALTER TABLE public.docs DETACH PARTITION public.docs_3");
  // Dropped between stages: its rows are gone.
  {
    pqxx::read_transaction txn(conn());
    for (const auto& row : txn.exec("SELECT id::text AS id FROM public.docs_2")) {
      docs.erase(row["id"].as<std::string>());
    }
  }
  Exec("DROP TABLE public.docs_2");
  ASSERT_EQ(Rekey({"job", "advance", std::to_string(docs_job), "--observe", "0s"}).exit_code, 0);
  Work(docs_job);
  EXPECT_EQ(JobState(docs_job), "completed");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + std::to_string(docs_job) +
                  " AND state <> 'done'"),
            0);
  ExpectAllUnder("public.docs", "t.id::text", 2, docs, "docs:");
  // The detached partition, now a table of its own, is as the job left it: each value under
  // either key, intact.
  {
    pqxx::read_transaction txn(conn());
    size_t seen = 0;
    for (const auto& row : txn.exec("SELECT id::text AS id, token FROM public.docs_3")) {
      const std::string id = row["id"].as<std::string>();
      uint32_t kid = 0;
      EXPECT_EQ(TinkDecrypt(pqxx::binarystring(row["token"]).str(), &kid, "docs:" + id),
                detached[id]);
      ++seen;
    }
    EXPECT_EQ(seen, detached.size());
    EXPECT_GT(seen, 0u);
  }

  const int64_t notes_job =
      CreateJobCli({"--table", "public.notes", "--column", "token", "--map", "1:2", "--ad-template",
                    "{table}:{pk}", "--batch-size", "100", "--stages", "100"});
  ASSERT_GT(notes_job, 0);
  Work(notes_job);
  EXPECT_EQ(JobState(notes_job), "completed");
  ExpectAllUnder("public.notes",
                 "'[' || to_json(t.region)::text || ',' || to_json(t.id::text)::text || ']'", 2,
                 notes, "notes:");
  ProcessResult verify = Rekey({"job", "verify", std::to_string(notes_job)});
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
}

// Gates, rollback and verify on a composite-key table keyed by a unique index (no primary key),
// named with --key-columns, and remembered for the table's next job.
TEST_F(TableShapesTest, GatesRollbackAndVerifyOnACompositeKeyNamedByKeyColumns) {
  Exec(
      "CREATE TABLE public.wallets (tenant text NOT NULL, id uuid NOT NULL, token bytea);"
      "CREATE UNIQUE INDEX wallets_key ON public.wallets (tenant, id)");
  std::vector<std::string> v;
  std::vector<Row> r;
  std::map<std::string, std::string> expected;
  for (int64_t n = 1; n <= 2000; ++n) {
    const std::string tenant = kTenants[n % 4];
    v.push_back("'" + tenant + "', '" + Uuid(n) + "'");
    r.push_back({JsonKey({tenant, Uuid(n)}), PlaintextFor(n)});
    expected[r.back().key_text] = PlaintextFor(n);
  }
  Insert("public.wallets", "tenant, id", v, r, "w:");
  const std::vector<std::string> base = {
      "--table", "public.wallets", "--column", "token",        "--map",
      "1:2",     "--ad-template",  "w:{pk}",   "--batch-size", "100"};
  {
    std::vector<std::string> args = base;
    args.insert(args.end(), {"--stages", "1,50,100"});
    ProcessResult refused = Rekey([&] {
      std::vector<std::string> a{"job", "create"};
      a.insert(a.end(), args.begin(), args.end());
      return a;
    }());
    EXPECT_NE(refused.exit_code, 0);
    EXPECT_THAT(refused.err, HasSubstr("--key-columns tenant,id"));
  }
  std::vector<std::string> args = base;
  args.insert(args.end(), {"--stages", "1,50,100", "--key-columns", "tenant,id"});
  const int64_t job = CreateJobCli(args);
  ASSERT_GT(job, 0);
  const std::string j = std::to_string(job);
  Work(job);
  EXPECT_EQ(
      Scalar("SELECT passed::text FROM rekey.gates WHERE job_id = " + j + " AND stage_no = 1"),
      "true");
  ASSERT_EQ(Rekey({"job", "advance", j}).exit_code, 0);
  Work(job);
  EXPECT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs WHERE job_id = " + j),
            "2:awaiting_approval");
  ProcessResult rollback = Rekey({"job", "rollback", j});
  ASSERT_EQ(rollback.exit_code, 0) << rollback.err;
  Work(job);
  EXPECT_EQ(JobState(job), "rolled_back");
  const std::string key_sql =
      "'[' || to_json(t.tenant)::text || ',' || to_json(t.id::text)::text || ']'";
  ExpectAllUnder("public.wallets", key_sql, 1, expected, "w:");

  // The rollback left key 2 decrypt_only: forward again to key 3.
  args = base;
  args[5] = "1:3";
  args.insert(args.end(), {"--stages", "100"});  // the key the last job was given
  const int64_t again = CreateJobCli(args);
  ASSERT_GT(again, 0);
  Work(again);
  EXPECT_EQ(JobState(again), "completed");
  ExpectAllUnder("public.wallets", key_sql, 3, expected, "w:");
  ProcessResult verify = Rekey({"job", "verify", std::to_string(again)});
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
}

// A table partitioned by month and keyed by (created_at, id): PostgreSQL 15 prunes no partition
// from a row-value range (ROW(created_at, id) >= ROW($1, $2)), so each batch's statement would
// visit every partition; the bound on the leading column that rekey adds (KeyShape::LeadingBound)
// prunes the worker's row-locking SELECT, under the generic plan a prepared statement ends up
// with, to the one partition a batch within a month reaches. The job still rotates every row.
TEST_F(TableShapesTest, ABatchWithinOnePartitionOfTheLeadingKeyColumnIsPrunedToIt) {
  Exec(
      "CREATE TABLE public.ledger (created_at date NOT NULL, id bigint NOT NULL, token bytea, "
      "PRIMARY KEY (created_at, id)) PARTITION BY RANGE (created_at);"
      "CREATE TABLE public.ledger_01 PARTITION OF public.ledger FOR VALUES FROM ('2026-01-01') TO "
      "('2026-02-01');"
      "CREATE TABLE public.ledger_02 PARTITION OF public.ledger FOR VALUES FROM ('2026-02-01') TO "
      "('2026-03-01');"
      "CREATE TABLE public.ledger_03 PARTITION OF public.ledger FOR VALUES FROM ('2026-03-01') TO "
      "('2026-04-01')");
  std::vector<std::string> values;
  std::vector<Row> rows;
  std::map<std::string, std::string> expected;
  for (int i = 0; i < 900; ++i) {
    char day[32];
    std::snprintf(day, sizeof day, "2026-%02d-%02d", 1 + i / 300, 1 + i % 28);
    const std::string key = JsonKey({day, std::to_string(i)});
    values.push_back(std::string("'") + day + "', " + std::to_string(i));
    rows.push_back({key, PlaintextFor(i)});
    expected[key] = PlaintextFor(i);
  }
  Insert("public.ledger", "created_at, id", values, rows, "l:");
  const int64_t job = CreateJobCli({"--table", "public.ledger", "--column", "token", "--map", "1:2",
                                    "--ad-template", "l:{pk}", "--batch-size", "50", "--stages",
                                    "100", "--observe", "0s"});
  ASSERT_GT(job, 0);

  std::string plan;
  {
    pqxx::work txn(conn());
    const jobs::JobDefinition definition = jobs::LoadJob(txn, job);
    const rotation::BatchStatements statements(definition);
    const rotation::Direction direction = rotation::MakeDirection({{1, 2}});
    txn.exec0("SET LOCAL plan_cache_mode = force_generic_plan");
    txn.exec0("PREPARE ledger_select AS " + statements.Select(rotation::kLo | rotation::kHi));
    for (const auto& line : txn.exec("EXPLAIN (COSTS OFF) EXECUTE ledger_select('" +
                                     txn.esc(JsonKey({"2026-02-03", "0"})) + "', '" +
                                     txn.esc(JsonKey({"2026-02-20", "0"})) + "', '" +
                                     txn.esc(direction.source_prefixes_literal) + "', '" +
                                     txn.esc(direction.source_ids_literal) + "', 51)")) {
      plan += line[0].as<std::string>() + "\n";
    }
  }
  EXPECT_THAT(plan, HasSubstr("ledger_02")) << plan;
  EXPECT_THAT(plan, Not(HasSubstr("ledger_01"))) << plan;
  EXPECT_THAT(plan, Not(HasSubstr("ledger_03"))) << plan;
  EXPECT_THAT(plan, HasSubstr("Subplans Removed: 2")) << plan;

  Work(job);
  EXPECT_EQ(JobState(job), "completed") << Scalar(
      "SELECT coalesce(state_reason, '') FROM rekey.jobs WHERE job_id = " + std::to_string(job));
  ExpectAllUnder("public.ledger",
                 "'[' || to_json(to_char(t.created_at, 'YYYY-MM-DD'))::text || ',' || "
                 "to_json(t.id::text)::text || ']'",
                 2, expected, "l:");
}

// A text key whose column has a collation other than the database's (here ICU English in a "C"
// database, where 'B...' sorts before 'a...' bytewise but after it in English): the rollout's
// ranges and the sweep's follow the column's order, as its index does, so every row lies in
// exactly one batch of each; ordering the sweep's bounds in the default collation made ranges
// that ran backwards and left rows in no sweep batch. A key in COLLATE "C" beside it plans the
// bytewise order.
TEST_F(TableShapesTest, TextKeysInTheirColumnsCollationArePlannedAndSweptInThatOrder) {
  if (Count("SELECT count(*) FROM pg_collation WHERE collname = 'en-x-icu'") == 0) {
    GTEST_SKIP() << "this PostgreSQL has no ICU collation en-x-icu";
  }
  ASSERT_EQ(Scalar("SELECT datcollate FROM pg_database WHERE datname = current_database()"), "C");
  const char* const kLetters[] = {"a", "B", "c", "D", "e", "F"};
  for (const std::string collation : {"en-x-icu", "C"}) {
    const std::string table = collation == "C" ? "public.notes_c" : "public.notes_en";
    Exec("CREATE TABLE " + table + " (k text COLLATE \"" + collation +
         "\" PRIMARY KEY, token bytea)");
    std::vector<std::string> values;
    std::vector<Row> rows;
    std::map<std::string, std::string> expected;
    for (int i = 0; i < 1000; ++i) {
      char key[32];
      std::snprintf(key, sizeof key, "%s%04d", kLetters[i % 6], (i * 7919) % 1000);
      values.push_back(std::string("'") + key + "'");
      rows.push_back({key, PlaintextFor(i)});
      expected[key] = PlaintextFor(i);
    }
    Insert(table, "k", values, rows, "n:");
    const int64_t job =
        CreateJobCli({"--table", table, "--column", "token", "--map", "1:2", "--ad-template",
                      "n:{pk}", "--batch-size", "2", "--stages", "50,100", "--observe", "0s"});
    ASSERT_GT(job, 0);
    Work(job);
    const std::string j = std::to_string(job);
    ASSERT_EQ(JobState(job), "completed")
        << Scalar("SELECT coalesce(state_reason, '') FROM rekey.jobs WHERE job_id = " + j);
    // The 100% stage's 250 batches give the sweep two bounds: three ranges.
    ASSERT_GE(Count("SELECT count(*) FROM rekey.batches JOIN rekey.job_stages USING (job_id, "
                    "stage_no) WHERE kind = 'sweep' AND job_id = " +
                    j),
              3);
    EXPECT_EQ(RowsNotCoveredOnce(table, "k", job, "sweep"), 0)
        << collation << ": the sweep's ranges tile the key space in the column's order";
    EXPECT_EQ(
        Count("SELECT count(*) FROM rekey.batches b JOIN rekey.job_stages s USING (job_id, "
              "stage_no) WHERE s.kind = 'sweep' AND b.job_id = " +
              j + " AND b.lo IS NOT NULL AND b.hi IS NOT NULL AND NOT (b.lo < b.hi COLLATE \"" +
              collation + "\")"),
        0)
        << collation << ": no sweep range runs backwards";
    ExpectAllUnder(table, "t.k", 2, expected, "n:");
  }
}

// Tables rekey cannot key: one line naming the table and what to change, a non-zero exit, and
// nothing planned.
TEST_F(TableShapesTest, TablesWithoutAUsableKeyAreRefusedWithWhatToChange) {
  Exec(
      "CREATE TABLE public.bare (id bigint, token bytea);"
      "CREATE TABLE public.by_expr (email text NOT NULL, token bytea);"
      "CREATE UNIQUE INDEX ON public.by_expr (lower(email));"
      "CREATE TABLE public.floaty (x real PRIMARY KEY, token bytea);"
      "CREATE TABLE public.parent (id bigint PRIMARY KEY, token bytea);"
      "CREATE TABLE public.child (LIKE public.parent INCLUDING ALL) INHERITS (public.parent);"
      "CREATE TABLE public.nullable (a bigint, token bytea); CREATE UNIQUE INDEX ON "
      "public.nullable (a);"
      // Each partition keyed by id alone: id 1 is in both, so no key is unique across the parent.
      "CREATE TABLE public.per_part (tenant text NOT NULL, id bigint NOT NULL, token bytea) "
      "PARTITION BY LIST (tenant);"
      "CREATE TABLE public.per_part_a PARTITION OF public.per_part FOR VALUES IN ('a');"
      "CREATE TABLE public.per_part_b PARTITION OF public.per_part FOR VALUES IN ('b');"
      "ALTER TABLE public.per_part_a ADD PRIMARY KEY (id);"
      "ALTER TABLE public.per_part_b ADD PRIMARY KEY (id);"
      "INSERT INTO public.per_part VALUES ('a', 1, NULL), ('b', 1, NULL)");
  // PostgreSQL itself keeps a partitioned table's keys unique across its partitions: it refuses
  // a unique key without the partition key, and a partition attached with a row outside its
  // bounds (so with a key another partition may hold).
  EXPECT_THROW(Exec("CREATE UNIQUE INDEX ON public.per_part (id)"), pqxx::sql_error);
  Exec(
      "CREATE TABLE public.per_part_c (LIKE public.per_part); INSERT INTO public.per_part_c "
      "VALUES ('a', 2, NULL)");
  EXPECT_THROW(
      Exec("ALTER TABLE public.per_part ATTACH PARTITION public.per_part_c FOR VALUES IN ('c')"),
      pqxx::sql_error);
  struct Case {
    std::vector<std::string> args;
    std::string says;
  } cases[] = {
      {{"--table", "public.bare"}, "add a primary key"},
      {{"--table", "public.by_expr"}, "an index on an expression"},
      {{"--table", "public.floaty"}, "is of type real"},
      {{"--table", "public.parent"}, "has inheritance children"},
      {{"--table", "public.nullable", "--key-columns", "a"}, "NOT NULL columns"},
      {{"--table", "public.by_expr", "--key-columns", "nope"}, "key column nope does not exist"},
      {{"--table", "public.per_part"}, "partitioned by LIST (tenant): a key unique across"},
      {{"--table", "public.per_part", "--key-columns", "id"}, "partitioned by LIST (tenant)"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args{"job", "create", "--column", "token", "--map", "1:2"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    ProcessResult r = Rekey(args);
    EXPECT_NE(r.exit_code, 0) << c.args[1];
    EXPECT_THAT(r.err, HasSubstr(c.says)) << c.args[1];
    EXPECT_THAT(r.err, HasSubstr(c.args[1])) << "names the table";
  }
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.jobs"), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches"), 0);
}

// Partitioned tables planned per leaf partition (issue 22 item 2): helpers of the tests below.
class PartitionsTest : public TableShapesTest {
 protected:
  // public.docs, hash-partitioned by its uuid key into docs_0 .. docs_3, with `rows` rows under
  // key 1 (associated data "docs:" + id); returns each id's plaintext.
  std::map<std::string, std::string> MakeDocs(int64_t rows) {
    Exec("CREATE TABLE public.docs (id uuid PRIMARY KEY, token bytea) PARTITION BY HASH (id)");
    for (int r = 0; r < 4; ++r) {
      Exec("CREATE TABLE public.docs_" + std::to_string(r) +
           " PARTITION OF public.docs FOR VALUES WITH (MODULUS 4, REMAINDER " + std::to_string(r) +
           ")");
    }
    std::map<std::string, std::string> docs;
    std::vector<std::string> v;
    std::vector<Row> r;
    for (int64_t n = 1; n <= rows; ++n) {
      v.push_back("'" + Uuid(n) + "'");
      r.push_back({Uuid(n), PlaintextFor(n)});
      docs[Uuid(n)] = PlaintextFor(n);
    }
    Insert("public.docs", "id", v, r, "docs:");
    return docs;
  }

  // The leaves job `job`'s batches of stages of `kind` name, "name:batches" each, in name order
  // ("-" for batches over the table itself).
  std::string LeavesOf(int64_t job, const std::string& kind) {
    return Scalar(
        "SELECT string_agg(leaf || ':' || n, ',' ORDER BY leaf) FROM (SELECT "
        "coalesce(b.partition_name, '-') AS leaf, count(*) AS n FROM rekey.batches b JOIN "
        "rekey.job_stages s USING (job_id, stage_no) WHERE b.job_id = " +
        std::to_string(job) + " AND s.kind = '" + kind + "' GROUP BY 1) x");
  }

  // Rows of public.docs not in exactly one batch of stage `stage` of `job` over the row's own
  // leaf (tableoid) whose range holds its key.
  int64_t DocsNotCoveredOnce(int64_t job, int stage) {
    return Count(
        "SELECT count(*) FROM public.docs t WHERE (SELECT count(*) FROM rekey.batches b WHERE "
        "b.job_id = " +
        std::to_string(job) + " AND b.stage_no = " + std::to_string(stage) +
        " AND b.partition_name = (SELECT relname FROM pg_class WHERE oid = t.tableoid) AND "
        "(b.lo IS NULL OR t.id >= b.lo::uuid) AND (b.hi IS NULL OR t.id < b.hi::uuid)) <> 1");
  }

  // Each value of `table` (a uuid key `id`) decrypts to docs[id] and is under key `key`.
  void ExpectDocsUnder(const std::string& table, uint32_t key,
                       const std::map<std::string, std::string>& docs, size_t rows) {
    pqxx::read_transaction txn(conn());
    size_t seen = 0;
    for (const auto& row : txn.exec("SELECT id::text AS id, token FROM " + table)) {
      const std::string id = row["id"].as<std::string>();
      uint32_t kid = 0;
      EXPECT_EQ(TinkDecrypt(pqxx::binarystring(row["token"]).str(), &kid, "docs:" + id),
                docs.at(id));
      EXPECT_EQ(kid, key) << table << " " << id;
      ++seen;
    }
    EXPECT_EQ(seen, rows) << table;
  }
};

// A hash-partitioned table, where key ranges cannot prune: every batch covers one leaf, both
// planners (the client's and rekey.plan_rollout) cut the same batches leaf by leaf, every row is
// in exactly one batch of its leaf, and the worker's row-locking statement over a batch names
// its leaf alone (EXPLAIN of the prepared, generic plan: no Append over the other partitions).
// A list-then-hash (two-level) table is planned over its three leaves, never a middle level.
TEST_F(PartitionsTest, AHashPartitionedTableIsPlannedPerLeafAndEachStatementTouchesOneLeaf) {
  const std::map<std::string, std::string> docs = MakeDocs(2000);
  const std::string plan_sql =
      "SELECT string_agg(concat_ws('|', b.stage_no, b.partition_schema, b.partition_name, b.lo, "
      "b.hi, b.planned_rows, b.keys::text), E'\\n' ORDER BY b.batch_no) FROM rekey.batches b "
      "WHERE b.job_id = ";
  std::vector<std::string> plans;
  for (int planner = 0; planner < 2; ++planner) {
    pqxx::work txn(conn());
    int64_t job = 0;
    if (planner == 0) {
      jobs::JobSpec spec;
      spec.table = "public.docs";
      spec.columns = {"token"};
      spec.key_map = {{1, 2}};
      spec.batch_size = 100;
      spec.stages = "10,100";
      spec.ad_template = "{table}:{pk}";
      job = jobs::CreateJob(txn, spec);  // the client planner
    } else {
      job = txn.exec1(
                   "SELECT rekey.create_job('public.docs', ARRAY['token'], '{\"1\": 2}', "
                   "p_batch_size => 100, p_stages => '{10,100}', p_ad_template => "
                   "'{table}:{pk}')")[0]
                .as<int64_t>();  // the database's planner
    }
    plans.push_back(txn.exec1(plan_sql + std::to_string(job))[0].as<std::string>());
    txn.exec_params("SELECT rekey.cancel_job($1)", job);
    txn.commit();
  }
  EXPECT_EQ(plans[0], plans[1]) << "client and database planners";

  const int64_t job =
      CreateJobCli({"--table", "public.docs", "--column", "token", "--map", "1:2", "--ad-template",
                    "{table}:{pk}", "--batch-size", "100", "--stages", "100"});
  ASSERT_GT(job, 0);
  const std::string j = std::to_string(job);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                  " AND (partition_name IS NULL OR partition_schema <> 'public' OR "
                  "partition_name NOT IN ('docs_0', 'docs_1', 'docs_2', 'docs_3'))"),
            0);
  EXPECT_THAT(LeavesOf(job, "rollout"),
              ::testing::MatchesRegex("docs_0:[0-9]+,docs_1:[0-9]+,docs_2:[0-9]+,docs_3:[0-9]+"));
  EXPECT_EQ(DocsNotCoveredOnce(job, 1), 0);

  // The statement a worker runs for a batch of docs_1, bounded on both sides.
  std::string plan;
  {
    pqxx::work txn(conn());
    const pqxx::row b = txn.exec1(
        "SELECT format('%I.%I', partition_schema, partition_name) AS relation, lo, hi FROM "
        "rekey.batches WHERE job_id = " +
        j + " AND partition_name = 'docs_1' AND lo IS NOT NULL AND hi IS NOT NULL LIMIT 1");
    const jobs::JobDefinition definition = jobs::LoadJob(txn, job);
    const rotation::BatchStatements statements(definition, b["relation"].as<std::string>());
    const rotation::Direction direction = rotation::MakeDirection({{1, 2}});
    txn.exec0("SET LOCAL plan_cache_mode = force_generic_plan");
    txn.exec0("PREPARE docs_select AS " + statements.Select(rotation::kLo | rotation::kHi));
    for (const auto& line :
         txn.exec("EXPLAIN (COSTS OFF) EXECUTE docs_select('" + txn.esc(b["lo"].as<std::string>()) +
                  "', '" + txn.esc(b["hi"].as<std::string>()) + "', '" +
                  txn.esc(direction.source_prefixes_literal) + "', '" +
                  txn.esc(direction.source_ids_literal) + "', 101)")) {
      plan += line[0].as<std::string>() + "\n";
    }
  }
  EXPECT_THAT(plan, HasSubstr("docs_1")) << plan;
  EXPECT_THAT(plan, Not(HasSubstr("Append"))) << plan;
  EXPECT_THAT(plan, Not(::testing::ContainsRegex("docs_[023]"))) << plan;

  Work(job);
  EXPECT_EQ(JobState(job), "completed");
  EXPECT_THAT(LeavesOf(job, "sweep"),
              ::testing::MatchesRegex("docs_0:[0-9]+,docs_1:[0-9]+,docs_2:[0-9]+,docs_3:[0-9]+"));
  ExpectDocsUnder("public.docs", 2, docs, docs.size());

  // Two levels: LIST (region), its 'eu' partition by HASH (id).
  Exec(
      "CREATE TABLE public.notes (region text, id bigint, token bytea, PRIMARY KEY (region, id)) "
      "PARTITION BY LIST (region);"
      "CREATE TABLE public.notes_eu PARTITION OF public.notes FOR VALUES IN ('eu') PARTITION BY "
      "HASH (id);"
      "CREATE TABLE public.notes_eu_0 PARTITION OF public.notes_eu FOR VALUES WITH (MODULUS 2, "
      "REMAINDER 0);"
      "CREATE TABLE public.notes_eu_1 PARTITION OF public.notes_eu FOR VALUES WITH (MODULUS 2, "
      "REMAINDER 1);"
      "CREATE TABLE public.notes_us PARTITION OF public.notes FOR VALUES IN ('us')");
  std::map<std::string, std::string> notes;
  {
    std::vector<std::string> v;
    std::vector<Row> r;
    for (int64_t n = 1; n <= 600; ++n) {
      const std::string region = n % 3 ? "eu" : "us";
      v.push_back("'" + region + "', " + std::to_string(n));
      r.push_back({JsonKey({region, std::to_string(n)}), PlaintextFor(n)});
      notes[r.back().key_text] = PlaintextFor(n);
    }
    Insert("public.notes", "region, id", v, r, "notes:");
  }
  const int64_t notes_job =
      CreateJobCli({"--table", "public.notes", "--column", "token", "--map", "1:2", "--ad-template",
                    "{table}:{pk}", "--batch-size", "100", "--stages", "50,100"});
  ASSERT_GT(notes_job, 0);
  EXPECT_THAT(LeavesOf(notes_job, "rollout"),
              ::testing::MatchesRegex("notes_eu_0:[0-9]+,notes_eu_1:[0-9]+,notes_us:[0-9]+"));
  Work(notes_job);
  ASSERT_EQ(Rekey({"job", "advance", std::to_string(notes_job), "--observe", "0s"}).exit_code, 0);
  Work(notes_job);
  EXPECT_EQ(JobState(notes_job), "completed");
  ExpectAllUnder("public.notes",
                 "'[' || to_json(t.region)::text || ',' || to_json(t.id::text)::text || ']'", 2,
                 notes, "notes:");
  ProcessResult verify = Rekey({"job", "verify", std::to_string(notes_job)});
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
}

// A partition detached and another dropped while a worker runs: their batches end with the
// reason naming each (on the batch, in `rekey status`, rekey.progress and the job's report),
// nothing fails, the rest of the table is rotated and verifies, and the detached partition, a
// table of its own now, is left as it was.
TEST_F(PartitionsTest, APartitionDetachedOrDroppedMidJobEndsItsBatchesWithTheReason) {
  std::map<std::string, std::string> docs = MakeDocs(4000);
  const int64_t job =
      CreateJobCli({"--table", "public.docs", "--column", "token", "--map", "1:2", "--ad-template",
                    "{table}:{pk}", "--batch-size", "50", "--stages", "100"});
  ASSERT_GT(job, 0);
  const std::string j = std::to_string(job);
  const int64_t leaf_batches = Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                                     " AND partition_name IN ('docs_2', 'docs_3')");
  ASSERT_GT(leaf_batches, 0);
  const size_t detached_rows = size_t(Count("SELECT count(*) FROM public.docs_3"));
  std::map<std::string, std::string> kept;  // the rows still the table's after both
  {
    pqxx::read_transaction txn(conn());
    for (const auto& row : txn.exec("SELECT id::text AS id FROM ONLY public.docs_0 UNION ALL "
                                    "SELECT id::text FROM ONLY public.docs_1")) {
      kept[row["id"].as<std::string>()] = docs[row["id"].as<std::string>()];
    }
  }
  // Slow enough (400 rows/s, about 10 s in all) that the leaves planned last are still ahead.
  ChildProcess worker(
      {REKEY_BINARY, "--db", conninfo(), "work", "--job", j, "--max-rows-per-second", "400"},
      WorkerEnv());
  for (int i = 0; i < 1000 && Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                                    " AND state = 'done'") < 3;
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                  " AND partition_name IN ('docs_2', 'docs_3') AND state <> 'pending'"),
            0)
      << "the worker reached the leaves before they went";
  Exec("ALTER TABLE public.docs DETACH PARTITION public.docs_3");
  Exec("DROP TABLE public.docs_2");
  ProcessResult r = worker.Wait(180);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(JobState(job), "completed")
      << Scalar("SELECT coalesce(state_reason, '') FROM rekey.jobs WHERE job_id = " + j);

  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                  " AND state = 'done' AND rows_done = 0 AND end_reason = "
                  "'partition public.docs_3 was detached from public.docs'"),
            Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                  " AND partition_name = 'docs_3'"));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                  " AND state = 'done' AND end_reason = 'partition public.docs_2 was dropped'"),
            Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                  " AND partition_name = 'docs_2'"));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                  " AND end_reason IS NOT NULL"),
            leaf_batches);
  EXPECT_EQ(Count("SELECT batches_partition_gone FROM rekey.progress WHERE job_id = " + j),
            leaf_batches);
  EXPECT_EQ(Scalar("SELECT string_agg(x->>'partition' || ' ' || (x->>'batches'), ', ') FROM "
                   "jsonb_array_elements(rekey.job_report(" +
                   j + ")->'partitions_gone') x"),
            "public.docs_2 " +
                std::to_string(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                                     " AND partition_name = 'docs_2'")) +
                ", public.docs_3 " +
                std::to_string(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                                     " AND partition_name = 'docs_3'")));
  ProcessResult status = Rekey({"status", j});
  EXPECT_THAT(status.out, HasSubstr("PARTITIONS GONE"));
  EXPECT_THAT(status.out, HasSubstr("partition public.docs_3 was detached from public.docs"));

  ExpectDocsUnder("public.docs", 2, kept, kept.size());
  ExpectDocsUnder("public.docs_3", 1, docs, detached_rows);  // not rotated: no longer the table's
  ProcessResult verify = Rekey({"job", "verify", j});
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
}

// A partition attached after the job was created (its rollout stages were planned) holds rows
// under the old key: no rollout batch names it, the sweep, planned per leaf attached when it
// opens, covers it with one batch over all of it, and every value ends under the new key.
TEST_F(PartitionsTest, APartitionAttachedAfterTheRolloutIsCoveredByTheSweep) {
  Exec("CREATE TABLE public.orders (id bigint PRIMARY KEY, token bytea) PARTITION BY RANGE (id)");
  for (int p = 0; p < 3; ++p) {
    Exec("CREATE TABLE public.orders_" + std::to_string(p) +
         " PARTITION OF public.orders FOR VALUES FROM (" + std::to_string(p * 1000 + 1) + ") TO (" +
         std::to_string(p * 1000 + 1001) + ")");
  }
  std::map<std::string, std::string> expected;
  auto rows = [&](const std::string& table, int64_t first, int64_t count) {
    std::vector<std::string> v;
    std::vector<Row> r;
    for (int64_t id = first; id < first + count; ++id) {
      v.push_back(std::to_string(id));
      r.push_back({std::to_string(id), PlaintextFor(id)});
      expected[std::to_string(id)] = PlaintextFor(id);
    }
    Insert(table, "id", v, r, "orders:");
  };
  rows("public.orders", 1, 3000);
  const int64_t job =
      CreateJobCli({"--table", "public.orders", "--column", "token", "--map", "1:2",
                    "--ad-template", "{table}:{pk}", "--batch-size", "100", "--stages", "10,100"});
  ASSERT_GT(job, 0);
  const std::string j = std::to_string(job);
  Work(job);
  ASSERT_EQ(JobState(job), "awaiting_approval");
  Exec("CREATE TABLE public.orders_3 (LIKE public.orders INCLUDING ALL)");
  rows("public.orders_3", 3001, 1000);
  Exec(
      "ALTER TABLE public.orders ATTACH PARTITION public.orders_3 FOR VALUES FROM (3001) TO "
      "(4001)");
  ASSERT_EQ(Rekey({"job", "advance", j, "--observe", "0s"}).exit_code, 0);
  Work(job);
  EXPECT_EQ(JobState(job), "completed")
      << Scalar("SELECT coalesce(state_reason, '') FROM rekey.jobs WHERE job_id = " + j);
  EXPECT_THAT(LeavesOf(job, "rollout"),
              ::testing::MatchesRegex("orders_0:[0-9]+,orders_1:[0-9]+,orders_2:[0-9]+"));
  // The first sweep moved its 1000 values; the next one, which ends the job, found none.
  EXPECT_EQ(Scalar("SELECT string_agg(concat_ws('|', coalesce(lo, '-'), coalesce(hi, '-'), "
                   "rows_done), ',' ORDER BY b.batch_no) FROM rekey.batches b JOIN "
                   "rekey.job_stages s USING (job_id, stage_no) WHERE s.kind = 'sweep' AND "
                   "b.partition_name = 'orders_3' AND b.job_id = " +
                   j),
            "-|-|1000,-|-|0");
  ExpectAllUnder("public.orders", "t.id::text", 2, expected, "orders:");
}

// A table partitioned by quarter with the partition column inside its key (tenant_id, created_at,
// id), rolled back after the first of two stages: the census (`rekey keys usage`) and `rekey job
// verify` count each value once, through the parent and never again through its leaf, both
// while the job is half way and after the rollback has moved every leaf back to the old key,
// and every value, decrypted here, is its own plaintext under the key the census names.
TEST_F(PartitionsTest,
       ARangePartitionedCompositeKeyTableRollsBackAndItsCensusAndVerifyCountEveryLeaf) {
  Exec(
      "CREATE TABLE public.visits (tenant_id text NOT NULL, created_at timestamptz NOT NULL, id "
      "bigint NOT NULL, token bytea, PRIMARY KEY (tenant_id, created_at, id)) PARTITION BY RANGE "
      "(created_at)");
  for (int q = 0; q < 4; ++q) {
    char range[96];
    std::snprintf(range, sizeof range,
                  "FROM ('2026-%02d-01 00:00:00+00') TO ('%04d-%02d-01 00:00:00+00')", q * 3 + 1,
                  q == 3 ? 2027 : 2026, q == 3 ? 1 : q * 3 + 4);
    Exec("CREATE TABLE public.visits_q" + std::to_string(q + 1) +
         " PARTITION OF public.visits FOR VALUES " + range);
  }
  constexpr int64_t kRows = 1200;
  std::map<std::string, std::string> expected;
  {
    std::vector<std::string> v;
    std::vector<Row> r;
    for (int64_t id = 1; id <= kRows; ++id) {
      char ts[40], iso[40];
      const int m = 1 + int(id % 12), day = 1 + int(id % 28), hour = int(id % 24),
                minute = int(id % 60), second = int(id / 60 % 60);
      std::snprintf(ts, sizeof ts, "2026-%02d-%02d %02d:%02d:%02d+00", m, day, hour, minute,
                    second);
      std::snprintf(iso, sizeof iso, "2026-%02d-%02dT%02d:%02d:%02d.000000Z", m, day, hour, minute,
                    second);
      const std::string tenant = kTenants[id % 4];
      v.push_back("'" + tenant + "', '" + ts + "', " + std::to_string(id));
      r.push_back({JsonKey({tenant, iso, std::to_string(id)}), PlaintextFor(id)});
      expected[r.back().key_text] = PlaintextFor(id);
    }
    Insert("public.visits", "tenant_id, created_at, id", v, r, "visits:");
  }
  const std::string key_sql =
      "'[' || to_json(t.tenant_id)::text || ',' || to_json(to_char(t.created_at AT TIME ZONE "
      "'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))::text || ',' || to_json(t.id::text)::text || "
      "']'";

  // Each leaf's values per key, each decrypted here to its own plaintext: "leaf:key=n,...".
  auto keys_by_leaf = [&] {
    std::map<std::string, std::map<uint32_t, int64_t>> counts;
    pqxx::read_transaction txn(conn());
    for (const auto& row : txn.exec("SELECT (SELECT relname FROM pg_class WHERE oid = t.tableoid) "
                                    "AS leaf, " +
                                    key_sql + " AS k, t.token FROM public.visits t")) {
      const std::string k = row["k"].as<std::string>();
      uint32_t kid = 0;
      EXPECT_EQ(TinkDecrypt(pqxx::binarystring(row["token"]).str(), &kid, "visits:" + k),
                expected.at(k));
      ++counts[row["leaf"].as<std::string>()][kid];
    }
    return counts;
  };
  auto under = [](const std::map<std::string, std::map<uint32_t, int64_t>>& counts, uint32_t key) {
    int64_t n = 0;
    for (const auto& [leaf, by_key] : counts) {
      if (by_key.count(key)) n += by_key.at(key);
    }
    return n;
  };
  // The census of `key`: the table listed once, no leaf of it listed; its values (0 if unlisted).
  auto census = [&](uint32_t key) -> int64_t {
    const ProcessResult r = Rekey({"keys", "usage", std::to_string(key), "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    if (r.exit_code != 0) return -1;
    const nlohmann::json listed = nlohmann::json::parse(r.out);
    int64_t values = 0;
    for (const nlohmann::json& c : listed["columns"]) {
      const std::string table = c["table"].get<std::string>();
      EXPECT_NE(table.rfind("visits_", 0), 0u) << "a leaf counted again: " << r.out;
      if (table == "visits") values = c["values"].get<int64_t>();
    }
    EXPECT_EQ(listed["values"].get<int64_t>(), values) << r.out;
    return values;
  };
  // `rekey job verify --json` of job `job`.
  auto verify = [&](int64_t job) {
    const ProcessResult r = Rekey({"job", "verify", std::to_string(job), "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    return r.exit_code == 0 ? nlohmann::json::parse(r.out) : nlohmann::json();
  };

  const int64_t job =
      CreateJobCli({"--table", "public.visits", "--column", "token", "--map", "1:2",
                    "--ad-template", "{table}:{pk}", "--batch-size", "100", "--stages", "25,100"});
  ASSERT_GT(job, 0);
  const std::string j = std::to_string(job);
  EXPECT_THAT(LeavesOf(job, "rollout"),
              ::testing::MatchesRegex(
                  "visits_q1:[0-9]+,visits_q2:[0-9]+,visits_q3:[0-9]+,visits_q4:[0-9]+"));
  const nlohmann::json before = verify(job);
  EXPECT_EQ(before["values_by_key"], nlohmann::json({{"1", kRows}})) << before.dump();

  Work(job);
  ASSERT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs WHERE job_id = " + j),
            "1:awaiting_approval")
      << Scalar("SELECT coalesce(state_reason, '') FROM rekey.jobs WHERE job_id = " + j);
  {
    const auto counts = keys_by_leaf();
    ASSERT_EQ(counts.size(), 4u);
    const int64_t moved = under(counts, 2);
    EXPECT_GT(moved, 0) << "the first stage moved values";
    EXPECT_LT(moved, kRows) << "the first stage moved only some values";
    EXPECT_EQ(under(counts, 1) + moved, kRows);
    EXPECT_EQ(census(1), under(counts, 1));
    EXPECT_EQ(census(2), moved);
    const nlohmann::json half = verify(job);
    EXPECT_EQ(half["values_by_key"], nlohmann::json({{"1", under(counts, 1)}, {"2", moved}}))
        << half.dump();
    EXPECT_EQ(half["plaintext_sha256"], before["plaintext_sha256"]);
  }

  ProcessResult rollback = Rekey({"job", "rollback", j});
  ASSERT_EQ(rollback.exit_code, 0) << rollback.err;
  Work(job);
  EXPECT_EQ(JobState(job), "rolled_back")
      << Scalar("SELECT coalesce(state_reason, '') FROM rekey.jobs WHERE job_id = " + j);
  ExpectAllUnder("public.visits", key_sql, 1, expected, "visits:");
  const auto counts = keys_by_leaf();
  for (const auto& [leaf, by_key] : counts) {
    EXPECT_EQ(by_key, (std::map<uint32_t, int64_t>{{1, kRows / 4}})) << leaf;
  }
  EXPECT_EQ(census(1), kRows);
  EXPECT_EQ(census(2), 0);
  const nlohmann::json after = verify(job);
  EXPECT_EQ(after["rows"], kRows) << after.dump();
  EXPECT_EQ(after["values_by_key"], nlohmann::json({{"1", kRows}})) << after.dump();
  EXPECT_EQ(after["values_under_source_keys"], kRows);
  EXPECT_EQ(after["values_under_target_keys"], 0);
  EXPECT_EQ(after["failures"], 0);
  EXPECT_EQ(after["plaintext_sha256"], before["plaintext_sha256"]) << "no plaintext changed";
}

}  // namespace
}  // namespace rekey::testing
