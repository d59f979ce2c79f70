// Tink keysets both ways, proven with Tink itself: Google's JavaScript Tink (npm tink-crypto,
// pinned in tests/tink/package-lock.json, driven through tests/tink/tink_app.mjs) makes a keyset
// and encrypts values; rekey imports the keyset, rotates the values to a new key in a staged job,
// and exports its keys; Tink reads every value back from the exported keyset, cleartext and
// encrypted under rekey's master key, and writes new values that rekey verifies. Keysets encrypted
// through AWS KMS and Vault Transit (their test servers, tests/kms/) are opened without rekey
// (boto3; Vault's HTTP API) and parsed by Tink. Skipped (never passed) when node, npm or the npm
// registry is unavailable (tests/tink/run.sh exits 77).
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "aws_kms_support.h"
#include "common/bytes.h"
#include "common/error.h"
#include "crypto/aes_gcm.h"
#include "harness/pg_server.h"
#include "harness/process.h"

namespace rekey {
namespace {

using testing::ProcessResult;
using testing::RunProcess;
using testing::RunRekey;

const std::string kTinkDir = REKEY_SOURCE_DIR "/tests/tink";
// rekey binds this associated data into every value (the job's --ad-template); the Tink
// application passes exactly the same bytes, row by row.
constexpr char kAdTemplate[] = "{schema}.{table}.{column}:{pk}";

std::string Ad(int pk) {
  return "public.cards.token:" + std::to_string(pk);
}

std::string Plaintext(int pk) {
  return "card " + std::to_string(pk) + (pk % 3 == 0 ? " \xc3\xa9t\xc3\xa9" : "") +
         std::string(pk % 7, 'x');
}

class TinkKeysetTest : public testing::PgTest {
 protected:
  void SetUp() override {
    ProcessResult install = RunProcess({kTinkDir + "/run.sh"}, {}, "", 600);
    if (install.exit_code == 77) GTEST_SKIP() << install.err;
    ASSERT_EQ(install.exit_code, 0) << install.err;
    testing::PgTest::SetUp();
    Secret master(32);
    crypto::RandomBytes(master.mutable_data(), master.size());
    master_b64_ = Base64Encode(master.data(), master.size());
    master_hex_ = HexEncode(master.data(), master.size());
    dir_ = ::testing::TempDir() + "tink_keyset_" + dbname();
    ASSERT_EQ(RunProcess({"mkdir", "-p", dir_}).exit_code, 0);
  }

  ProcessResult Rekey(std::vector<std::string> args, const std::string& master = "",
                      const testing::EnvOverrides& kms_env = {}) {
    args.insert(args.begin(), {"--db", conninfo()});
    return RunRekey(
        args, testing::With(kms_env, {{"REKEY_MASTER_KEY", master.empty() ? master_b64_ : master},
                                      {"REKEY_MASTER_KEY_FILE", std::nullopt},
                                      {"DATABASE_URL", std::nullopt}}));
  }

  // tink_app.mjs COMMAND KEYSET [FORM [MASTER]] with `input` on stdin; its stdout.
  std::string Tink(const std::vector<std::string>& args, const nlohmann::json& input = nullptr) {
    std::vector<std::string> argv = {kTinkDir + "/run.sh", "tink_app.mjs"};
    argv.insert(argv.end(), args.begin(), args.end());
    ProcessResult r = RunProcess(argv, {}, input.is_null() ? "" : input.dump(), 300);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.out;
  }

