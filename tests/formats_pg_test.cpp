// Application formats against the real PostgreSQL, with real `rekey work` processes (issue #18):
// Tink values stored as base64, base64url and hex text; Tink values inside jsonb documents, with
// an application writing other fields of the same documents meanwhile; quarantine of values that
// are not in their column's stored form; rollback into the old key in the same form; and Fernet
// tokens made and read back by Debian's python3-cryptography (tests/fernet/fernet_app.py),
// rotated while the application writes under the old key, and rolled back.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <signal.h>
#include <atomic>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "crypto/fernet.h"
#include "crypto/text_encoding.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "ops_support.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using crypto::TextEncoding;
using ::testing::HasSubstr;

const std::string kFernetApp = std::string(REKEY_SOURCE_DIR) + "/tests/fernet/fernet_app.py";

std::string EncodeAs(TextEncoding encoding, const std::string& binary, bool padded = true) {
  std::string text;
  crypto::EncodeText(encoding, reinterpret_cast<const uint8_t*>(binary.data()), binary.size(),
                     crypto::TextStyle{padded}, &text);
  return text;
}

// (key id, plaintext or "<status>") of a Tink value stored as text in `encoding`.
std::pair<uint32_t, std::string> OpenText(TextEncoding encoding, const std::string& text) {
  Bytes binary;
  if (!crypto::DecodeText(encoding, text, &binary)) return {0, "<bad_encoding>"};
  uint32_t key_id = 0;
  std::string plaintext = TinkDecrypt(std::string(binary.begin(), binary.end()), &key_id);
  return {key_id, plaintext};
}

class FormatsTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ImportTestKeys(conn(), {1, 2});
  }

  int64_t CreateJob(const std::string& args) {
    pqxx::work txn(conn());
    int64_t id = txn.exec1("SELECT rekey.create_job(" + args + ")")[0].as<int64_t>();
    txn.commit();
    return id;
  }

  void Work(int64_t job, int processes = 2) { WorkUntilDry(conninfo(), job, processes); }

  ProcessResult Rekey(const std::vector<std::string>& args) { return RekeyAt(conninfo(), args); }

  // id -> text for every row of table_.
  std::map<int64_t, std::string> Tokens() {
    std::map<int64_t, std::string> out;
    pqxx::read_transaction txn(conn());
    for (const auto& row : txn.exec("SELECT id, token FROM " + table_ + " ORDER BY id")) {
      out[row["id"].as<int64_t>()] = row["token"].as<std::string>();
    }
    return out;
  }

  // Seeds table_ (id bigint pk, token text) with `rows` Tink values under key 1 stored in
  // `encoding`, then the malformed rows 900001.. (`bad`, each with its text).
  void SeedText(TextEncoding encoding, int rows, bool padded, const std::vector<std::string>& bad) {
    std::vector<std::string> ids, tokens;
    for (int id = 1; id <= rows; ++id) {
      ids.push_back(std::to_string(id));
      tokens.push_back(EncodeAs(encoding, TinkEncrypt(1, PlaintextFor(id)), padded));
    }
    for (size_t i = 0; i < bad.size(); ++i) {
      ids.push_back(std::to_string(900001 + i));
      tokens.push_back(bad[i]);
    }
    pqxx::work txn(conn());
    txn.exec0("CREATE TABLE " + table_ + " (id bigint PRIMARY KEY, token text)");
    txn.exec_params("INSERT INTO " + table_ + " SELECT * FROM unnest($1::bigint[], $2::text[])",
                    db::TextArrayLiteral(ids), db::TextArrayLiteral(tokens));
    txn.commit();
  }

  // "pk:class" of the job's quarantined values, in key order.
  std::string Quarantined(int64_t job) {
    return Scalar(
        "SELECT string_agg(pk || ':' || error_class, ',' ORDER BY pk) FROM "
        "rekey.row_failures WHERE job_id = " +
        std::to_string(job));
  }

  // What rekey.key_usage (the retire proof) counts under `key` in `target` (schema.table.column).
  int64_t ValuesUnder(uint32_t key, const std::string& target) {
    return Count("SELECT coalesce(sum(n), 0) FROM rekey.key_usage(" + std::to_string(key) +
                 ") WHERE target = '" + target + "'");
  }

  // "column:status:n:formats" of each column of public.`table` that the census (rekey.key_census,
  // what retire and destroy check) lists for `key`; "NULL" for none.
  std::string Census(uint32_t key, const std::string& table) {
    return Scalar(
        "SELECT string_agg(column_name || ':' || status || ':' || coalesce(n::text, '-') "
        "|| ':' || coalesce(formats::text, '{}'), ',' ORDER BY column_name) FROM "
        "rekey.key_census(" +
        std::to_string(key) + ") WHERE schema_name = 'public' AND table_name = '" + table + "'");
  }

  // fernet_app.py `command` (Debian's python3-cryptography) with `request` on stdin: its JSON
  // reply, or null when it failed (recorded as a failure, unless python3-cryptography is missing:
  // the caller skips then).
  nlohmann::json FernetApp(const std::string& command, const nlohmann::json& request = {}) {
    ProcessResult r = RunProcess({"/usr/bin/python3", kFernetApp, command}, {},
                                 request.is_null() ? "" : request.dump());
    if (r.exit_code != 77) {
      EXPECT_EQ(r.exit_code, 0) << r.err;
    }
    return nlohmann::json::parse(r.exit_code == 0 ? r.out : "null");
  }

  // public.cards (id bigint pk, token text) with Python's tokens of PlaintextFor(1..rows) under
  // `key`, token `id` made at time kSeededAt + id.
  void SeedFernet(const std::string& key, int rows) {
    nlohmann::json request = {{"key", key}, {"items", nlohmann::json::array()}};
    for (int id = 1; id <= rows; ++id) {
      request["items"].push_back(
          {{"id", id}, {"plaintext", PlaintextFor(id)}, {"ts", kSeededAt + id}});
    }
    const nlohmann::json made = FernetApp("encrypt", request);
    ASSERT_EQ(made.size(), size_t(rows));
    pqxx::work txn(conn());
    SeedLibraryValues(txn, "CREATE TABLE public.cards (id bigint PRIMARY KEY, token text)",
                      "INSERT INTO public.cards (id, token)", made, {});
    txn.commit();
  }

  // public.cards (id bigint pk, token text) holding `tokens` at `ids`.
  void CreateCards(const std::vector<std::string>& ids, const std::vector<std::string>& tokens) {
    pqxx::work txn(conn());
    txn.exec0("CREATE TABLE public.cards (id bigint PRIMARY KEY, token text)");
    txn.exec_params("INSERT INTO public.cards SELECT * FROM unnest($1::bigint[], $2::text[])",
                    db::TextArrayLiteral(ids), db::TextArrayLiteral(tokens));
    txn.commit();
  }

  // What Python's MultiFernet configured with `keys` reads in every row of table_.
  nlohmann::json ReadFernet(const std::vector<std::string>& keys) {
    nlohmann::json tokens = nlohmann::json::object();
    for (const auto& [id, token] : Tokens()) tokens[std::to_string(id)] = token;
    return FernetApp("read", {{"keys", keys}, {"tokens", tokens}});
  }

  static constexpr int64_t kSeededAt = 1600000000;
  std::string table_ = "public.cards";
};

