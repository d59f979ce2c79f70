// Statements whose results come back in PostgreSQL's binary format, run through libpq on a
// libpqxx transaction's connection (libpqxx 6.4 asks only for text results). A bytea then arrives
// as its bytes, not as hex text of twice its size: no decoding, no copy, and values up to
// PostgreSQL's 1 GB limit can be read at all (their hex text passes that limit from 512 MiB).
//
// A statement is either one prepared through libpqxx (`conn.prepare(name, sql)`), run by
// ExecBinary, which makes libpqxx register it with the server first (prepare_now) so libpqxx keeps
// track of it across a connection it restores; or an SQL text run once by ExecBinaryQuery. Fields
// are read by column name, with the type checked once per column: a statement must return bytea,
// text (or varchar) and int2/int4/int8 columns only -- cast anything else in its SQL.
//
// Errors are libpqxx's exceptions, so db::Classify treats them exactly as the libpqxx path: a
// failed statement throws pqxx::sql_error with the statement's SQLSTATE and the server's message;
// a lost connection throws pqxx::broken_connection (transient).
//
// Not thread-safe, as the transaction it runs in.
#pragma once

#include <libpq-fe.h>
#include <pqxx/pqxx>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace rekey::db {

// One parameter of ExecBinary. The bytes are not copied: they must outlive the call.
struct BinaryParam {
  const char* data = nullptr;  // nullptr: SQL NULL
  int size = 0;
  bool binary = false;  // in the type's binary form (e.g. BinaryArray), else its text

  static BinaryParam Text(const std::string& text) {
    return {text.c_str(), int(text.size()), false};
  }
  static BinaryParam Binary(std::string_view bytes) {
    return {bytes.data(), int(bytes.size()), true};
  }
  static BinaryParam Null() { return {}; }
};

// The result of ExecBinary: owns the libpq result (PQclear on destruction). Movable, not copyable.
class BinaryResult {
 public:
  enum class Kind {
    kBytes,    // bytea, text, varchar: the field's bytes as stored (text in client_encoding)
    kInteger,  // int2, int4, int8: decoded from network byte order
  };

  BinaryResult() = default;
  explicit BinaryResult(PGresult* result) : result_(result) {}

  size_t size() const { return result_ ? size_t(PQntuples(result_.get())) : 0; }
  bool empty() const { return size() == 0; }

  // The number of the column called `name`, whose type must be of `kind`. Throws
  // PermanentError naming the column if there is none, or its type is another (a statement
  // that must cast it in its SQL).
  int Column(std::string_view name, Kind kind) const;

  bool IsNull(size_t row, int column) const {
    return PQgetisnull(result_.get(), int(row), column) != 0;
  }
  // A kBytes field: points into the result, valid while it lives. Empty for NULL.
  std::string_view Bytes(size_t row, int column) const {
    return {PQgetvalue(result_.get(), int(row), column),
            size_t(PQgetlength(result_.get(), int(row), column))};
  }
  const uint8_t* Data(size_t row, int column) const {
    return reinterpret_cast<const uint8_t*>(PQgetvalue(result_.get(), int(row), column));
  }
  // A kInteger field, whatever its width; 0 for NULL.
  int64_t Integer(size_t row, int column) const;

 private:
  struct Clear {
    void operator()(PGresult* r) const { PQclear(r); }
  };
  std::unique_ptr<PGresult, Clear> result_;
};

// Runs `statement`, prepared on txn's connection through libpqxx (conn().prepare), with
// `params`, and returns its rows in binary format. Throws as the file comment says; the
// transaction is then aborted, as after a failed libpqxx statement.
BinaryResult ExecBinary(pqxx::dbtransaction& txn, const std::string& statement,
                        const std::vector<BinaryParam>& params);

// Runs `sql` (one statement, with $n parameters: not prepared, as libpqxx's exec_params; e.g. a
// FETCH from a cursor) with `params`, and returns its rows in binary format. Throws as ExecBinary.
BinaryResult ExecBinaryQuery(pqxx::dbtransaction& txn, const std::string& sql,
                             const std::vector<BinaryParam>& params = {});

}  // namespace rekey::db
