// The aws-kms column codec end to end: the real rekey binary, a real PostgreSQL and the loopback
// AWS KMS (tests/kms/aws_kms_server.py). Values are AWS KMS ciphertext blobs made by boto3's
// Encrypt (tests/aws_kms_codec/kms_app.py, as an application makes them), and `rekey job create
// --codec aws-kms` plus workers move them to another KMS key with ReEncrypt. Checked: a staged
// rotation while the application writes leaves every value decrypting, by boto3, to its plaintext
// under the new key, and no application write lost; blobs KMS refuses are quarantined with KMS's
// message, the rest complete; a rollback brings values back under the old key in the same form; a
// throttled KMS pauses the batch (nothing written, nothing quarantined) until KMS answers again;
// unfit definitions are refused with one line.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "aws_kms_support.h"
#include "common/bytes.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

constexpr int kRows = 60;
constexpr char kContext[] = R"({"app":"billing"})";

// The application's plaintext of row `id` (distinctive, so a leak into any output is found).
std::string Plaintext(int id) {
  return "IBAN-DE89-" + std::to_string(370400 + id * 7919);
}

std::string HexLiteral(const Bytes& b) {
  return "\\x" + HexEncode(b);
}

class AwsKmsCodecTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    server_ = std::make_unique<AwsKmsTestServer>(std::vector<std::string>{
        "--key", "alias/app-old", "--key", "alias/app-new", "--key", "alias/other"});
  }
  void TearDown() override {
    server_.reset();
    PgTest::TearDown();
  }

  EnvOverrides Env() const {
    return With(server_->Env("alias/app-new"), {{"REKEY_KMS_BREAKER_COOLDOWN_MS", "300"}});
  }

  ProcessResult Rekey(std::vector<std::string> args) {
    args.insert(args.begin(), {"--db", conninfo()});
    return RunRekey(args, Env());
  }

  nlohmann::json App(const std::vector<std::string>& args, const nlohmann::json& input) {
    std::vector<std::string> argv = {
        "/usr/bin/python3", std::string(REKEY_SOURCE_DIR) + "/tests/aws_kms_codec/kms_app.py"};
    argv.insert(argv.end(), args.begin(), args.end());
    ProcessResult r = RunProcess(argv, Env(), input.dump());
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out.empty() ? "{}" : r.out);
  }

  // boto3 Encrypt of Plaintext(id) for each id under `key` with `context`: id -> blob. Sets
  // *arn to the key's ARN as KMS reports it.
  std::map<int, Bytes> Encrypt(const std::string& key, const std::vector<int>& ids,
                               const std::string& context = kContext, std::string* arn = nullptr) {
    nlohmann::json in = nlohmann::json::object();
    for (int id : ids) in[std::to_string(id)] = Plaintext(id);
    nlohmann::json out = App({"encrypt", key, context}, in);
    if (arn) *arn = out.value("key_arn", "");
    std::map<int, Bytes> blobs;
    for (const auto& [id, blob] : out["blobs"].items()) {
      blobs[std::stoi(id)] = *Base64Decode(blob.get<std::string>());
    }
    return blobs;
  }

  // boto3 Decrypt of each blob with the context: id -> {"plaintext", "key_arn"} or {"error"}.
  nlohmann::json Decrypt(const std::map<int, Bytes>& blobs, const std::string& context = kContext) {
    nlohmann::json in = nlohmann::json::object();
    for (const auto& [id, blob] : blobs) in[std::to_string(id)] = Base64Encode(blob);
    return App({"decrypt", context}, in);
  }

  // The bytea column's values by id.
  std::map<int, Bytes> Stored(const std::string& where = "true") {
    std::map<int, Bytes> out;
    pqxx::read_transaction txn(conn());
    for (const auto& row : txn.exec("SELECT id, encode(payload, 'base64') AS b FROM "
                                    "public.secrets WHERE payload IS NOT NULL AND " +
                                    where + " ORDER BY id")) {
      std::string b64 = row["b"].as<std::string>();
      b64.erase(std::remove(b64.begin(), b64.end(), '\n'), b64.end());
      out[row["id"].as<int>()] = *Base64Decode(b64);
    }
    return out;
  }

  // public.secrets (bytea payload): rows 1..kRows under alias/app-old with kContext, then the
  // values KMS must refuse or the job must leave: a tampered blob, a blob under another key, a
  // blob bound to another context, bytes that are no blob, an empty value, and a NULL.
  void Seed() {
    Exec("CREATE TABLE public.secrets (id bigint PRIMARY KEY, payload bytea, note text)");
    std::vector<int> ids;
    for (int id = 1; id <= kRows + 1; id++) ids.push_back(id);
    std::map<int, Bytes> blobs = Encrypt("alias/app-old", ids, kContext, &old_arn_);
    Bytes& tampered = blobs[kRows + 1];
    tampered[tampered.size() - 3] ^= 0x01;
    blobs[kRows + 2] = Encrypt("alias/other", {kRows + 2}, kContext, &other_arn_)[kRows + 2];
    blobs[kRows + 3] = Encrypt("alias/app-old", {kRows + 3}, R"({"app":"crm"})")[kRows + 3];
    blobs[kRows + 4] = Bytes{'n', 'o', 't', ' ', 'a', ' ', 'b', 'l', 'o', 'b'};
    pqxx::work txn(conn());
    for (const auto& [id, blob] : blobs) {
      txn.exec_params("INSERT INTO public.secrets VALUES ($1, $2::text::bytea, 'n')", id,
                      HexLiteral(blob));
    }
    txn.exec_params("INSERT INTO public.secrets VALUES ($1, ''::bytea, 'empty')", kRows + 5);
    txn.exec_params("INSERT INTO public.secrets VALUES ($1, NULL, 'null')", kRows + 6);
    txn.commit();
    Encrypt("alias/app-new", {0}, kContext, &new_arn_);
  }

  std::vector<std::string> CreateArgs(const std::string& stages = "100",
                                      const std::string& batch_size = "8") {
    return {"job",
            "create",
            "--table",
            "public.secrets",
            "--column",
            "payload",
            "--codec",
            "aws-kms",
            "--source-kms-key",
            "alias/app-old",
            "--kms-key",
            "alias/app-new",
            "--encryption-context",
            kContext,
            "--stages",
            stages,
            "--batch-size",
            batch_size,
            "--error-threshold",
            "0.5"};
  }

  ProcessResult Work(const std::string& job) {
    return RunProcess(
        {REKEY_BINARY, "--db", conninfo(), "work", "--job", job, "--concurrency", "2"}, Env(), "",
        300);
  }

  std::string Quarantined() {
    return Scalar(
        "SELECT string_agg(pk || ':' || error_class, ',' ORDER BY pk::int) FROM "
        "rekey.row_failures");
  }

  std::unique_ptr<AwsKmsTestServer> server_;
  std::string old_arn_, new_arn_, other_arn_;
};