TEST_F(FormatsTest, TextEncodingsRotateInTheirOwnFormAndQuarantineWhatIsNot) {
  struct Case {
    TextEncoding encoding;
    bool padded;
    std::string not_encoded;  // a value that is not text of the encoding
    // Whether its head still reads as key 1's Tink prefix: the retire proof counts it under key
    // 1 then (by prefix, never decoding whole values), which errs on the side of keeping the key.
    bool head_names_key_1;
  };
  const std::vector<Case> cases = {{TextEncoding::kBase64, true, "not base64!", false},
                                   {TextEncoding::kBase64Url, false, "AQAAAAE+/+/+/+/+", false},
                                   {TextEncoding::kHex, true, "0100000001zz", true}};
  for (const Case& c : cases) {
    const std::string name(crypto::TextEncodingName(c.encoding));
    SCOPED_TRACE(name);
    table_ = "public.cards_" + name;
    // A value of the encoding too short to be a Tink value, and a Tink value whose text was cut.
    const std::string tink = TinkEncrypt(1, "cut");
    const std::string cut = EncodeAs(c.encoding, tink.substr(0, 20), c.padded);
    SeedText(c.encoding, 400, c.padded, {c.not_encoded, cut, ""});
    EXPECT_EQ(ValuesUnder(1, table_ + ".token"), 0) << "not registered yet";
    const int64_t job = CreateJob("'" + table_ +
                                  "', ARRAY['token'], '{\"1\": 2}', p_stages => '{100}', "
                                  "p_batch_size => 64, p_error_threshold => 0.05, p_encoding => '" +
                                  name + "'");
    EXPECT_EQ(ValuesUnder(1, table_ + ".token"), 401 + c.head_names_key_1)
        << "retire must see the text values under key 1 (and the cut one, by its prefix)";
    Work(job);

    for (const auto& [id, text] : Tokens()) {
      if (id > 900000) continue;
      const auto [key, plaintext] = OpenText(c.encoding, text);
      ASSERT_EQ(key, 2u) << id << " " << text;
      ASSERT_EQ(plaintext, PlaintextFor(id)) << id;
      if (c.encoding == TextEncoding::kBase64Url) {
        ASSERT_EQ(text.find('='), std::string::npos) << "written without padding, as it was read";
      }
      if (c.encoding == TextEncoding::kHex) {
        ASSERT_EQ(text, HexEncode(HexDecode(text).value())) << "lower case";
      }
    }
    EXPECT_EQ(Quarantined(job), "900001:bad_encoding,900002:truncated,900003:empty");
    EXPECT_EQ(Scalar("SELECT token FROM " + table_ + " WHERE id = 900002"), cut)
        << "left as it was";
    EXPECT_EQ(ValuesUnder(2, table_ + ".token"), 400);
    EXPECT_EQ(ValuesUnder(1, table_ + ".token"), 1 + c.head_names_key_1)
        << "the cut value still names key 1";

    ProcessResult verify = Rekey({"job", "verify", std::to_string(job)});
    EXPECT_THAT(verify.out, HasSubstr("400 under target keys, 0 under source keys, 3 failed"))
        << verify.err;
    EXPECT_THAT(verify.out + verify.err, HasSubstr("bad_encoding"));
  }
}

