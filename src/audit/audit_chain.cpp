#include "audit/audit_chain.h"

#include <openssl/sha.h>

#include <cstdlib>

#include "common/error.h"
#include "db/connection.h"
#include "db/named_query.h"

namespace rekey::audit {
namespace {

constexpr size_t kHashSize = 32;
constexpr int kPage = 5000;
// The longest a transaction that writes audit rows is expected to run: a row may be sealed after
// seals that ran while its transaction was open, but an `at` older than earlier seals by more
// than this was backdated.
constexpr double kMaxTransactionSeconds = 3600;

// The columns of audit/chain_page holding the audit row's fields in CanonicalRow's order: the
// same text renderings the sealer's rekey.audit_row_bytes uses, computed by the server from the
// raw columns of the row.
constexpr const char* kRowFields[] = {"row_audit_id", "row_at",      "row_actor",
                                      "row_action",   "row_outcome", "row_job_id",
                                      "row_batch_no", "row_details", "row_xid"};

Bytes ToBytes(const pqxx::field& f) {
  pqxx::binarystring b(f);
  return Bytes(b.data(), b.data() + b.size());
}

uint64_t ParseXid(const std::string& text) {
  return std::strtoull(text.c_str(), nullptr, 10);
}

}  // namespace

bool Verification::tampered() const {
  for (const auto& f : findings) {
    if (f.kind != "unsealed") return true;
  }
  return false;
}

Bytes CanonicalRow(const std::vector<std::optional<std::string>>& fields) {
  std::string out;
  for (size_t i = 0; i < fields.size(); ++i) {
    if (i > 0) out += ',';
    if (!fields[i]) {
      out += '-';
    } else {
      out += std::to_string(fields[i]->size());
      out += ':';
      out += *fields[i];
    }
  }
  return rekey::ToBytes(out);
}

Bytes Sha256(const Bytes& data) {
  Bytes out(kHashSize);
  SHA256(data.data(), data.size(), out.data());
  return out;
}

Bytes ChainHash(const Bytes& prev_chain_hash, int64_t seq, const Bytes& row_digest) {
  Bytes buf = prev_chain_hash;
  for (int shift = 56; shift >= 0; shift -= 8) buf.push_back(uint8_t(uint64_t(seq) >> shift));
  buf.insert(buf.end(), row_digest.begin(), row_digest.end());
  return Sha256(buf);
}

namespace {

// Takes the chain's sealing lock (the key rekey.seal_audit tries), waiting for a sealer in
// progress: rekey.seal_audit alone would return 0 at once and leave that sealer's leftovers.
void WaitForSealingLock(pqxx::work& txn) {
  txn.exec_params(db::Query("audit/audit_chain.set_lock_timeout"),
                  std::to_string(kSealLockTimeoutSeconds) + "s");
  txn.exec(db::Query("audit/audit_chain.wait_for_sealing_lock"));
}

// `r`: audit/audit_chain.head or .seal_durably, no row for an empty chain.
Head HeadOf(const pqxx::result& r) {
  if (r.empty()) return Head{};
  return Head{r[0]["seq"].as<int64_t>(), r[0]["chain_hash"].as<std::string>()};
}

}  // namespace

int Seal(pqxx::connection& conn) {
  return db::Classified("cannot seal the audit log", [&] {
    pqxx::work txn(conn);
    WaitForSealingLock(txn);
    const int sealed = txn.exec1(db::Query("audit/audit_chain.seal"))["sealed"].as<int>();
    txn.commit();
    return sealed;
  });
}

Head SealDurably(pqxx::connection& conn) {
  return db::Classified("cannot seal the audit log durably", [&] {
    pqxx::work txn(conn);
    WaitForSealingLock(txn);
    // rekey.seal_audit_durably sets it too; said here as well because this COMMIT is the point.
    txn.exec0(db::Query("audit/audit_chain.synchronous_commit"));
    pqxx::result r = txn.exec(db::Query("audit/audit_chain.seal_durably"));
    txn.commit();
    return HeadOf(r);
  });
}

Head CurrentHead(pqxx::connection& conn) {
  return db::Classified("cannot read the audit chain head", [&] {
    pqxx::read_transaction txn(conn);
    pqxx::result r = txn.exec(db::Query("audit/audit_chain.head"));
    txn.commit();
    return HeadOf(r);
  });
}

std::string FormatHead(const Head& head) {
  return std::to_string(head.seq) + ":" + head.chain_hash;
}

Head ParseHead(const std::string& text) {
  const auto colon = text.find(':');
  Head head;
  bool ok = colon != std::string::npos && colon > 0 && text.size() - colon - 1 == 2 * kHashSize;
  if (ok) {
    for (size_t i = 0; i < colon; ++i) ok = ok && text[i] >= '0' && text[i] <= '9';
  }
  std::optional<Bytes> hash;
  if (ok) hash = HexDecode(text.substr(colon + 1));
  if (!ok || !hash || colon > 18) {
    throw ConfigError("a chain head is SEQ:HASH as `rekey audit verify` prints it (e.g. 42:" +
                      std::string(8, '0') + "...), not '" + text.substr(0, 100) + "'");
  }
  head.seq = std::stoll(text.substr(0, colon));
  head.chain_hash = HexEncode(*hash);
  return head;
}

Verification Verify(pqxx::connection& conn, const std::optional<Head>& expect_head) {
  return db::Classified("cannot verify the audit log", [&] {
    Verification v;
    pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> txn(conn);
    Bytes prev(kHashSize, 0);
    int64_t last_seq = 0;
    uint64_t horizon = 0;
    bool expected_seen = false;
    double sealed_before = 0;  // the latest sealed_at of the links before the current one
    for (;;) {
      pqxx::result page =
          txn.exec_params(db::Query("audit/audit_chain.chain_page"), last_seq, kPage);
      for (const auto& row : page) {
        const int64_t seq = row["seq"].as<int64_t>();
        const int64_t audit_id = row["audit_id"].as<int64_t>();
        const Bytes stored_digest = ToBytes(row["row_digest"]);
        const Bytes stored_chain = ToBytes(row["chain_hash"]);
        horizon = std::max(horizon, ParseXid(row["sealed_xmin"].as<std::string>()));
        if (seq != last_seq + 1) {
          v.findings.push_back({"gap", std::nullopt, seq,
                                "chain rows " + std::to_string(last_seq + 1) + ".." +
                                    std::to_string(seq - 1) + " are missing"});
        }
        // The chain is recomputed over the stored digests, so one altered row is reported once
        // (as altered) rather than breaking every later link.
        const Bytes chain = ChainHash(prev, seq, stored_digest);
        if (chain != stored_chain) {
          v.findings.push_back({"chain_broken", audit_id, seq,
                                "chain hash of seq " + std::to_string(seq) +
                                    " does not follow from the previous link"});
        }
        if (!row["row_exists"].as<bool>()) {
          v.findings.push_back(
              {"deleted", audit_id, seq,
               "audit row " + std::to_string(audit_id) + " was sealed but is gone"});
        } else {
          std::vector<std::optional<std::string>> fields;
          for (const char* name : kRowFields) {
            const pqxx::field f = row[name];
            fields.push_back(f.is_null() ? std::nullopt
                                         : std::optional<std::string>(f.as<std::string>()));
          }
          ++v.rows_checked;
          if (Sha256(CanonicalRow(fields)) != stored_digest) {
            v.findings.push_back(
                {"altered", audit_id, seq,
                 "audit row " + std::to_string(audit_id) + " differs from what was sealed"});
          }
          if (row["row_at_epoch"].as<double>() < sealed_before - kMaxTransactionSeconds) {
            v.findings.push_back({"inserted", audit_id, seq,
                                  "audit row " + std::to_string(audit_id) +
                                      " claims a time long before seals that did not see it "
                                      "(backdated)"});
          }
        }
        sealed_before = std::max(sealed_before, row["sealed_epoch"].as<double>());
        if (expect_head && seq == expect_head->seq) {
          expected_seen = true;
          if (HexEncode(stored_chain) != expect_head->chain_hash) {
            v.findings.push_back({"head_mismatch", audit_id, seq,
                                  "the recorded head " + std::to_string(seq) + ":" +
                                      expect_head->chain_hash.substr(0, 16) +
                                      "... is not in this chain: history was rewritten"});
          }
        }
        prev = stored_chain;
        last_seq = seq;
        v.head = {seq, HexEncode(stored_chain)};
      }
      if (page.size() < size_t(kPage)) break;
    }
    if (expect_head && !expected_seen) {
      v.findings.push_back({"head_mismatch", std::nullopt, expect_head->seq,
                            "the recorded head seq " + std::to_string(expect_head->seq) +
                                " is beyond the chain's end (" + std::to_string(last_seq) +
                                "): sealed rows were cut off"});
    }
    // Unsealed rows: legitimate only if their transaction may have been running at every seal,
    // and only for a while.
    pqxx::result unsealed = txn.exec(db::Query("audit/audit_chain.unsealed"));
    std::optional<Finding> oldest_unsealed;
    int64_t stale = 0;
    double oldest_age = 0;
    for (const auto& row : unsealed) {
      const int64_t audit_id = row["audit_id"].as<int64_t>();
      if (ParseXid(row["xid"].as<std::string>()) < horizon) {
        v.findings.push_back({"inserted", audit_id, std::nullopt,
                              "audit row " + std::to_string(audit_id) +
                                  " was added after the log was sealed past it"});
        continue;
      }
      ++v.unsealed;
      const double age = row["age_seconds"].as<double>();
      if (age <= kMaxUnsealedMinutes * 60.0) continue;
      ++stale;
      if (!oldest_unsealed || age > oldest_age) {
        oldest_age = age;
        oldest_unsealed = Finding{"unsealed", audit_id, std::nullopt,
                                  "audit row " + std::to_string(audit_id) + " (" +
                                      row["action"].as<std::string>() + ", " +
                                      row["at"].as<std::string>() + ") has not been sealed for " +
                                      std::to_string(int64_t(age / 60)) + " minutes"};
      }
    }
    if (oldest_unsealed) {
      oldest_unsealed->detail +=
          " (" + std::to_string(stale) + " rows unsealed for more than " +
          std::to_string(kMaxUnsealedMinutes) +
          " minutes): sealing has stopped; run `rekey audit seal`, and find the sessions that "
          "write audit rows outside READ COMMITTED (default_transaction_isolation)";
      v.findings.push_back(*oldest_unsealed);
    }
    txn.commit();
    return v;
  });
}

}  // namespace rekey::audit