TEST_F(AwsKmsCodecTest, StagedRotationWhileTheApplicationWritesEndsUnderTheNewKey) {
  Seed();
  std::vector<std::string> args = CreateArgs("10,100");
  args.push_back("--per-row-audit");
  ProcessResult created = Rekey(args);
  ASSERT_EQ(created.exit_code, 0) << created.err;
  const std::string job = Scalar("SELECT max(job_id) FROM rekey.jobs");
  EXPECT_EQ(Scalar("SELECT aws_kms_source_key_arn || ' ' || aws_kms_key_arn || ' ' || "
                   "aws_kms_context::text FROM rekey.jobs"),
            old_arn_ + " " + new_arn_ + R"( {"app": "billing"})");
  EXPECT_EQ(Scalar("SELECT codec || ' ' || encoding FROM rekey.targets"), "aws-kms bytea");

  // The application meanwhile: re-saves secrets under the new key (boto3 Encrypt, made ahead) and
  // edits the note column of random rows, one autocommit UPDATE each.
  std::vector<int> fresh_ids;
  for (int id = 1; id <= kRows; id += 3) fresh_ids.push_back(id);
  const std::map<int, Bytes> fresh = Encrypt("alias/app-new", fresh_ids);
  std::atomic<bool> stop{false};
  std::map<int, int> notes;
  std::thread writer([&] {
    pqxx::connection app(conninfo());
    std::mt19937 rng(11);
    std::uniform_int_distribution<int> pick(1, kRows);
    auto next = fresh.begin();
    while (!stop.load()) {
      const int id = pick(rng);
      pqxx::nontransaction txn(app);
      txn.exec_params0("UPDATE public.secrets SET note = note || '+' WHERE id = $1", id);
      ++notes[id];
      if (next != fresh.end()) {
        txn.exec_params0("UPDATE public.secrets SET payload = $2::text::bytea WHERE id = $1",
                         next->first, HexLiteral(next->second));
        ++next;
      }
    }
  });
  ProcessResult first = Work(job);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  ASSERT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs"), "1:awaiting_approval")
      << Scalar("SELECT state_reason FROM rekey.jobs");
  ASSERT_EQ(Rekey({"job", "advance", job}).exit_code, 0);
  ProcessResult second = Work(job);
  stop = true;
  writer.join();
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs"), "completed")
      << Scalar("SELECT state_reason FROM rekey.jobs");

  // boto3 decrypts every good value, with the application's context, to its plaintext, and KMS
  // says it is under the new key.
  const nlohmann::json read = Decrypt(Stored("id <= " + std::to_string(kRows)));
  ASSERT_EQ(read.size(), size_t(kRows));
  for (int id = 1; id <= kRows; id++) {
    const nlohmann::json& r = read[std::to_string(id)];
    ASSERT_EQ(r.value("plaintext", r.dump()), Plaintext(id)) << id;
    ASSERT_EQ(r.value("key_arn", ""), new_arn_) << id;
  }
  // No application write was lost.
  for (const auto& [id, n] : notes) {
    ASSERT_EQ(Scalar("SELECT length(note) FROM public.secrets WHERE id = " + std::to_string(id)),
              std::to_string(1 + n))
        << id;
  }
  // Refused values are untouched and quarantined with KMS's reason; NULL is left alone.
  const std::string r = std::to_string(kRows);
  EXPECT_EQ(Quarantined(), std::to_string(kRows + 1) + ":aws_kms_rejected," +
                               std::to_string(kRows + 2) + ":aws_kms_other_key," +
                               std::to_string(kRows + 3) + ":aws_kms_rejected," +
                               std::to_string(kRows + 4) + ":aws_kms_rejected," +
                               std::to_string(kRows + 5) + ":empty");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.row_failures WHERE error_class = "
                   "'aws_kms_rejected' AND detail LIKE 'InvalidCiphertextException: %'"),
            "3")
      << Scalar("SELECT string_agg(detail, ' | ') FROM rekey.row_failures");
  EXPECT_EQ(Scalar("SELECT detail FROM rekey.row_failures WHERE error_class = "
                   "'aws_kms_other_key'"),
            "under KMS key " + other_arn_ + ", neither " + old_arn_ + " nor " + new_arn_ +
                " of the job; left as it is");
  const nlohmann::json refused = Decrypt(Stored("id > " + r));
  EXPECT_EQ(refused[std::to_string(kRows + 2)].value("key_arn", ""), other_arn_);
  EXPECT_EQ(Scalar("SELECT count(*) FROM public.secrets WHERE payload IS NULL"), "1");

  // The audit: per value, key 1 (source ARN) -> key 2 (destination ARN); per batch, the ARNs.
  const int64_t moved =
      std::stoll(Scalar("SELECT count(*) FROM rekey.value_audit WHERE from_key_id = 1 AND "
                        "to_key_id = 2"));
  // A value the application re-saved under the new key before its batch needed no move (one
  // re-saved after its batch was moved first).
  EXPECT_LE(moved, kRows);
  EXPECT_GE(moved + int64_t(fresh.size()), kRows);
  EXPECT_EQ(Scalar("SELECT sum((details->>'rows_reencrypted')::int) FROM rekey.audit WHERE "
                   "action = 'rotation.batch.completed'"),
            std::to_string(moved));
  // A batch's "keys" counts the values of its last chunk (earlier ones are in the value audit):
  // only the pair of ARNs, never key numbers.
  EXPECT_EQ(
      Scalar("SELECT string_agg(DISTINCT k, ',') FROM rekey.audit, "
             "jsonb_object_keys(details->'keys') k WHERE action = 'rotation.batch.completed'"),
      old_arn_ + "->" + new_arn_);
  EXPECT_EQ(Scalar("SELECT DISTINCT details->'aws_kms_keys'->>'2' FROM rekey.audit WHERE action "
                   "= 'rotation.batch.completed'"),
            new_arn_);

  // rekey never held a plaintext, so none is in what it printed.
  for (const ProcessResult* p : {&created, &first, &second}) {
    for (int id = 1; id <= kRows; id++) {
      ASSERT_EQ(p->out.find(Plaintext(id)), std::string::npos);
      ASSERT_EQ(p->err.find(Plaintext(id)), std::string::npos);
    }
  }
  // An aws-kms target holds no keyring key's values; verify says what it cannot prove.
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.key_usage(1)"), "0");
  ProcessResult verify = Rekey({"job", "verify", job});
  EXPECT_EQ(verify.exit_code, 5) << verify.out << verify.err;  // the empty value
  EXPECT_NE(verify.out.find(std::to_string(kRows + 4) +
                            " AWS KMS blobs: their KMS key is not proven without KMS"),
            std::string::npos)
      << verify.out;

  // The compliance report's evidence names the job's KMS keys as a keyring job's names its keys,
  // and its verification counts the blobs it cannot prove.
  ProcessResult report = Rekey({"report", job, "--format", "json", "--verify", "--no-store"});
  ASSERT_EQ(report.exit_code, 0) << report.err;
  const nlohmann::json evidence = nlohmann::json::parse(report.out);
  ASSERT_EQ(evidence["keys"].size(), 1u) << evidence["keys"];
  EXPECT_EQ(evidence["keys"][0]["before"]["kms_key_ref"], old_arn_);
  EXPECT_EQ(evidence["keys"][0]["after"]["kms_key_ref"], new_arn_);
  EXPECT_EQ(evidence["keys"][0]["after"]["kms_provider"], "aws-kms");
  EXPECT_EQ(evidence["job"]["codec"], "aws-kms");
  EXPECT_EQ(evidence["job"]["encryption_context"], nlohmann::json::parse(kContext));
  EXPECT_EQ(evidence["outcome"], "rotated");
  EXPECT_EQ(evidence["verification"]["not_proven"], kRows + 4);
  EXPECT_EQ(evidence["verification"]["failures"], 1);
  ProcessResult markdown = Rekey({"report", job, "--no-store"});
  ASSERT_EQ(markdown.exit_code, 0) << markdown.err;
  EXPECT_NE(markdown.out.find("| after | - | - | aws-kms | `" + new_arn_ + "` |"),
            std::string::npos)
      << markdown.out;
}