  int64_t Keys() { return Count("SELECT count(*) FROM rekey.keys"); }
  std::string Status(uint32_t id) {
    return Scalar("SELECT status FROM rekey.keys WHERE key_id = " + std::to_string(id));
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // The table's values in pk order, as Tink's decrypt input.
  nlohmann::json StoredValues() {
    nlohmann::json rows = nlohmann::json::array();
    pqxx::read_transaction txn(conn());
    for (const pqxx::row& row :
         txn.exec("SELECT pk, encode(token, 'hex') AS token FROM public.cards ORDER BY pk")) {
      rows.push_back(
          {{"ciphertext", row["token"].as<std::string>()}, {"ad", Ad(row["pk"].as<int>())}});
    }
    return rows;
  }

  // Exports keys 7 and 8 (8 primary) as a keyset encrypted through `kms` (the KMS test server
  // `env` points at) under `key_ref` (empty: the provider's default key, `opened_with` names it
  // for the independent reader); opens it without rekey (kms_decrypt_keyset.py `reader`) and has
  // Tink parse it; refuses to import it under `wrong_key_ref` writing nothing; imports it.
  void ExportedThroughKmsOpensWithoutRekey(const std::string& kms, const testing::EnvOverrides& env,
                                           const std::string& key_ref,
                                           const std::string& opened_with,
                                           const std::string& reader, const std::string& magic,
                                           const std::string& wrong_key_ref) {
    ASSERT_EQ(Rekey({"migrate"}).exit_code, 0);
    ASSERT_EQ(Rekey({"keys", "create", "--key-id", "7"}).exit_code, 0);
    ASSERT_EQ(Rekey({"keys", "create", "--key-id", "8"}).exit_code, 0);
    ASSERT_EQ(Rekey({"keys", "promote", "8"}).exit_code, 0);
    ProcessResult r = Rekey({"keys", "export", "--format", "tink-keyset", "--binary", "--cleartext",
                             "--output", Path("clear.keyset")});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string clear = ReadFile(Path("clear.keyset"));

    std::vector<std::string> with_key;
    if (!key_ref.empty()) with_key = {"--kms-key", key_ref};
    std::vector<std::string> args = {"keys",  "export", "--format", "tink-keyset",
                                     "--kms", kms,      "--output", Path("sealed.json")};
    args.insert(args.end(), with_key.begin(), with_key.end());
    r = Rekey(args, "", env);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err.find("WARNING"), std::string::npos) << r.err;
    const nlohmann::json sealed = nlohmann::json::parse(ReadFile(Path("sealed.json")));
    EXPECT_EQ(sealed["keysetInfo"]["primaryKeyId"], 8);
    std::optional<Bytes> blob = Base64Decode(sealed["encryptedKeyset"].get<std::string>());
    ASSERT_TRUE(blob.has_value());
    // The KMS's own ciphertext, not rekey's local AES-GCM.
    EXPECT_EQ(std::string(blob->begin(), blob->end()).rfind(magic, 0), 0u);

    // Opened by the KMS's own client, it is the very keyset of the cleartext export, and Tink
    // reads it.
    ProcessResult opened =
        RunProcess({"/usr/bin/python3", kTinkDir + "/kms_decrypt_keyset.py", reader,
                    Path("sealed.json"), Path("opened.keyset"), opened_with},
                   env, "", 120);
    ASSERT_EQ(opened.exit_code, 0) << opened.err;
    EXPECT_EQ(ReadFile(Path("opened.keyset")), clear);
    nlohmann::json ids = nlohmann::json::parse(
        Tink({"decrypt", Path("opened.keyset"), "cleartext-binary"}, nlohmann::json::array()));
    EXPECT_EQ(ids["primary"], 8);
    std::vector<uint32_t> key_ids = ids["key_ids"];
    std::sort(key_ids.begin(), key_ids.end());
    EXPECT_EQ(key_ids, (std::vector<uint32_t>{7, 8}));

    // Into an empty keyring (a new installation: key rows are audit evidence and cannot be deleted)
    // under another KMS key it is refused and nothing is written; under its own key both keys come
    // back, the keyset's primary the scope's.
    Exec("DROP SCHEMA rekey CASCADE");
    ASSERT_EQ(Rekey({"migrate"}).exit_code, 0);
    ASSERT_EQ(Keys(), 0);
    r = Rekey({"keys", "import", "--format", "tink-keyset", "--kms", kms, "--kms-key",
               wrong_key_ref, "--file", Path("sealed.json")},
              "", env);
    EXPECT_EQ(r.exit_code, kExitKey) << r.err;
    EXPECT_NE(r.err.find("does not open under this key-encryption key"), std::string::npos)
        << r.err;
    EXPECT_EQ(Keys(), 0);
    args = {"keys",  "import", "--format", "tink-keyset",
            "--kms", kms,      "--file",   Path("sealed.json")};
    args.insert(args.end(), with_key.begin(), with_key.end());
    r = Rekey(args, "", env);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("imported 2 key(s)"), std::string::npos) << r.out;
    EXPECT_EQ(Status(8), "primary");
    EXPECT_EQ(Status(7), "decrypt_only");
    EXPECT_EQ(Scalar("SELECT kms_provider FROM rekey.keys WHERE key_id = 8"), kms);
    r = Rekey({"keys", "export", "--format", "tink-keyset", "--binary", "--cleartext", "--output",
               Path("again.keyset")},
              "", env);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(ReadFile(Path("again.keyset")), clear);
  }

