#include "db/binary_array.h"

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "harness/pg_server.h"

namespace rekey::testing {
namespace {

class BinaryArrayTest : public PgTest {};

// Each case is a list of elements (nullopt = NULL); the server must see exactly them.
const std::vector<std::vector<std::optional<std::string>>> kCases = {
    {},
    {""},
    {std::nullopt},
    {"a", std::nullopt, "b"},
    {"{1,2}", "\"quoted\"", "back\\slash", "comma,and space", "NULL", "caf\xc3\xa9"},
    {std::string(1, '\0') + "nul inside", std::string(5000, 'x')},
};

TEST_F(BinaryArrayTest, TheServerReadsBackEveryElement) {
  for (const int32_t oid : {db::BinaryArray::kByteaOid, db::BinaryArray::kTextOid}) {
    const std::string type = oid == db::BinaryArray::kByteaOid ? "bytea" : "text";
    for (const auto& elements : kCases) {
      // text cannot hold a NUL byte; bytea can.
      bool has_nul = false;
      for (const auto& e : elements) has_nul = has_nul || (e && e->find('\0') != std::string::npos);
      if (has_nul && type == "text") continue;
      db::BinaryArray array(oid);
      for (const auto& e : elements) {
        if (e) {
          array.Append(*e);
        } else {
          array.AppendNull();
        }
      }
      EXPECT_EQ(array.size(), int32_t(elements.size()));
      pqxx::work txn(conn());
      // Each element back as bytes (a text element through its UTF-8 encoding).
      const std::string bytes = type == "text" ? "convert_to(e, 'UTF8')" : "e";
      const pqxx::result r = txn.exec_params(
          "SELECT coalesce(cardinality(a), 0), o, e IS NULL, " + bytes +
              " FROM (SELECT $1::" + type +
              "[] AS a) s LEFT JOIN LATERAL unnest(s.a) WITH ORDINALITY AS u(e, o) ON true "
              "ORDER BY o",
          array.Finish());
      ASSERT_EQ(r[0][0].as<size_t>(), elements.size()) << type;
      if (elements.empty()) continue;
      ASSERT_EQ(r.size(), elements.size()) << type;
      for (size_t i = 0; i < elements.size(); ++i) {
        EXPECT_EQ(r[int(i)][2].as<bool>(), !elements[i]) << type << " element " << i;
        if (elements[i]) {
          EXPECT_EQ(pqxx::binarystring(r[int(i)][3]).str(), *elements[i])
              << type << " element " << i;
        }
      }
    }
  }
}

}  // namespace
}  // namespace rekey::testing