TEST_F(FormatsTest, CreateJobRefusesAFormTheColumnCannotHold) {
  Exec("CREATE TABLE public.docs (id bigint PRIMARY KEY, doc jsonb, token text, blob bytea)");
  auto refusal = [&](const std::string& args) {
    try {
      CreateJob("'public.docs', " + args);
    } catch (const pqxx::sql_error& e) {
      return std::string(e.what());
    }
    return std::string("created");
  };
  EXPECT_THAT(refusal("ARRAY['token'], '{\"1\": 2}'"), HasSubstr("not bytea"));
  EXPECT_THAT(refusal("ARRAY['blob'], '{\"1\": 2}', p_encoding => 'base64'"),
              HasSubstr("not text"));
  EXPECT_THAT(refusal("ARRAY['token'], '{\"1\": 2}', p_encoding => 'base32'"),
              HasSubstr("unknown encoding"));
  EXPECT_THAT(refusal("ARRAY['token'], '{\"1\": 2}', p_json_path => '{a}'"),
              HasSubstr("not jsonb"));
  EXPECT_THAT(refusal("ARRAY['doc'], '{\"1\": 2}', p_json_path => '{}'"),
              HasSubstr("list of keys"));
  EXPECT_THAT(refusal("ARRAY['doc'], '{\"1\": 2}', p_json_path => '{a}', p_encoding => 'bytea'"),
              HasSubstr("text encoding"));
  EXPECT_THAT(refusal("ARRAY['token'], '{\"1\": 2}', p_codecs => '{fernet}', p_encoding => 'hex'"),
              HasSubstr("base64url"));
  EXPECT_THAT(
      refusal("ARRAY['token'], '{\"1\": 2}', p_codecs => '{fernet}', p_ad_template => '{pk}'"),
      HasSubstr("associated data"));
}

