// Shared set-up for rotation tests: a known master key, known data keys imported into the
// keyring, and tables of Tink- or raw-encoded values whose plaintexts the test knows.
#pragma once

#include <gtest/gtest.h>

#include <pqxx/pqxx>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/secret.h"
#include "crypto/aes_gcm.h"
#include "crypto/codec.h"
#include "db/identifiers.h"
#include "harness/process.h"
#include "keyring/keyring.h"
#include "kms/local_kms.h"

namespace rekey::testing {

// Master key bytes 0xA0..0xBF, base64.
inline std::string TestMasterKeyBase64() {
  Bytes k(32);
  for (int i = 0; i < 32; ++i) k[i] = uint8_t(0xA0 + i);
  return Base64Encode(k);
}

inline EnvOverrides WorkerEnv() {
  return {{"REKEY_MASTER_KEY", TestMasterKeyBase64()}, {"REKEY_MASTER_KEY_FILE", std::nullopt}};
}

inline kms::LocalKms TestKms() {
  std::string b64 = TestMasterKeyBase64();
  return kms::LocalKms([b64](const char* name) -> std::optional<std::string> {
    if (std::string(name) == "REKEY_MASTER_KEY") return b64;
    return std::nullopt;
  });
}

// Data key `id`: 32 bytes starting at 32 * (id - 1) (key 1 = 0x00..0x1f, key 2 = 0x20..0x3f,
// as the anchors' fixture uses).
inline Secret TestDataKey(uint32_t id) {
  uint8_t raw[32];
  for (int i = 0; i < 32; ++i) raw[i] = uint8_t(32 * (id - 1) + i);
  return Secret(raw, 32);
}

// SELECT rekey.create_job(<args>) in its own transaction; returns the job id.
inline int64_t CreateJobSql(pqxx::connection& conn, const std::string& args) {
  pqxx::work txn(conn);
  int64_t id = txn.exec1("SELECT rekey.create_job(" + args + ")")[0].as<int64_t>();
  txn.commit();
  return id;
}

// Imports keys `ids` into the keyring of the database behind `conn`.
inline void ImportTestKeys(pqxx::connection& conn, const std::vector<uint32_t>& ids) {
  auto kms = TestKms();
  pqxx::work txn(conn);
  for (uint32_t id : ids) keyring::ImportKey(txn, kms, id, "default", TestDataKey(id));
  txn.commit();
}

inline std::string TinkEncrypt(uint32_t key_id, const std::string& plaintext,
                               const std::string& ad = "") {
  crypto::AesGcmKey key(TestDataKey(key_id));
  Bytes out;
  crypto::SealTink(key_id, key, reinterpret_cast<const uint8_t*>(plaintext.data()),
                   plaintext.size(), reinterpret_cast<const uint8_t*>(ad.data()), ad.size(), &out);
  return std::string(out.begin(), out.end());
}

// Decrypts a Tink value with the test keys; returns "<status name>" on failure and sets *key_id.
inline std::string TinkDecrypt(const std::string& value, uint32_t* key_id,
                               const std::string& ad = "") {
  std::map<uint32_t, std::unique_ptr<crypto::AesGcmKey>> keys;
  crypto::KeyLookup lookup = [&](uint32_t id) -> crypto::AesGcmKey* {
    auto& k = keys[id];
    if (!k) k = std::make_unique<crypto::AesGcmKey>(TestDataKey(id));
    return k.get();
  };
  Bytes plaintext;
  auto status =
      crypto::OpenTink(reinterpret_cast<const uint8_t*>(value.data()), value.size(), lookup,
                       reinterpret_cast<const uint8_t*>(ad.data()), ad.size(), &plaintext, key_id);
  if (status != crypto::DecodeStatus::kOk)
    return "<" + std::string(crypto::DecodeStatusName(status)) + ">";
  return std::string(plaintext.begin(), plaintext.end());
}

// `rekey --db <conninfo> args...` with the test keys' environment (WorkerEnv).
inline ProcessResult RekeyAt(const std::string& conninfo, const std::vector<std::string>& args) {
  std::vector<std::string> full{"--db", conninfo};
  full.insert(full.end(), args.begin(), args.end());
  return RunRekey(full, WorkerEnv());
}

// Runs `processes` `rekey work --job J` processes side by side until each exits, expecting 0
// from all: the job's queue ran dry (or it waits on a gate).
inline void WorkUntilDry(const std::string& conninfo, int64_t job, int processes = 2) {
  std::vector<std::unique_ptr<ChildProcess>> workers;
  for (int i = 0; i < processes; ++i) {
    workers.push_back(std::make_unique<ChildProcess>(
        std::vector<std::string>{REKEY_BINARY, "--db", conninfo, "work", "--job",
                                 std::to_string(job)},
        WorkerEnv()));
  }
  for (auto& w : workers) {
    ProcessResult r = w->Wait(300);
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
}

// The column public.`table`.* of the output of `rekey keys usage K --json` (the census, with the
// columns SQL cannot count by key counted by trial decryption), or null when it lists none there.
inline nlohmann::json UsageColumn(const ProcessResult& usage, const std::string& table) {
  EXPECT_EQ(usage.exit_code, 0) << usage.err;
  if (usage.exit_code != 0) return nullptr;
  const nlohmann::json listed = nlohmann::json::parse(usage.out);
  for (const nlohmann::json& c : listed["columns"]) {
    if (c["table"] == table) return c;
  }
  return nullptr;
}

// The kind of the job's current stage ('' before the first), read with the job's row
// share-locked until the caller's transaction ends: no stage opens before it does. A test
// application that writes under the old key "until the sweep" reads this first, so each of its
// writes lands either before the sweep opened (and the sweep sees it) or not at all.
inline std::string CurrentStageKindSharingJob(const std::string& job_id) {
  return "SELECT coalesce(s.kind, '') FROM rekey.jobs x LEFT JOIN rekey.job_stages s ON s.job_id "
         "= x.job_id AND s.stage_no = x.current_stage WHERE x.job_id = " +
         job_id + " FOR SHARE OF x";
}

inline std::string PlaintextFor(int64_t id) {
  return "4111-1111-1111-" + std::to_string(1000000 + id);
}

// Creates `table` (id bigint pk, tenant_id int, key_id int, token bytea) with ids 1..rows,
// token = Tink(key_id, PlaintextFor(id)), tenant_id = id % tenants.
inline void SeedTinkTable(pqxx::connection& conn, const std::string& table, int64_t rows,
                          uint32_t key_id, int tenants = 1) {
  pqxx::work txn(conn);
  txn.exec0("CREATE TABLE " + table +
            " (id bigint PRIMARY KEY, tenant_id int NOT NULL, key_id int, token bytea, note text)");
  crypto::AesGcmKey key(TestDataKey(key_id));
  const int64_t chunk = 20000;
  for (int64_t start = 1; start <= rows; start += chunk) {
    std::string ids = "{", tokens = "{";
    for (int64_t id = start; id < start + chunk && id <= rows; ++id) {
      if (ids.size() > 1) {
        ids += ',';
        tokens += ',';
      }
      ids += std::to_string(id);
      std::string pt = PlaintextFor(id);
      Bytes out;
      crypto::SealTink(key_id, key, reinterpret_cast<const uint8_t*>(pt.data()), pt.size(), nullptr,
                       0, &out);
      tokens += "\"\\\\x" + HexEncode(out) + "\"";
    }
    txn.exec_params("INSERT INTO " + table +
                        " (id, tenant_id, key_id, token) SELECT i, i % $3, $4, t FROM "
                        "unnest($1::bigint[], $2::bytea[]) AS u(i, t)",
                    ids + "}", tokens + "}", tenants, key_id);
  }
  txn.exec0("ANALYZE " + table);
  txn.commit();
}

// id -> (key id, plaintext or "<status>") for every row of `table`.
inline std::map<int64_t, std::pair<uint32_t, std::string>> DecryptAll(pqxx::connection& conn,
                                                                      const std::string& table) {
  std::map<int64_t, std::pair<uint32_t, std::string>> out;
  pqxx::read_transaction txn(conn);
  for (const auto& row : txn.exec("SELECT id, token FROM " + table + " ORDER BY id")) {
    pqxx::binarystring token(row[1]);
    uint32_t kid = 0;
    std::string pt = TinkDecrypt(token.str(), &kid);
    out[row[0].as<int64_t>()] = {kid, pt};
  }
  return out;
}

// The seed of the application-library tests (cloak, Lockbox, Rails): in `txn`, runs `create`
// (a CREATE TABLE) and inserts through `insert` ("INSERT INTO t (id, col)", two columns: a bigint
// id and a text value) the library's values `made` (a JSON object id -> string), then `bad` at ids
// 900001, 900002, ...
inline void SeedLibraryValues(pqxx::transaction_base& txn, const std::string& create,
                              const std::string& insert, const nlohmann::json& made,
                              const std::vector<std::string>& bad) {
  std::vector<std::string> ids, values;
  for (const auto& [id, value] : made.items()) {
    ids.push_back(id);
    values.push_back(value.get<std::string>());
  }
  for (size_t i = 0; i < bad.size(); ++i) {
    ids.push_back(std::to_string(900001 + i));
    values.push_back(bad[i]);
  }
  txn.exec0(create);
  txn.exec_params(insert + " SELECT * FROM unnest($1::bigint[], $2::text[])",
                  db::TextArrayLiteral(ids), db::TextArrayLiteral(values));
}

// A refusal of `rekey job create`: the flag, value pairs that replace (or are added to) a valid
// command's, and what the refusal must be.
struct CreateRefusal {
  std::vector<std::string> change;
  int exit_code;
  const char* message;
};

// Runs `rekey` on `valid` changed by each case and expects the case's exit code and message, as
// the last line of stderr and one line ("rekey: error: ..."; info logs may come before it).
inline void ExpectCreateRefusals(
    const std::vector<std::string>& valid, const std::vector<CreateRefusal>& cases,
    const std::function<ProcessResult(const std::vector<std::string>&)>& rekey) {
  for (const CreateRefusal& c : cases) {
    std::vector<std::string> args = valid;
    for (size_t i = 0; i + 1 < c.change.size(); i += 2) {
      auto it = std::find(args.begin(), args.end(), c.change[i]);
      if (it == args.end()) {
        args.push_back(c.change[i]);
        args.push_back(c.change[i + 1]);
      } else {
        *(it + 1) = c.change[i + 1];
      }
    }
    ProcessResult r = rekey(args);
    EXPECT_EQ(r.exit_code, c.exit_code) << c.message << ": " << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
    const size_t at = r.err.find("rekey: error: ");
    ASSERT_NE(at, std::string::npos) << r.err;
    EXPECT_EQ(r.err.find('\n', at), r.err.size() - 1) << "one line: " << r.err;
  }
}

}  // namespace rekey::testing
