#include "db/binary_result.h"

#include "common/error.h"
#include "db/binary_array.h"

namespace rekey::db {
namespace {

// Type OIDs (pg_type.dat): those whose binary form is the value's bytes, and the integers.
constexpr Oid kByteaOid = BinaryArray::kByteaOid;
constexpr Oid kTextOid = BinaryArray::kTextOid;
constexpr Oid kVarcharOid = 1043;
constexpr Oid kInt2Oid = 21;
constexpr Oid kInt4Oid = 23;
constexpr Oid kInt8Oid = 20;

// pqxx::largeobject::raw_connection is protected: the one way libpqxx 6.4 hands out a
// transaction's PGconn.
class RawConnection : private pqxx::largeobject {
 public:
  static PGconn* Of(const pqxx::dbtransaction& txn) { return raw_connection(txn); }
};

[[noreturn]] void ThrowFailure(PGconn* conn, const PGresult* result, const std::string& statement) {
  // As libpqxx decides: a connection that is no longer open is a broken connection, whatever
  // the result says.
  if (PQstatus(conn) != CONNECTION_OK) throw pqxx::broken_connection(PQerrorMessage(conn));
  if (result == nullptr) throw pqxx::failure(PQerrorMessage(conn));
  const char* sqlstate = PQresultErrorField(result, PG_DIAG_SQLSTATE);
  throw pqxx::sql_error(PQresultErrorMessage(result), statement,
                        sqlstate != nullptr ? sqlstate : "");
}

}  // namespace

int BinaryResult::Column(std::string_view name, Kind kind) const {
  const std::string wanted(name);
  const int column = result_ ? PQfnumber(result_.get(), ("\"" + wanted + "\"").c_str()) : -1;
  if (column < 0) throw PermanentError("the statement's result has no column " + wanted);
  const Oid type = PQftype(result_.get(), column);
  const bool fits = kind == Kind::kBytes
                        ? type == kByteaOid || type == kTextOid || type == kVarcharOid
                        : type == kInt2Oid || type == kInt4Oid || type == kInt8Oid;
  if (!fits) {
    throw PermanentError("column " + wanted + " of the statement's result has type oid " +
                         std::to_string(type) + ", not " +
                         (kind == Kind::kBytes ? "bytea or text" : "an integer") +
                         "; cast it in the statement");
  }
  return column;
}

int64_t BinaryResult::Integer(size_t row, int column) const {
  if (IsNull(row, column)) return 0;
  const auto* in = Data(row, column);
  uint64_t v = 0;
  const int n = PQgetlength(result_.get(), int(row), column);
  for (int i = 0; i < n; ++i) v = v << 8 | in[i];
  // Sign-extend the narrower integers.
  const int bits = 8 * n;
  if (bits < 64 && (v >> (bits - 1)) != 0) v |= ~uint64_t(0) << bits;
  return int64_t(v);
}

namespace {

// Runs `run` (libpq's call, given the parameters as libpq takes them) and returns its result, or
// throws as the header says. `what` names the statement in the exception.
template <typename Run>
BinaryResult Exec(pqxx::dbtransaction& txn, const std::string& what,
                  const std::vector<BinaryParam>& params, Run run) {
  PGconn* conn = RawConnection::Of(txn);
  std::vector<const char*> values(params.size());
  std::vector<int> lengths(params.size());
  std::vector<int> formats(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    values[i] = params[i].data;
    lengths[i] = params[i].size;
    formats[i] = params[i].binary ? 1 : 0;
  }
  PGresult* raw = run(conn, int(params.size()), values.data(), lengths.data(), formats.data());
  BinaryResult result(raw);  // cleared however this ends
  const ExecStatusType status = raw != nullptr ? PQresultStatus(raw) : PGRES_FATAL_ERROR;
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) ThrowFailure(conn, raw, what);
  return result;
}

}  // namespace

BinaryResult ExecBinary(pqxx::dbtransaction& txn, const std::string& statement,
                        const std::vector<BinaryParam>& params) {
  // libpqxx prepares lazily: make sure the server knows the statement by this name. Inside a
  // transaction libpqxx never restores a connection, so it stays prepared until the call.
  txn.conn().prepare_now(statement);
  return Exec(
      txn, "EXECUTE " + statement, params,
      [&](PGconn* conn, int n, const char* const* values, const int* lengths, const int* formats) {
        return PQexecPrepared(conn, statement.c_str(), n, values, lengths, formats,
                              /*resultFormat=*/1);
      });
}

BinaryResult ExecBinaryQuery(pqxx::dbtransaction& txn, const std::string& sql,
                             const std::vector<BinaryParam>& params) {
  return Exec(
      txn, sql, params,
      [&](PGconn* conn, int n, const char* const* values, const int* lengths, const int* formats) {
        return PQexecParams(conn, sql.c_str(), n, /*paramTypes=*/nullptr, values, lengths, formats,
                            /*resultFormat=*/1);
      });
}

}  // namespace rekey::db