  static std::string ReadFile(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  std::string master_b64_, master_hex_, dir_;
};

TEST_F(TinkKeysetTest, AKeysetEncryptedThroughAwsKmsOpensWithBoto3AndTink) {
  testing::AwsKmsTestServer aws({"--key", "alias/rekey", "--key", "alias/other"});
  // boto3 reads the same variables the rekey binary does.
  testing::EnvOverrides env = aws.Env();
  env.erase("REKEY_MASTER_KEY_FILE");
  env.erase("DATABASE_URL");
  ExportedThroughKmsOpensWithoutRekey("aws-kms", env, "", "alias/rekey", "aws", "RKMS1",
                                      "alias/other");
}

TEST_F(TinkKeysetTest, AKeysetEncryptedThroughVaultTransitOpensWithVaultsApiAndTink) {
  // A fresh directory: a port file left by an earlier run would name a dead server.
  const std::string vault_dir = testing::MakeTempDir("rekey-tink-vault-");
  // "rekey" wraps data keys (derived, bound to key ids); "keysets" encrypts keysets (not derived:
  // Tink's Vault Aead sends no context for empty associated data).
  testing::ChildProcess vault({"/usr/bin/python3", REKEY_SOURCE_DIR "/tests/kms/vault_server.py",
                               "--port-file", vault_dir + "/port", "--root-token", "s.root",
                               "--key", "rekey", "--key", "keysets:plain", "--key", "other:plain"});
  const int port = testing::WaitForPortFile(vault_dir + "/port", 30000);
  ASSERT_GT(port, 0) << "vault_server.py did not start";
  ASSERT_TRUE(vault.Running()) << ReadFile(vault.stderr_path());
  const testing::EnvOverrides env = {{"VAULT_ADDR", "http://127.0.0.1:" + std::to_string(port)},
                                     {"VAULT_TOKEN", "s.root"},
                                     {"VAULT_TOKEN_FILE", std::nullopt},
                                     {"REKEY_VAULT_K8S_ROLE", std::nullopt},
                                     {"VAULT_NAMESPACE", std::nullopt},
                                     {"VAULT_CACERT", std::nullopt},
                                     {"REKEY_VAULT_TRANSIT_MOUNT", std::nullopt},
                                     {"REKEY_VAULT_TRANSIT_KEY", "rekey"}};
  ExportedThroughKmsOpensWithoutRekey("vault-transit", env, "transit/keys/keysets",
                                      "transit/keys/keysets", "vault",
                                      "vault:v1:", "transit/keys/other");
  // The data-key wrapping key is derived: Vault refuses a keyset under it (Tink sends no
  // context), and no file is written.
  ProcessResult r = Rekey({"keys", "export", "--format", "tink-keyset", "--kms", "vault-transit",
                           "--output", Path("derived.json")},
                          "", env);
  EXPECT_EQ(r.exit_code, kExitKey) << r.out;
  EXPECT_NE(r.err.find("is derived, and Tink's Vault Aead sends no context"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("pass --kms-key transit/keys/keysets"), std::string::npos) << r.err;
  EXPECT_EQ(RunProcess({"test", "-e", Path("derived.json")}).exit_code, 1);
  RunProcess({"rm", "-rf", vault_dir});
}

TEST_F(TinkKeysetTest, TinkValuesRotatedByRekeyAreReadBackByTinkFromTheExportedKeyset) {
  constexpr int kRows = 60;
  const std::string keyset = Path("app.keyset");
  Tink({"keyset", keyset});

  // The application encrypts under its keyset's primary; a few rows under its older key, as a
  // keyset rotated in Tink leaves them (written before the rotation: here by a keyset of that key
  // alone, which the same Tink Aead writes).
  nlohmann::json items = nlohmann::json::array();
  for (int pk = 1; pk <= kRows; pk++)
    items.push_back({{"plaintext", Plaintext(pk)}, {"ad", Ad(pk)}});
  nlohmann::json ciphertexts =
      nlohmann::json::parse(Tink({"encrypt", keyset, "cleartext-binary"}, items));
  ASSERT_EQ(ciphertexts.size(), static_cast<size_t>(kRows));
  Exec("CREATE TABLE public.cards (pk int PRIMARY KEY, token bytea)");
  {
    pqxx::work txn(conn());
    for (int pk = 1; pk <= kRows; pk++) {
      txn.exec_params0("INSERT INTO public.cards VALUES ($1, decode($2, 'hex'))", pk,
                       ciphertexts[pk - 1].get<std::string>());
    }
    txn.commit();
  }
  nlohmann::json before =
      nlohmann::json::parse(Tink({"decrypt", keyset, "cleartext-binary"}, StoredValues()));
  const uint32_t tink_primary = before["primary"];
  const uint32_t tink_older = before["key_ids"][0];
  ASSERT_NE(tink_primary, tink_older);

  // Import: every key with its Tink key id; the keyset's primary becomes the (empty) scope's
  // primary, the other key decrypt_only.
  ASSERT_EQ(Rekey({"migrate"}).exit_code, 0);
  ProcessResult r = Rekey({"keys", "import", "--format", "tink-keyset", "--file", keyset});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("imported 2 key(s) from the tink-keyset into scope default"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(Status(tink_primary), "primary");
  EXPECT_EQ(Status(tink_older), "decrypt_only");
  EXPECT_EQ(Scalar("SELECT origin FROM rekey.keys WHERE key_id = " + std::to_string(tink_primary)),
            "imported");
  // Importing the same keyset again changes nothing.
  r = Rekey({"keys", "import", "--format", "tink-keyset", "--file", keyset});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("imported 0 key(s)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("already in the keyring, unchanged"), std::string::npos) << r.out;
  EXPECT_EQ(Keys(), 2);

  // A staged rotation of the Tink values to a new rekey key.
  r = Rekey({"keys", "create", "--key-id", "7"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string map = std::to_string(tink_older) + ":7," + std::to_string(tink_primary) + ":7";
  r = Rekey({"job", "create", "--table", "public.cards", "--column", "token", "--map", map,
             "--ad-template", kAdTemplate, "--stages", "10,100", "--observe", "0s", "--batch-size",
             "16"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Rekey({"work", "--job", "1", "--concurrency", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = 1"), "completed");
  EXPECT_EQ(Status(7), "primary");
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE substring(token from 1 for 5) = "
                  "'\\x0100000007'::bytea"),
            kRows);

  // Export, cleartext binary and encrypted binary: Tink reads every value rekey wrote.
  r = Rekey({"keys", "export", "--format", "tink-keyset", "--binary", "--cleartext", "--output",
             Path("clear.keyset")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("WARNING"), std::string::npos) << r.err;
  r = Rekey(
      {"keys", "export", "--format", "tink-keyset", "--binary", "--output", Path("sealed.keyset")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("WARNING"), std::string::npos) << r.err;
  const nlohmann::json rotated = StoredValues();
  for (const auto& [file, form] : {std::pair{Path("clear.keyset"), "cleartext-binary"},
                                   std::pair{Path("sealed.keyset"), "encrypted-binary"}}) {
    SCOPED_TRACE(form);
    nlohmann::json after =
        nlohmann::json::parse(Tink({"decrypt", file, form, master_hex_}, rotated));
    EXPECT_EQ(after["primary"], 7);
    std::vector<uint32_t> ids = after["key_ids"];
    std::sort(ids.begin(), ids.end());
    std::vector<uint32_t> want = {7, tink_older, tink_primary};
    std::sort(want.begin(), want.end());
    EXPECT_EQ(ids, want);
    for (int pk = 1; pk <= kRows; pk++) {
      EXPECT_EQ(after["plaintexts"][pk - 1], before["plaintexts"][pk - 1]) << pk;
      EXPECT_EQ(after["plaintexts"][pk - 1], Plaintext(pk)) << pk;
    }
  }
  // The encrypted keyset is useless without rekey's master key.
  std::string other(64, 'a');
  ProcessResult wrong = RunProcess({kTinkDir + "/run.sh", "tink_app.mjs", "decrypt",
                                    Path("sealed.keyset"), "encrypted-binary", other},
                                   {}, rotated.dump(), 300);
  EXPECT_NE(wrong.exit_code, 0);

  // The other way: the application writes new values from the exported keyset (under key 7),
  // and rekey's verifier decrypts every value of the table with its own keyring.
  nlohmann::json fresh = nlohmann::json::array();
  for (int pk = kRows + 1; pk <= kRows + 5; pk++) {
    fresh.push_back({{"plaintext", Plaintext(pk)}, {"ad", Ad(pk)}});
  }
  nlohmann::json fresh_ct = nlohmann::json::parse(
      Tink({"encrypt", Path("sealed.keyset"), "encrypted-binary", master_hex_}, fresh));
  {
    pqxx::work txn(conn());
    for (int i = 0; i < 5; i++) {
      txn.exec_params0("INSERT INTO public.cards VALUES ($1, decode($2, 'hex'))", kRows + 1 + i,
                       fresh_ct[i].get<std::string>());
    }
    txn.commit();
  }
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE substring(token from 1 for 5) = "
                  "'\\x0100000007'::bytea"),
            kRows + 5);
  r = Rekey({"job", "verify", "1", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  nlohmann::json verified = nlohmann::json::parse(r.out);
  EXPECT_EQ(verified.dump().find("auth_failed"), std::string::npos) << verified.dump();
}

TEST_F(TinkKeysetTest, RefusalsWriteNothingAndSayWhatToDo) {
  ASSERT_EQ(Rekey({"migrate"}).exit_code, 0);
  nlohmann::json vectors;
  {
    std::ifstream in(kTinkDir + "/vectors.json");
    vectors = nlohmann::json::parse(in)["vectors"];
  }
  auto write_vector = [&](const std::string& name, const char* field = "keyset_hex") {
    for (const nlohmann::json& v : vectors) {
      if (v["name"] != name) continue;
      std::optional<Bytes> bytes = HexDecode(v[field].get<std::string>());
      std::ofstream(Path(name), std::ios::binary)
          .write(reinterpret_cast<const char*>(bytes->data()), bytes->size());
      return v;
    }
    ADD_FAILURE() << name;
    return nlohmann::json();
  };
  auto import = [&](const std::string& name, const std::string& master = "") {
    return Rekey({"keys", "import", "--format", "tink-keyset", "--file", Path(name)}, master);
  };

  for (const char* unsupported :
       {"aes128_gcm", "aes256_gcm_raw_prefix", "aes256_ctr_hmac", "aes256_gcm_disabled"}) {
    SCOPED_TRACE(unsupported);
    write_vector(unsupported);
    ProcessResult r = import(unsupported);
    EXPECT_EQ(r.exit_code, kExitKey) << r.err;
    EXPECT_NE(r.err.find("import again"), std::string::npos) << r.err;
    EXPECT_EQ(Keys(), 0);
  }

  // An encrypted keyset under another master key.
  const nlohmann::json sealed = write_vector("encrypted_two_keys", "encrypted_keyset_hex");
  ProcessResult r = import("encrypted_two_keys");
  EXPECT_EQ(r.exit_code, kExitKey) << r.err;
  EXPECT_NE(r.err.find("does not open under this key-encryption key"), std::string::npos) << r.err;
  EXPECT_EQ(Keys(), 0);
  // ... and with its own master key, both keys.
  std::optional<Bytes> master = HexDecode(sealed["master_key_hex"].get<std::string>());
  const std::string master_b64 = Base64Encode(*master);
  r = import("encrypted_two_keys", master_b64);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Keys(), 2);

  // A key id the keyring holds with other material: nothing of the file is written, not even its
  // other, new key.
  const nlohmann::json single = write_vector("aes256_gcm_single");
  const std::string taken = std::to_string(single["primary_key_id"].get<uint32_t>());
  std::ofstream(Path("other.key"), std::ios::binary) << std::string(32, '\x11');
  r = Rekey({"keys", "import", "--key-id", taken, "--file", Path("other.key")}, master_b64);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = import("aes256_gcm_single", master_b64);
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_NE(r.err.find("already exists in the keyring with different key material"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(Keys(), 3);

  // A scope that already has a primary keeps it unless --promote.
  const nlohmann::json two = write_vector("aes256_gcm_two_keys");
  const uint32_t two_primary = two["primary_key_id"];
  r = Rekey({"keys", "import", "--format", "tink-keyset", "--scope", "s2", "--file",
             Path("aes256_gcm_two_keys")},
            master_b64);
  EXPECT_EQ(r.exit_code, kExitState) << r.err;  // the ids are in scope default already
  EXPECT_NE(r.err.find("already exists in scope default"), std::string::npos) << r.err;

  // Flags that do not fit the format.
  r = Rekey({"keys", "import", "--format", "tink-keyset", "--key-id", "3", "--file",
             Path("aes256_gcm_two_keys")},
            master_b64);
  EXPECT_EQ(r.exit_code, kExitUsage) << r.err;
  r = Rekey({"keys", "import", "--file", Path("other.key")}, master_b64);
  EXPECT_EQ(r.exit_code, kExitUsage) << r.err;  // raw needs --key-id
  // --kms-key encrypts a key file: it means nothing for a raw key nor for a cleartext export.
  r = Rekey({"keys", "import", "--key-id", "77", "--kms-key", "arn:aws:kms:x", "--file",
             Path("other.key")},
            master_b64);
  EXPECT_EQ(r.exit_code, kExitUsage) << r.err;
  EXPECT_NE(r.err.find("--kms-key names the KMS key of an encrypted key file"), std::string::npos)
      << r.err;
  EXPECT_EQ(Keys(), 3);
  r = Rekey({"keys", "export", "--format", "tink-keyset", "--cleartext", "--kms-key", "k",
             "--output", Path("refused.keyset")},
            master_b64);
  EXPECT_EQ(r.exit_code, kExitUsage) << r.err;
  EXPECT_EQ(RunProcess({"test", "-e", Path("refused.keyset")}).exit_code, 1);
  // A scope without a primary has nothing to say which key encrypts.
  r = Rekey({"keys", "export", "--format", "tink-keyset", "--scope", "nobody", "--output",
             Path("none.keyset")},
            master_b64);
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_EQ(RunProcess({"test", "-e", Path("none.keyset")}).exit_code, 1);
  // The imported primary of encrypted_two_keys is the scope's primary; the export, in JSON, names
  // it as the keyset's primary.
  EXPECT_EQ(Status(two_primary), "primary");
  r = Rekey({"keys", "export", "--format", "tink-keyset", "--cleartext"}, master_b64);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json exported = nlohmann::json::parse(r.out);
  EXPECT_EQ(exported["primaryKeyId"], two_primary);
  EXPECT_EQ(exported["key"].size(), 3u);

  // A key file is never written to a terminal (util-linux `script` gives rekey one), encrypted or
  // not, unless --output names a file.
  for (const std::string& flags : {std::string(""), std::string(" --cleartext")}) {
    const std::string command = std::string(REKEY_BINARY) + " --db '" + conninfo() +
                                "' keys export --format tink-keyset" + flags;
    r = RunProcess({"script", "-qec", command, "/dev/null"},
                   {{"REKEY_MASTER_KEY", master_b64}, {"REKEY_MASTER_KEY_FILE", std::nullopt}});
    EXPECT_EQ(r.exit_code, kExitUsage) << r.out << r.err;
    EXPECT_NE(r.out.find("refusing to write a key file to a terminal"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("primaryKeyId"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("encryptedKeyset"), std::string::npos) << r.out;
  }
}

// The keyset's primary takes the scope's primary only if the scope has none, or with --promote;
// rekey's own JSON export, fed back through --stdin, is recognised key for key.
TEST_F(TinkKeysetTest, TheKeysetPrimaryBecomesPrimaryOnlyWhenTheScopeAllowsIt) {
  ASSERT_EQ(Rekey({"migrate"}).exit_code, 0);
  ASSERT_EQ(Rekey({"keys", "create", "--key-id", "5"}).exit_code, 0);
  ASSERT_EQ(Rekey({"keys", "promote", "5"}).exit_code, 0);
  const std::string first = Path("first.keyset"), second = Path("second.keyset");
  Tink({"keyset", first});
  Tink({"keyset", second});
  auto ids = [&](const std::string& keyset) {
    return nlohmann::json::parse(
        Tink({"decrypt", keyset, "cleartext-binary"}, nlohmann::json::array()));
  };
  const nlohmann::json a = ids(first), b = ids(second);

  ProcessResult r = Rekey({"keys", "import", "--format", "tink-keyset", "--file", first});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("keeps its primary: `rekey keys promote " + a["primary"].dump() + "`"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(Status(5), "primary");
  EXPECT_EQ(Status(a["primary"]), "enabled");
  EXPECT_EQ(Status(a["key_ids"][0]), "decrypt_only");

  r = Rekey({"keys", "import", "--format", "tink-keyset", "--promote", "--file", second});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("key 5 is now decrypt_only"), std::string::npos) << r.out;
  EXPECT_EQ(Status(5), "decrypt_only");
  EXPECT_EQ(Status(b["primary"]), "primary");
  EXPECT_EQ(Status(b["key_ids"][0]), "decrypt_only");

  r = Rekey({"keys", "export", "--format", "tink-keyset", "--cleartext"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json exported = nlohmann::json::parse(r.out);
  EXPECT_EQ(exported["primaryKeyId"], b["primary"]);
  EXPECT_EQ(exported["key"].size(), 5u);
  for (const nlohmann::json& key : exported["key"]) {
    EXPECT_EQ(key["status"], "ENABLED");
    EXPECT_EQ(key["outputPrefixType"], "TINK");
    EXPECT_EQ(key["keyData"]["typeUrl"], "type.googleapis.com/google.crypto.tink.AesGcmKey");
  }
  r = RunRekey({"--db", conninfo(), "keys", "import", "--format", "tink-keyset", "--stdin"},
               {{"REKEY_MASTER_KEY", master_b64_}, {"REKEY_MASTER_KEY_FILE", std::nullopt}},
               exported.dump());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("imported 0 key(s)"), std::string::npos) << r.out;
  EXPECT_EQ(Keys(), 5);
}

}  // namespace
}  // namespace rekey