TEST_F(AwsKmsCodecTest, RollbackReturnsBase64ValuesToTheOldKeyInTheSameForm) {
  Exec("CREATE TABLE public.secrets (id bigint PRIMARY KEY, payload text)");
  std::vector<int> ids;
  for (int id = 1; id <= kRows; id++) ids.push_back(id);
  std::map<int, Bytes> blobs = Encrypt("alias/app-old", ids, "{}", &old_arn_);
  {
    pqxx::work txn(conn());
    for (const auto& [id, blob] : blobs) {
      txn.exec_params("INSERT INTO public.secrets VALUES ($1, $2)", id, Base64Encode(blob));
    }
    txn.commit();
  }
  ProcessResult created =
      Rekey({"job", "create", "--table", "public.secrets", "--column", "payload", "--codec",
             "aws-kms", "--source-kms-key", "alias/app-old", "--kms-key", "alias/app-new",
             "--encoding", "base64", "--stages", "50,100", "--batch-size", "8"});
  ASSERT_EQ(created.exit_code, 0) << created.err;
  const std::string job = Scalar("SELECT max(job_id) FROM rekey.jobs");
  ASSERT_EQ(Work(job).exit_code, 0);
  ASSERT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs"), "1:awaiting_approval")
      << Scalar("SELECT state_reason FROM rekey.jobs");
  auto read = [&] {
    std::map<int, Bytes> now;
    pqxx::read_transaction txn(conn());
    for (const auto& row : txn.exec("SELECT id, payload FROM public.secrets ORDER BY id")) {
      const std::string text = row["payload"].as<std::string>();
      EXPECT_EQ(Base64Encode(*Base64Decode(text)), text) << "standard padded base64";
      now[row["id"].as<int>()] = *Base64Decode(text);
    }
    return Decrypt(now, "{}");
  };
  int moved = 0;
  const nlohmann::json halfway = read();
  for (const auto& [id, r] : halfway.items()) moved += r.value("key_arn", "") != old_arn_;
  EXPECT_GT(moved, 0);
  EXPECT_LT(moved, kRows);

  ProcessResult rollback = Rekey({"job", "rollback", job, "--reason", "the app lacks kms:Decrypt"});
  ASSERT_EQ(rollback.exit_code, 0) << rollback.err;
  ASSERT_EQ(Work(job).exit_code, 0);
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs"), "rolled_back");
  const nlohmann::json back = read();
  ASSERT_EQ(back.size(), size_t(kRows));
  for (const auto& [id, r] : back.items()) {
    ASSERT_EQ(r.value("key_arn", r.dump()), old_arn_) << id;
    ASSERT_EQ(r.value("plaintext", ""), Plaintext(std::stoi(id))) << id;
  }
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.row_failures"), "0");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.value_audit"), "0");
}