// The documents' other fields belong to the application, which keeps writing them while the
// rotation runs: every one of its increments must survive, and every token must move.
TEST_F(FormatsTest, JsonPathRotatesOnlyItsFieldWhileTheApplicationWritesTheOthers) {
  constexpr int kRows = 3000;
  {
    std::vector<std::string> ids, docs;
    for (int id = 1; id <= kRows; ++id) {
      nlohmann::json doc = {
          {"payment",
           {{"token", EncodeAs(TextEncoding::kBase64, TinkEncrypt(1, PlaintextFor(id)))},
            {"brand", "visa"}}},
          {"counter", 0}};
      ids.push_back(std::to_string(id));
      docs.push_back(doc.dump());
    }
    // Documents the path cannot be read in: quarantined with their reason.
    const std::vector<std::string> bad = {R"({"payment": {}})", R"({"payment": {"token": 42}})",
                                          R"([1, 2])", R"("a string")",
                                          R"({"payment": {"token": "%%%%"}})"};
    for (size_t i = 0; i < bad.size(); ++i) {
      ids.push_back(std::to_string(900001 + i));
      docs.push_back(bad[i]);
    }
    pqxx::work txn(conn());
    txn.exec0("CREATE TABLE public.accounts (id bigint PRIMARY KEY, doc jsonb)");
    txn.exec_params("INSERT INTO public.accounts SELECT * FROM unnest($1::bigint[], $2::jsonb[])",
                    db::TextArrayLiteral(ids), db::TextArrayLiteral(docs));
    txn.exec0("INSERT INTO public.accounts VALUES (999999, NULL)");  // nothing to do
    txn.commit();
  }
  // Through the CLI: --json-path and --encoding as an operator types them.
  ProcessResult created =
      Rekey({"job", "create", "--table", "public.accounts", "--column", "doc", "--map", "1:2",
             "--json-path", "{payment,token}", "--encoding", "base64", "--stages", "100",
             "--batch-size", "50", "--error-threshold", "0.05"});
  ASSERT_EQ(created.exit_code, 0) << created.err;
  const int64_t job = Count("SELECT max(job_id) FROM rekey.jobs");

  EXPECT_EQ(Census(1, "accounts"), "doc:in_use:" + std::to_string(kRows) + ":{tink-json}")
      << "the retire proof must see key 1 inside the documents";

  // The application: increments the counter of random documents, one autocommit UPDATE each,
  // reading the document as it is now (jsonb_set on the current row), until the rotation ends.
  std::atomic<bool> stop{false};
  std::map<int, int> increments;
  std::thread writer([&] {
    pqxx::connection app(conninfo());
    std::mt19937 rng(7);
    std::uniform_int_distribution<int> pick(1, kRows);
    while (!stop.load()) {
      const int id = pick(rng);
      pqxx::nontransaction txn(app);
      txn.exec_params0(
          "UPDATE public.accounts SET doc = jsonb_set(doc, '{counter}', "
          "to_jsonb((doc->>'counter')::int + 1)) WHERE id = $1",
          id);
      ++increments[id];
    }
  });
  Work(job, 3);
  stop = true;
  writer.join();

  int total = 0;
  pqxx::read_transaction txn(conn());
  for (const auto& row : txn.exec("SELECT id, doc::text AS doc FROM public.accounts WHERE id <= " +
                                  std::to_string(kRows) + " ORDER BY id")) {
    const int id = row["id"].as<int>();
    const nlohmann::json doc = nlohmann::json::parse(row["doc"].as<std::string>());
    ASSERT_EQ(doc["counter"].get<int>(), increments[id])
        << "an application write was lost, row " << id;
    total += increments[id];
    ASSERT_EQ(doc["payment"]["brand"], "visa") << id;
    ASSERT_EQ(doc.size(), 2u) << id;
    const auto [key, plaintext] =
        OpenText(TextEncoding::kBase64, doc["payment"]["token"].get<std::string>());
    ASSERT_EQ(key, 2u) << id;
    ASSERT_EQ(plaintext, PlaintextFor(id)) << id;
  }
  txn.commit();
  EXPECT_GT(total, 100) << "the application must have written during the rotation";
  EXPECT_EQ(Quarantined(job),
            "900001:json_path_missing,900002:json_not_string,900003:json_path_missing,"
            "900004:json_path_missing,900005:bad_encoding");
  EXPECT_EQ(Scalar("SELECT doc::text FROM public.accounts WHERE id = 900002"),
            R"({"payment": {"token": 42}})");
  EXPECT_EQ(ValuesUnder(1, "public.accounts.doc"), 0);
  EXPECT_EQ(Census(1, "accounts"), "NULL");
  EXPECT_EQ(Census(2, "accounts"), "doc:in_use:" + std::to_string(kRows) + ":{tink-json}");
  EXPECT_EQ(ValuesUnder(2, "public.accounts.doc"), kRows);
  ProcessResult verify = Rekey({"job", "verify", std::to_string(job)});
  EXPECT_THAT(verify.out, HasSubstr(std::to_string(kRows) + " under target keys, 0 under source "
                                                            "keys, 5 failed"))
      << verify.err;
}

