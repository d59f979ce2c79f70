// A full run -- import, create, policy, staged rotation with approval, metrics and health
// endpoints, verify, report, rotate-due, rollback -- and then a search of everything it printed,
// everything it stored outside rekey.keys.wrapped_key, and the PostgreSQL server log, for the
// data keys and the master key: raw, hex (either case, and PostgreSQL's \x form), base64 and
// base64url. None may appear.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "keyring/keyring.h"
#include "ops_support.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

std::vector<std::string> Encodings(const Bytes& key) {
  std::string hex = HexEncode(key);
  std::string upper = hex;
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  std::string b64 = Base64Encode(key);
  std::string url = b64;
  std::replace(url.begin(), url.end(), '+', '-');
  std::replace(url.begin(), url.end(), '/', '_');
  while (!url.empty() && url.back() == '=') url.pop_back();
  // Also a recognizable part of each (a key cut in a log line is still a leak).
  return {std::string(key.begin(), key.end()),
          hex,
          upper,
          "\\x" + hex,
          b64,
          url,
          hex.substr(8, 32),
          b64.substr(4, 24)};
}

class NoKeyMaterialTest : public PgTest {
 protected:
  ProcessResult Rekey(const std::vector<std::string>& args, const std::string& in = "") {
    std::vector<std::string> full{"--db", conninfo()};
    full.insert(full.end(), args.begin(), args.end());
    ProcessResult r = RunRekey(full, WorkerEnv(), in);
    EXPECT_EQ(r.exit_code, 0) << args[0] << ": " << r.err;
    seen_ += r.out + r.err;
    return r;
  }
  void Work(const std::string& job) { Rekey({"work", "--job", job, "--concurrency", "2"}); }
  std::string seen_;
};

TEST_F(NoKeyMaterialTest, AFullRunNeverShowsAKey) {
  SeedTinkTable(conn(), "public.cards", 4000, 1);
  Secret k1 = TestDataKey(1);
  Rekey({"keys", "import", "--key-id", "1", "--stdin"}, Base64Encode(k1.data(), k1.size()));
  Rekey({"keys", "promote", "1"});
  Rekey({"keys", "create", "--max-age", "90d"});  // key 2: generated, material unknown so far
  Rekey({"keys", "policy", "set", "--max-age", "90d"});
  Rekey({"job", "create", "--table", "public.cards", "--column", "token", "--key-id-column",
         "key_id", "--map", "1:2", "--stages", "5,100", "--batch-size", "500"});
  Work("1");
  Rekey({"job", "advance", "1"});

  ChildProcess worker({REKEY_BINARY, "--db", conninfo(), "work", "--job", "1", "--listen",
                       "127.0.0.1:0", "--linger", "60"},
                      WorkerEnv());
  auto lingering = WaitForLog(worker, "lingering so the final metrics");
  ASSERT_TRUE(lingering) << ReadFile(worker.stderr_path());
  const int port = ListenPort(*lingering);
  for (const char* path : {"/metrics", "/readyz", "/healthz"}) seen_ += HttpGet(port, path).body;
  worker.Signal(SIGTERM);
  ProcessResult w = worker.Wait(30);
  seen_ += w.out + w.err;

  Rekey({"job", "verify", "1"});
  Rekey({"report", "1", "--format", "json"});
  Rekey({"report", "1", "--format", "markdown"});
  Rekey({"keys", "status", "--json"});
  Rekey({"keys", "list", "--json"});
  Rekey({"status", "1", "--json"});
  Rekey({"rotate-due", "--dry-run"});
  Rekey({"job", "rollback", "1"});
  Work("1");

  // Everything rekey stored besides the wrapped keys themselves.
  {
    pqxx::read_transaction txn(conn());
    for (const char* sql :
         {"SELECT coalesce(string_agg(a::text, E'\\n'), '') FROM rekey.audit a",
          "SELECT coalesce(string_agg(r::text, E'\\n'), '') FROM rekey.reports r",
          "SELECT coalesce(string_agg(g::text, E'\\n'), '') FROM rekey.gates g",
          "SELECT coalesce(string_agg(b::text, E'\\n'), '') FROM rekey.batches b",
          "SELECT coalesce(string_agg(j::text, E'\\n'), '') FROM rekey.jobs j",
          "SELECT coalesce(string_agg(kms_key_ref || ' ' || kms_provider, E'\\n'), '') "
          "FROM rekey.keys"}) {
      seen_ += txn.exec1(sql)[0].as<std::string>();
    }
  }
  seen_ += ReadFile(PgServer::Get().log_file());
  ASSERT_GT(seen_.size(), 10000u) << "the run produced output to search";

  // The keys: 1 (imported), 2 (generated: unwrapped here with the master key), the master key.
  std::vector<std::pair<std::string, Bytes>> keys;
  keys.emplace_back("data key 1", Bytes(k1.data(), k1.data() + k1.size()));
  {
    pqxx::read_transaction txn(conn());
    keyring::KeyRecord k2 = keyring::GetKey(txn, 2);
    auto kms = TestKms();
    Secret plain = kms.UnwrapDataKey(2, k2.kms_key_ref, *k2.wrapped_key);
    keys.emplace_back("data key 2", Bytes(plain.data(), plain.data() + plain.size()));
  }
  keys.emplace_back("master key", *Base64Decode(TestMasterKeyBase64()));
  for (const auto& [name, bytes] : keys) {
    for (const std::string& form : Encodings(bytes)) {
      EXPECT_EQ(seen_.find(form), std::string::npos) << name << " appears as '" << form << "'";
    }
  }
}

}  // namespace
}  // namespace rekey::testing
