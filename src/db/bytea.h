// Reading bytea values from text-format query results without libpq's PQunescapeBytea.
#pragma once

#include <pqxx/pqxx>

#include "common/bytes.h"

namespace rekey::db {

// Decodes `field`, a bytea in PostgreSQL's hex output format ("\x0a1b..."), into *out, reusing
// its storage. pqxx::binarystring (PQunescapeBytea and a copy) costs about 25 instructions per
// hex digit and two allocations per value; this is one table lookup per digit. Returns false
// iff the field is not in hex format (e.g. bytea_output = escape); *out is then unspecified.
bool DecodeByteaHex(const pqxx::field& field, Bytes* out);

// DecodeByteaHex, falling back to pqxx::binarystring for any other format.
void ReadBytea(const pqxx::field& field, Bytes* out);

}  // namespace rekey::db