TEST_F(FormatsTest, RollbackReturnsTextValuesToTheOldKeyInTheSameForm) {
  SeedText(TextEncoding::kBase64Url, 3000, true, {});
  const int64_t job = CreateJob(
      "'public.cards', ARRAY['token'], '{\"1\": 2}', p_stages => '{50,100}', "
      "p_batch_size => 100, p_encoding => 'base64url'");
  const std::string j = std::to_string(job);
  Work(job);
  ASSERT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs WHERE job_id = " + j),
            "1:awaiting_approval");
  int moved = 0;
  for (const auto& [id, text] : Tokens())
    moved += OpenText(TextEncoding::kBase64Url, text).first == 2;
  EXPECT_NEAR(moved, 1500, 200) << "the first stage moved about half";

  ProcessResult r = Rekey({"job", "rollback", j, "--reason", "the app cannot read key 2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Work(job);
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "rolled_back");
  for (const auto& [id, text] : Tokens()) {
    const auto [key, plaintext] = OpenText(TextEncoding::kBase64Url, text);
    ASSERT_EQ(key, 1u) << id;
    ASSERT_EQ(plaintext, PlaintextFor(id)) << id;
    ASSERT_EQ(text.size() % 4, 0u) << "padded, as written";
  }
}

// Fernet both ways with the application's own library: tokens Python made under key 1 are
// rotated by a staged rekey job, then read by MultiFernet configured with the new key first --
// opened by the new key alone, plaintext and timestamp kept (as MultiFernet.rotate keeps it).
// Tampered and truncated tokens are quarantined, the rest goes on.
TEST_F(FormatsTest, FernetTokensOfPythonRotatedAndReadBackByMultiFernet) {
  const std::string app = std::string(REKEY_SOURCE_DIR) + "/tests/fernet/fernet_app.py";
  const std::string key1 = crypto::FernetKeyText(TestDataKey(1));
  // The new key is the application's: made by Fernet.generate_key(), imported in its form.
  ProcessResult generated = RunProcess({"/usr/bin/python3", app, "generate"});
  if (generated.exit_code == 77) GTEST_SKIP() << generated.err;
  ASSERT_EQ(generated.exit_code, 0) << generated.err;
  const std::string key3 = nlohmann::json::parse(generated.out).get<std::string>();
  const std::string dir = MakeTempDir("rekey-fernet");
  {
    std::ofstream(dir + "/bad.key") << key1 << "," << key3 << "\n";
    ProcessResult refused = Rekey(
        {"keys", "import", "--key-id", "3", "--format", "fernet", "--file", dir + "/bad.key"});
    EXPECT_NE(refused.exit_code, 0);
    EXPECT_THAT(refused.err, HasSubstr("one key per --key-id"));
    EXPECT_EQ(refused.err.find(key3), std::string::npos) << "never echoes key material";
    EXPECT_EQ(Count("SELECT count(*) FROM rekey.keys WHERE key_id = 3"), 0) << "nothing written";
    std::ofstream(dir + "/new.key") << key3 << "\n";
    ProcessResult imported = Rekey(
        {"keys", "import", "--key-id", "3", "--format", "fernet", "--file", dir + "/new.key"});
    ASSERT_EQ(imported.exit_code, 0) << imported.err;
  }
  constexpr int kRows = 2000;
  nlohmann::json request = {{"key", key1}, {"items", nlohmann::json::array()}};
  for (int id = 1; id <= kRows; ++id) {
    request["items"].push_back(
        {{"id", id}, {"plaintext", PlaintextFor(id)}, {"ts", 1600000000 + id}});
  }
  ProcessResult made = RunProcess({"/usr/bin/python3", app, "encrypt"}, {}, request.dump());
  if (made.exit_code == 77) GTEST_SKIP() << made.err;
  ASSERT_EQ(made.exit_code, 0) << made.err;
  const nlohmann::json tokens = nlohmann::json::parse(made.out);

  std::vector<std::string> ids, values;
  for (const auto& [id, token] : tokens.items()) {
    ids.push_back(id);
    values.push_back(token.get<std::string>());
  }
  const std::string good = tokens["1"].get<std::string>();
  std::string tampered = good;
  tampered[40] = tampered[40] == 'A' ? 'B' : 'A';
  const std::vector<std::string> bad = {tampered, good.substr(0, 60), "gAAAA%%%",
                                        crypto::FernetKeyText(TestDataKey(1))};
  for (size_t i = 0; i < bad.size(); ++i) {
    ids.push_back(std::to_string(900001 + i));
    values.push_back(bad[i]);
  }
  CreateCards(ids, values);
  const int64_t job = CreateJob(
      "'public.cards', ARRAY['token'], '{\"1\": 3}', p_codecs => '{fernet}', "
      "p_stages => '{10,100}', p_batch_size => 100, p_error_threshold => 0.05");
  const std::string j = std::to_string(job);
  Work(job);
  ASSERT_EQ(Rekey({"job", "advance", j}).exit_code, 0);
  Work(job);
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "completed");
  EXPECT_EQ(Quarantined(job),
            "900001:auth_failed,900002:truncated,900003:bad_encoding,900004:bad_prefix");

  nlohmann::json read = {{"keys", {key3, key1}}, {"tokens", nlohmann::json::object()}};
  for (const auto& [id, token] : Tokens()) {
    if (id <= kRows) read["tokens"][std::to_string(id)] = token;
  }
  ProcessResult back = RunProcess({"/usr/bin/python3", app, "read"}, {}, read.dump());
  ASSERT_EQ(back.exit_code, 0) << back.err;
  const nlohmann::json seen = nlohmann::json::parse(back.out);
  ASSERT_EQ(seen.size(), size_t(kRows));
  for (int id = 1; id <= kRows; ++id) {
    const nlohmann::json& v = seen[std::to_string(id)];
    ASSERT_EQ(v["plaintext"], PlaintextFor(id)) << id;
    ASSERT_EQ(v["ts"].get<int64_t>(), 1600000000 + id) << "the token's timestamp is kept, " << id;
    ASSERT_TRUE(v["first_key_only"].get<bool>()) << "under the new key, " << id;
  }
  // The keyring handed back in the application's form: the MultiFernet list, the new primary
  // first, which Python then reads every token with. Only with --cleartext.
  ProcessResult refused =
      Rekey({"keys", "export", "--format", "fernet", "--output", dir + "/refused.keys"});
  EXPECT_EQ(refused.exit_code, 2) << refused.err;
  EXPECT_THAT(refused.err, HasSubstr("pass --cleartext"));
  EXPECT_NE(RunProcess({"test", "-e", dir + "/refused.keys"}).exit_code, 0) << "nothing written";
  ProcessResult exported =
      Rekey({"keys", "export", "--format", "fernet", "--cleartext", "--output", dir + "/app.keys"});
  ASSERT_EQ(exported.exit_code, 0) << exported.err;
  std::string list;
  std::getline(std::ifstream(dir + "/app.keys"), list);
  ASSERT_EQ(list.substr(0, key3.size()), key3) << "the primary (key 3) comes first";
  nlohmann::json with_export = read;
  with_export["keys"] = nlohmann::json::array();
  for (size_t at = 0; at <= list.size();) {
    size_t comma = std::min(list.find(',', at), list.size());
    with_export["keys"].push_back(list.substr(at, comma - at));
    at = comma + 1;
  }
  EXPECT_THAT(with_export["keys"].dump(), HasSubstr(key1)) << "the old key is still decryptable";
  ProcessResult again = RunProcess({"/usr/bin/python3", app, "read"}, {}, with_export.dump());
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(nlohmann::json::parse(again.out), seen);

  ProcessResult verify = Rekey({"job", "verify", j});
  EXPECT_THAT(verify.out, HasSubstr(std::to_string(kRows) +
                                    " under target keys, 0 under source keys, 4 failed"))
      << verify.err;
  EXPECT_THAT(Census(1, "cards"), HasSubstr("token:unknown:-:"))
      << "the census cannot count Fernet tokens by key: retiring key 1 must not pass";
  EXPECT_THAT(Scalar("SELECT string_agg(coalesce(unknown, ''), ',') FROM rekey.key_usage(1) "
                     "WHERE target LIKE '%cards%'"),
              HasSubstr("Fernet tokens, which name no key"))
      << "retire cannot count Fernet tokens by key: it must not pass";
}