TEST_F(AwsKmsCodecTest, ThrottledKmsPausesTheBatchWithNothingWrittenAndResumes) {
  constexpr int kFew = 24;
  Exec("CREATE TABLE public.secrets (id bigint PRIMARY KEY, payload bytea, note text)");
  std::vector<int> ids;
  for (int id = 1; id <= kFew; id++) ids.push_back(id);
  const std::map<int, Bytes> before = Encrypt("alias/app-old", ids, kContext, &old_arn_);
  {
    pqxx::work txn(conn());
    for (const auto& [id, blob] : before) {
      txn.exec_params("INSERT INTO public.secrets VALUES ($1, $2::text::bytea, 'n')", id,
                      HexLiteral(blob));
    }
    txn.commit();
  }
  ProcessResult created = Rekey(CreateArgs("100", "100"));  // one batch
  ASSERT_EQ(created.exit_code, 0) << created.err;
  const std::string job = Scalar("SELECT max(job_id) FROM rekey.jobs");
  // The worker checks its keys, then blocks on the table this test holds: its batch's SELECT
  // (which takes no row lock) waits for the ACCESS EXCLUSIVE lock, inside the batch's
  // transaction. KMS then throttles every call, and the table is let go: every ReEncrypt of the
  // batch is refused with ThrottlingException until the retries give up.
  pqxx::connection holder(conninfo());
  auto hold = std::make_unique<pqxx::work>(holder);
  hold->exec("LOCK TABLE public.secrets IN ACCESS EXCLUSIVE MODE");
  ChildProcess worker({REKEY_BINARY, "--db", conninfo(), "work", "--job", job},
                      With(Env(), {{"REKEY_KMS_MAX_ATTEMPTS", "3"}}));
  bool blocked = false;
  for (int i = 0; i < 1200 && !blocked && worker.Running(); i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    blocked = Scalar(
                  "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                  "AND wait_event_type = 'Lock'") != "0";
  }
  ASSERT_TRUE(blocked) << "the worker never reached the locked row: " << worker.Wait(10).err;
  server_->Control({{"throttle_ratio", 1.0}});
  hold->commit();
  hold.reset();
  bool throttled = false;
  for (int i = 0; i < 600 && !throttled; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    throttled = AwsKmsTestServer::Count(server_->Stats(), "errors", "ThrottlingException") >= 6;
  }
  ASSERT_TRUE(throttled) << server_->Stats().dump();
  // Paused: nothing written, nothing quarantined, no attempt used up.
  EXPECT_EQ(Stored(), before);
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.row_failures"), "0");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.batches WHERE state = 'failed'"), "0");

  server_->Control({{"throttle_ratio", 0.0}});
  ProcessResult work = worker.Wait(180);
  ASSERT_EQ(work.exit_code, 0) << work.err;
  EXPECT_NE(work.err.find("ThrottlingException"), std::string::npos) << work.err;
  EXPECT_NE(work.err.find("\"transient\":true"), std::string::npos) << work.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs"), "completed")
      << Scalar("SELECT state_reason FROM rekey.jobs");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.row_failures"), "0");
  const nlohmann::json read = Decrypt(Stored());
  ASSERT_EQ(read.size(), size_t(kFew));
  for (const auto& [id, r] : read.items()) {
    ASSERT_EQ(r.value("plaintext", r.dump()), Plaintext(std::stoi(id))) << id;
    ASSERT_NE(r.value("key_arn", ""), old_arn_) << id;
  }
}

