// The SQL pieces of a job's key, without a database: the exact text for one column (what every
// job before composite keys ran, so its statements must not change) and for a composite key.
// tests/table_shapes_pg_test.cpp runs them against PostgreSQL beside the SQL builders.
#include "jobs/key_shape.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace rekey::jobs {
namespace {

TEST(KeyShapeTest, OneBigintColumnIsItsTextAndItsType) {
  const KeyShape key({"id"}, {"bigint"}, true);
  EXPECT_FALSE(key.composite());
  EXPECT_EQ(key.Text("t"), "t.\"id\"::text");
  EXPECT_EQ(key.Row("t"), "t.\"id\"");
  EXPECT_EQ(key.OrderBy("t"), "t.\"id\"");
  EXPECT_EQ(key.Bound("$1"), "$1::bigint");
  EXPECT_EQ(key.AnyOf("t", "$2"), "t.\"id\" = ANY ($2::bigint[])");
  EXPECT_EQ(key.ArrayType(), "bigint[]");
}

TEST(KeyShapeTest, DatesAndTimesAreCanonicalUnlessTheJobIsLegacy) {
  EXPECT_EQ(KeyShape({"at"}, {"timestamp with time zone"}, true).Text("t"),
            "rekey.timestamptz_key_text(t.\"at\")");
  EXPECT_EQ(KeyShape({"d"}, {"date"}, true).Text("t"), "rekey.date_key_text(t.\"d\")");
  EXPECT_EQ(KeyShape({"at"}, {"timestamp with time zone"}, false).Text("t"), "t.\"at\"::text");
  EXPECT_EQ(KeyShape({"n"}, {"numeric"}, true).Text("t"), "t.\"n\"::text");
}

TEST(KeyShapeTest, ACompositeKeyIsAJsonArrayAndARowValue) {
  const KeyShape key({"tenant", "at", "Id\"x"}, {"text", "timestamp with time zone", "bigint"},
                     true);
  EXPECT_TRUE(key.composite());
  EXPECT_EQ(key.Text("t"),
            "'[' || to_json(t.\"tenant\"::text)::text || ',' || "
            "to_json(rekey.timestamptz_key_text(t.\"at\"))::text || ',' || "
            "to_json(t.\"Id\"\"x\"::text)::text "
            "|| ']'");
  EXPECT_EQ(key.Row("t"), "ROW(t.\"tenant\", t.\"at\", t.\"Id\"\"x\")");
  EXPECT_EQ(key.OrderBy("t"), "t.\"tenant\", t.\"at\", t.\"Id\"\"x\"");
  EXPECT_EQ(key.Bound("$3"),
            "ROW((($3)::jsonb ->> 0)::text, (($3)::jsonb ->> 1)::timestamp with time zone, "
            "(($3)::jsonb ->> 2)::bigint)");
  EXPECT_EQ(key.AnyOf("t", "$4"),
            "ROW(t.\"tenant\", t.\"at\", t.\"Id\"\"x\") IN (SELECT ((k.k)::jsonb ->> 0)::text, "
            "((k.k)::jsonb ->> 1)::timestamp with time zone, ((k.k)::jsonb ->> 2)::bigint FROM "
            "unnest($4::text[]) AS k(k))");
  EXPECT_EQ(key.ArrayType(), "text[]");
  EXPECT_EQ(key.LeadingBound("t", ">=", "$1"), " AND t.\"tenant\" >= (($1)::jsonb ->> 0)::text");
}

TEST(KeyShapeTest, OnlyACompositeKeyNeedsItsLeadingColumnBoundedForPruning) {
  EXPECT_EQ(KeyShape({"id"}, {"bigint"}, true).LeadingBound("t", ">=", "$1"), "");
  EXPECT_EQ(KeyShape({"at", "id"}, {"date", "bigint"}, true).LeadingBound("t", "<=", "$2"),
            " AND t.\"at\" <= (($2)::jsonb ->> 0)::date");
}

TEST(KeyShapeTest, AKeyNeedsOneTypePerColumn) {
  EXPECT_THROW(KeyShape({}, {}, true), StateError);
  EXPECT_THROW(KeyShape({"a", "b"}, {"text"}, true), StateError);
}

}  // namespace
}  // namespace rekey::jobs