// The application keeps writing new tokens under the old key while the rotation runs, as it
// would until its configuration has the new key: the last rollout stage and the sweep must take
// those too, so that Python with the new key alone reads every row, the application's own
// values and token timestamps included.
TEST_F(FormatsTest, FernetTokensRotatedInStagesWhileTheAppWritesUnderTheOldKeyReadWithTheNewAlone) {
  const nlohmann::json generated = FernetApp("generate");
  if (generated.is_null()) GTEST_SKIP() << "python3-cryptography is not installed";
  const std::string key1 = crypto::FernetKeyText(TestDataKey(1));
  const std::string key3 = generated.get<std::string>();
  {
    const std::string dir = MakeTempDir("rekey-fernet");
    std::ofstream(dir + "/new.key") << key3 << "\n";
    ProcessResult imported = Rekey(
        {"keys", "import", "--key-id", "3", "--format", "fernet", "--file", dir + "/new.key"});
    ASSERT_EQ(imported.exit_code, 0) << imported.err;
  }
  constexpr int kRows = 2000;
  constexpr int64_t kWrittenAt = 1700000000;
  SeedFernet(key1, kRows);
  // The application's writes, to every fourth row (the others keep the tokens Python made at
  // seeding, and their times): tokens under key 1 made beforehand by Python (a Python process per
  // write would be the bottleneck, not the database), each with its own time.
  nlohmann::json request = {{"key", key1}, {"items", nlohmann::json::array()}};
  for (int id = 4; id <= kRows; id += 4) {
    request["items"].push_back(
        {{"id", id}, {"plaintext", "new " + PlaintextFor(id)}, {"ts", kWrittenAt + id}});
  }
  const nlohmann::json rewritten = FernetApp("encrypt", request);
  ASSERT_EQ(rewritten.size(), size_t(kRows / 4));

  const int64_t job = CreateJob(
      "'public.cards', ARRAY['token'], '{\"1\": 3}', p_codecs => '{fernet}', "
      "p_stages => '{10,100}', p_batch_size => 100, p_error_threshold => 0.05");
  const std::string j = std::to_string(job);
  std::atomic<bool> stop{false};
  std::map<int, bool> written;
  int writes = 0;
  std::thread app([&] {
    pqxx::connection c(conninfo());
    std::mt19937 rng(18);
    std::uniform_int_distribution<int> pick(1, kRows / 4);
    while (!stop.load()) {
      const int id = 4 * pick(rng);
      // The stage first, the job's row share-locked until the write commits, so the sweep never
      // opens between them (staged_rollout_pg_test's sweep test says why).
      pqxx::work txn(c);
      if (txn.exec1(CurrentStageKindSharingJob(j))[0].as<std::string>() == "sweep") break;
      txn.exec_params0("UPDATE public.cards SET token = $2 WHERE id = $1", id,
                       rewritten[std::to_string(id)].get<std::string>());
      txn.commit();
      written[id] = true;
      ++writes;
    }
  });
  Work(job);
  ASSERT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs WHERE job_id = " + j),
            "1:awaiting_approval");
  ASSERT_EQ(Rekey({"job", "advance", j}).exit_code, 0);
  Work(job);
  stop = true;
  app.join();
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "completed");
  EXPECT_EQ(Quarantined(job), "NULL");
  EXPECT_GT(writes, 100) << "the application must have written during the rotation";
  EXPECT_GT(Count("SELECT coalesce(sum(rows_done), 0) FROM rekey.batches b JOIN rekey.job_stages s "
                  "USING (job_id, stage_no) WHERE job_id = " +
                  j + " AND s.kind = 'sweep'"),
            0)
      << "the sweep re-encrypted what the application wrote under the old key";

  const nlohmann::json seen = ReadFernet({key3});
  ASSERT_EQ(seen.size(), size_t(kRows));
  for (int id = 1; id <= kRows; ++id) {
    const nlohmann::json& v = seen[std::to_string(id)];
    ASSERT_TRUE(v["first_key_only"].get<bool>()) << "under the new key, " << id;
    ASSERT_EQ(v["plaintext"], (written[id] ? "new " : "") + PlaintextFor(id))
        << "an application write was lost or a value changed, row " << id;
    ASSERT_EQ(v["ts"].get<int64_t>(), (written[id] ? kWrittenAt : kSeededAt) + id)
        << "the token's timestamp is kept, " << id;
  }
  ProcessResult verify = Rekey({"job", "verify", j});
  EXPECT_THAT(verify.out, HasSubstr(std::to_string(kRows) +
                                    " under target keys, 0 under source keys, 0 failed"))
      << verify.err;
}