TEST_F(AwsKmsCodecTest, CreateRefusesUnfitDefinitionsWithOneLine) {
  Seed();
  server_->Control({{"key_state", {{"key", "alias/other"}, {"state", "Disabled"}}}});
  const std::vector<CreateRefusal> cases = {
      {{"--kms-key", "alias/other"}, 4, "is Disabled"},
      {{"--kms-key", "alias/absent"}, 4, "alias/absent"},
      {{"--kms-key", "alias/app-old"}, 2, "are the same key"},
      {{"--ad-template", "{table}:{pk}"}, 2, "per-row contexts (--ad-template) are not supported"},
      {{"--encryption-context", "[1]"}, 2, "a JSON object of strings"},
      {{"--encoding", "hex"}, 2, "bytea or base64 text"},
      {{"--map", "1:2"}, 2, "--map does not apply"},
  };
  ExpectCreateRefusals(CreateArgs(), cases,
                       [&](const std::vector<std::string>& args) { return Rekey(args); });
  // The KMS flags mean nothing to another codec.
  ProcessResult other = Rekey({"job", "create", "--table", "public.secrets", "--column", "payload",
                               "--map", "1:2", "--kms-key", "alias/app-new"});
  EXPECT_EQ(other.exit_code, 2) << other.err;
  EXPECT_NE(other.err.find("apply to --codec aws-kms only"), std::string::npos) << other.err;
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.jobs"), "0");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.targets"), "0");
}

}  // namespace
}  // namespace rekey::testing
