#include "db/bytea.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "harness/pg_server.h"

namespace rekey::testing {
namespace {

class ByteaTest : public PgTest {};

// Values read back from the server in both output formats decode to the bytes written.
TEST_F(ByteaTest, HexAndEscapeOutputDecodeToTheSameBytes) {
  std::vector<Bytes> values = {{}, {0x00}, {0x01, 0x02, 0xfe, 0xff}, Bytes(300)};
  for (int i = 0; i < 256; ++i) values[3].push_back(uint8_t(i));
  for (const std::string format : {"hex", "escape"}) {
    pqxx::work txn(conn());
    txn.exec0("SET LOCAL bytea_output = " + format);
    for (const auto& v : values) {
      const pqxx::row row =
          txn.exec_params1("SELECT $1::bytea", pqxx::binarystring(v.data(), v.size()));
      Bytes decoded = {0xaa, 0xbb};  // stale contents must not survive
      EXPECT_EQ(db::DecodeByteaHex(row[0], &decoded), format == "hex") << format;
      db::ReadBytea(row[0], &decoded);
      EXPECT_EQ(decoded, v) << format << ", " << v.size() << " bytes";
    }
  }
}

TEST_F(ByteaTest, MalformedHexIsRefused) {
  pqxx::work txn(conn());
  for (const std::string text : {"\\x0", "\\xzz", "\\xg0", "x00", ""}) {
    const pqxx::row row = txn.exec_params1("SELECT $1::text", text);
    Bytes out;
    EXPECT_FALSE(db::DecodeByteaHex(row[0], &out)) << text;
  }
}

}  // namespace
}  // namespace rekey::testing