// Rekey's tokens read by Python mid-rollout, then a rollback: after it, Python configured with
// the old key alone reads every row, plaintext and token timestamp as the application wrote them.
TEST_F(FormatsTest, FernetRollbackReturnsEveryTokenToTheOldKeyPythonReadsAlone) {
  const std::string key1 = crypto::FernetKeyText(TestDataKey(1));
  const std::string key2 = crypto::FernetKeyText(TestDataKey(2));
  if (FernetApp("generate").is_null()) GTEST_SKIP() << "python3-cryptography is not installed";
  constexpr int kRows = 1000;
  SeedFernet(key1, kRows);
  const int64_t job = CreateJob(
      "'public.cards', ARRAY['token'], '{\"1\": 2}', p_codecs => '{fernet}', "
      "p_stages => '{50,100}', p_batch_size => 50");
  const std::string j = std::to_string(job);
  Work(job);
  ASSERT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs WHERE job_id = " + j),
            "1:awaiting_approval");
  // Mid-rollout the application holds both keys, the new one first: every token reads.
  const nlohmann::json both = ReadFernet({key2, key1});
  ASSERT_EQ(both.size(), size_t(kRows));
  int moved = 0;
  for (int id = 1; id <= kRows; ++id) {
    const nlohmann::json& v = both[std::to_string(id)];
    ASSERT_EQ(v["plaintext"], PlaintextFor(id)) << id;
    moved += v["first_key_only"].get<bool>();
  }
  EXPECT_NEAR(moved, kRows / 2, kRows / 6) << "the first stage moved about half";

  ProcessResult r = Rekey({"job", "rollback", j, "--reason", "the app cannot read key 2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Work(job);
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "rolled_back");
  EXPECT_EQ(Quarantined(job), "NULL");
  const nlohmann::json old_only = ReadFernet({key1});
  ASSERT_EQ(old_only.size(), size_t(kRows));
  for (int id = 1; id <= kRows; ++id) {
    const nlohmann::json& v = old_only[std::to_string(id)];
    ASSERT_TRUE(v["first_key_only"].get<bool>()) << "under the old key, " << id;
    ASSERT_EQ(v["plaintext"], PlaintextFor(id)) << id;
    ASSERT_EQ(v["ts"].get<int64_t>(), kSeededAt + id) << "the token's timestamp is kept, " << id;
  }
}

// The worker's metrics count a Fernet rotation's values as the database does: the tokens
// re-encrypted and the values quarantined (those not base64url text, and a forged token).
TEST_F(FormatsTest, MetricsOfAFernetRotationCountItsValuesAsTheDatabaseDoes) {
  constexpr int kRows = 600;
  const crypto::FernetKey key(TestDataKey(1));
  std::vector<std::string> ids, tokens;
  for (int id = 1; id <= kRows; ++id) {
    const std::string plaintext = PlaintextFor(id);
    Bytes token;
    key.Seal(uint64_t(kSeededAt + id), reinterpret_cast<const uint8_t*>(plaintext.data()),
             plaintext.size(), &token);
    if (id == 77) token[40] ^= 1;  // forged: auth_failed
    std::string text;
    crypto::EncodeText(TextEncoding::kBase64Url, token.data(), token.size(),
                       crypto::TextStyle{true}, &text);
    ids.push_back(std::to_string(id));
    tokens.push_back(id == 5 || id == 450 ? "not a token" : text);  // bad_encoding
  }
  CreateCards(ids, tokens);
  const int64_t job = CreateJob(
      "'public.cards', ARRAY['token'], '{\"1\": 2}', p_codecs => '{fernet}', "
      "p_stages => '{100}', p_batch_size => 100, p_error_threshold => 0.5");
  const std::string j = std::to_string(job);
  ChildProcess worker({REKEY_BINARY, "--db", conninfo(), "work", "--job", j, "--listen",
                       "127.0.0.1:0", "--linger", "120"},
                      WorkerEnv());
  const auto lingering = WaitForLog(worker, "lingering so the final metrics", 120);
  ASSERT_TRUE(lingering) << ReadFile(worker.stderr_path());
  const int port = ListenPort(ReadFile(worker.stderr_path()));
  const HttpResult scrape = HttpGet(port, "/metrics");
  ASSERT_EQ(scrape.status, 200) << scrape.body;
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.Wait(60).exit_code, 0);

  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "completed");
  EXPECT_EQ(Quarantined(job), "450:bad_encoding,5:bad_encoding,77:auth_failed");
  const int64_t done =
      Count("SELECT coalesce(sum(rows_done), 0) FROM rekey.batches WHERE job_id = " + j);
  EXPECT_EQ(done, kRows - 3);
  EXPECT_EQ(Sample(scrape.body, "rekey_rows_reencrypted_total"), double(done)) << scrape.body;
  EXPECT_EQ(Sample(scrape.body, "rekey_rows_quarantined_total"), 3) << scrape.body;
  EXPECT_EQ(Sample(scrape.body, "rekey_decrypt_errors_total{phase=\"rotation\"}"), 3);
  EXPECT_EQ(Sample(scrape.body, "rekey_gates_total{result=\"passed\"}"), 1)
      << "the stage's gate verified the tokens through the codec";
}

}  // namespace
}  // namespace rekey::testing
