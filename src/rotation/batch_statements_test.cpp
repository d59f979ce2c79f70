// The statements of the batch path as built from a job's shape, without a database: the exact
// text for the common shapes (what PostgreSQL plans per batch must not drift unnoticed: see
// bench/README.md), and the parameters each batch passes in the order the text numbers them.
#include "rotation/batch_statements.h"

#include <gtest/gtest.h>

#include <string>

#include "jobs/stage_bucket.h"

namespace rekey::rotation {
namespace {

using crypto::CodecKind;

jobs::JobDefinition Job(const std::string& pk_type, std::vector<jobs::JobColumn> columns) {
  jobs::JobDefinition job;
  job.job_id = 7;
  job.schema_name = "public";
  job.table_name = "cards";
  job.pk_column = "id";
  job.pk_type = pk_type;
  job.columns = std::move(columns);
  job.key_map = {{1, 2}};
  return job;
}

const char kTinkNeedsWork[] =
    "substring(\"token\" from 1 for 5) = ANY($1::bytea[]) OR substring(\"token\" from 1 for 1) <> "
    "'\\x01'::bytea OR octet_length(\"token\") < 5";

TEST(BatchStatementsTest, BigintKeyTinkColumn) {
  const jobs::JobDefinition job = Job("bigint", {{"token", CodecKind::kTink}});
  const BatchStatements statements(job);
  EXPECT_EQ(
      statements.Select(kNoBounds),
      std::string("SELECT t.\"id\"::text AS row_id, t.\"token\" AS c0 FROM \"public\".\"cards\" "
                  "AS t WHERE (") +
          kTinkNeedsWork +
          ") AND $1::bytea[] IS NOT NULL AND $2::bigint[] IS NOT NULL ORDER BY t.\"id\" "
          "LIMIT $3::bigint");
  // The compare-and-swap: written only where the value is still the one read, a large one
  // compared by its digest.
  const std::string same_token =
      "(CASE WHEN v.h0 IS NULL THEN t.\"token\" IS NOT DISTINCT FROM v.o0 ELSE "
      "sha256(t.\"token\") = v.h0 END)";
  EXPECT_EQ(statements.update(),
            "UPDATE \"public\".\"cards\" AS t SET \"token\" = coalesce(v.c0, t.\"token\") FROM "
            "(SELECT unnest($1::bigint[]) AS row_id, unnest($2::bytea[]) AS c0, "
            "unnest($3::bytea[]) AS o0, unnest($4::bytea[]) AS h0) AS v WHERE t.\"id\" = "
            "v.row_id AND " +
                same_token + " RETURNING t.\"id\"::text AS row_id");
  EXPECT_EQ(statements.still_as_read(),
            "SELECT t.\"id\"::text AS row_id FROM \"public\".\"cards\" AS t, (SELECT "
            "unnest($1::bigint[]) AS row_id, unnest($2::bytea[]) AS c0, unnest($3::bytea[]) AS "
            "o0, unnest($4::bytea[]) AS h0) AS v WHERE t.\"id\" = v.row_id AND " +
                same_token);
}

TEST(BatchStatementsTest, SizesReadTheSameRowsUnlockedAndSumTheirStoredBytes) {
  const jobs::JobDefinition job =
      Job("bigint", {{"token", CodecKind::kTink}, {"note", CodecKind::kTink}});
  const BatchStatements statements(job);
  const std::string sizes = statements.Sizes(kLo | kHi);
  const std::string select = statements.Select(kLo | kHi);
  EXPECT_EQ(
      sizes.substr(0, sizes.find(" FROM ")),
      "SELECT (coalesce(pg_column_size(t.\"token\"), 0) + coalesce(pg_column_size(t.\"note\"), "
      "0))::bigint AS value_bytes")
      << sizes;
  // Everything after the select list is the SELECT's.
  EXPECT_EQ(sizes.substr(sizes.find(" FROM ")), select.substr(select.find(" FROM ")));
}

TEST(BatchStatementsTest, BoundsAreNumberedBeforeTheKeyParameters) {
  const jobs::JobDefinition job = Job("uuid", {{"token", CodecKind::kTink}});
  const BatchStatements statements(job);
  const std::string select = statements.Select(kLo | kHi | kBuckets);
  EXPECT_NE(
      select.find(" AND t.\"id\" >= $1::uuid AND t.\"id\" < $2::uuid AND int4range($3::integer, "
                  "$4::integer) @> rekey.stage_bucket(t.\"id\"::text) AND $5::bytea[] IS NOT "
                  "NULL AND $6::bigint[] IS NOT NULL ORDER BY t.\"id\" LIMIT $7::bigint"),
      std::string::npos)
      << select;
  EXPECT_NE(select.find("= ANY($5::bytea[])"), std::string::npos) << select;
  const std::string resumed = statements.Select(kAfter | kKeys);
  EXPECT_NE(
      resumed.find(" AND t.\"id\" > $1::uuid AND t.\"id\" = ANY ($2::uuid[]) AND $3::bytea[]"),
      std::string::npos)
      << resumed;
}

TEST(BatchStatementsTest, TextKeyRawColumnsWithKeyIdColumnAndScope) {
  jobs::JobDefinition job =
      Job("text", {{"card", CodecKind::kRaw}, {"Note \"x\"", CodecKind::kRaw}});
  job.key_id_column = "kid";
  job.scope_column = "tenant";
  job.scope_type = "integer";
  job.scope_value = "42";
  const BatchStatements statements(job);
  EXPECT_EQ(
      statements.Select(kHi),
      "SELECT t.\"id\"::text AS row_id, t.\"card\" AS c0, t.\"Note \"\"x\"\"\" AS c1, t.\"kid\" "
      "AS row_key_id FROM \"public\".\"cards\" AS t WHERE ((\"kid\" = ANY($4::bigint[]) AND "
      "\"card\" IS NOT NULL) OR (\"kid\" = ANY($4::bigint[]) AND \"Note \"\"x\"\"\" IS NOT "
      "NULL)) AND t.\"id\" < $1::text AND t.\"tenant\" = $2::integer AND $3::bytea[] IS NOT "
      "NULL AND $4::bigint[] IS NOT NULL ORDER BY t.\"id\" LIMIT $5::bigint");
  // Every rotated column and the key-id column must still hold what was read.
  EXPECT_EQ(
      statements.update(),
      "UPDATE \"public\".\"cards\" AS t SET \"card\" = coalesce(v.c0, t.\"card\"), \"Note "
      "\"\"x\"\"\" = coalesce(v.c1, t.\"Note \"\"x\"\"\"), \"kid\" = coalesce(v.kid, t.\"kid\") "
      "FROM (SELECT unnest($1::text[]) AS row_id, unnest($2::bytea[]) AS c0, "
      "unnest($3::bytea[]) AS o0, unnest($4::bytea[]) AS h0, unnest($5::bytea[]) AS c1, "
      "unnest($6::bytea[]) AS o1, unnest($7::bytea[]) AS h1, unnest($8::bigint[]) AS kid, "
      "unnest($9::bigint[]) AS okid) AS v WHERE t.\"id\" = v.row_id AND (CASE WHEN v.h0 IS "
      "NULL THEN t.\"card\" IS NOT DISTINCT FROM v.o0 ELSE sha256(t.\"card\") = v.h0 END) AND "
      "(CASE WHEN v.h1 IS NULL THEN t.\"Note \"\"x\"\"\" IS NOT DISTINCT FROM v.o1 ELSE "
      "sha256(t.\"Note \"\"x\"\"\") = v.h1 END) AND t.\"kid\" IS NOT DISTINCT FROM v.okid "
      "RETURNING t.\"id\"::text AS row_id");
}

TEST(BatchStatementsTest, TransitColumnsCompareVersionsAndWriteText) {
  jobs::JobDefinition job = Job("bigint", {{"secret", CodecKind::kVaultTransit}});
  job.key_map.clear();
  job.transit_key_ref = "transit/keys/app";
  job.transit_min_version = 3;
  const BatchStatements statements(job);
  EXPECT_NE(statements.Select(kNoBounds).find(
                "WHERE (coalesce(rekey.transit_version(\"secret\"), 0) < ($2::bigint[])[1]) "
                "AND $1::bytea[] IS NOT NULL"),
            std::string::npos);
  EXPECT_NE(statements.update().find("unnest($2::text[]) AS c0"), std::string::npos);
}

TEST(BatchStatementsTest, DirectionLiteralsNameSourcePrefixesAndTargets) {
  const Direction d = MakeDirection({{1, 2}, {258, 4}});
  EXPECT_EQ(d.source_prefixes_literal, "{\"\\\\x0100000001\",\"\\\\x0100000102\"}");
  EXPECT_EQ(d.source_ids_literal, "{1,258}");
  EXPECT_EQ(d.target_ids_literal, "{2,4}");
  EXPECT_EQ(MakeDirection({}).source_ids_literal, "{}");
}

TEST(BatchStatementsTest, SelectCallPassesParametersInTheTextsOrder) {
  jobs::JobDefinition job = Job("bigint", {{"token", CodecKind::kTink}});
  job.scope_column = "tenant";
  job.scope_type = "integer";
  job.scope_value = "42";
  const BatchStatements statements(job);
  const Direction d = MakeDirection(job.key_map);
  ClaimedBatch batch;
  batch.lo = "100";
  batch.hi = "200";
  batch.bucket_lo = 0;
  batch.bucket_hi = 2500;

  SelectCall call = statements.SelectFor(batch, {}, d, 1000);
  EXPECT_EQ(call.variant, kLo | kHi | kBuckets);
  EXPECT_EQ(call.params, (std::vector<std::string>{"100", "200", "0", "2500", "42",
                                                   d.source_prefixes_literal, "{1}", "1001"}));

  // Resuming after a checkpoint replaces the lower bound; planned keys replace the bucket test.
  BatchProgress progress;
  progress.resume_after = "150";
  progress.planned_keys = "{151,160}";
  call = statements.SelectFor(batch, progress, d, 10);
  EXPECT_EQ(call.variant, kAfter | kHi | kKeys);
  EXPECT_EQ(call.params, (std::vector<std::string>{"150", "200", "{151,160}", "42",
                                                   d.source_prefixes_literal, "{1}", "11"}));

  // The last stage takes every row that still needs work: no bucket test.
  batch.bucket_hi = jobs::kStageBuckets;
  EXPECT_EQ(statements.SelectFor(batch, {}, d, 1).variant, kLo | kHi);
  // A rollback keeps its bucket test and ignores planned keys (planned for the forward move).
  batch.rollback = true;
  progress.resume_after.reset();
  EXPECT_EQ(statements.SelectFor(batch, progress, d, 1).variant, kLo | kHi | kBuckets);
}

}  // namespace
}  // namespace rekey::rotation

namespace rekey::rotation {
namespace {

jobs::JobColumn Stored(const std::string& name, crypto::CodecKind codec,
                       crypto::TextEncoding encoding, std::vector<std::string> json_path = {}) {
  jobs::JobColumn column;
  column.name = name;
  column.codec = codec;
  column.encoding = encoding;
  column.json_path = std::move(json_path);
  return column;
}

// Stored forms (rotation/stored_form.h): a text column is selected by the head of its decoded
// value, written back as text; a JSON field is read with #>> beside the kind of value at its path,
// and written with jsonb_set on the locked row.
TEST(BatchStatementsTest, TextAndJsonForms) {
  const jobs::JobDefinition job =
      Job("bigint",
          {Stored("token", CodecKind::kTink, crypto::TextEncoding::kBase64Url),
           Stored("doc", CodecKind::kTink, crypto::TextEncoding::kBase64, {"payment", "it's"})});
  const BatchStatements statements(job);
  const std::string select = statements.Select(kNoBounds);
  EXPECT_NE(select.find("(\"token\" IS NOT NULL AND (rekey.encoded_head(t.\"token\", "
                        "'base64url') IS NULL OR rekey.encoded_head(t.\"token\", 'base64url') = "
                        "ANY($1::bytea[]) OR substring(rekey.encoded_head(t.\"token\", "
                        "'base64url') from 1 for 1) <> '\\x01'::bytea))"),
            std::string::npos)
      << select;
  // The path's key is quoted as a literal, whatever it holds.
  EXPECT_NE(select.find(
                "(t.\"doc\" #>> E'{\"payment\",\"it''s\"}'::text[]) AS c1, CASE WHEN t.\"doc\" IS "
                "NOT NULL THEN coalesce(jsonb_typeof(t.\"doc\" #> "
                "E'{\"payment\",\"it''s\"}'::text[]), 'missing') END AS j1"),
            std::string::npos)
      << select;
  EXPECT_NE(select.find("<> 'string'"), std::string::npos) << select;
  EXPECT_EQ(statements.update(),
            "UPDATE \"public\".\"cards\" AS t SET \"token\" = coalesce(v.c0, t.\"token\"), \"doc\" "
            "= CASE WHEN v.c1 IS NULL THEN t.\"doc\" ELSE jsonb_set(t.\"doc\", "
            "E'{\"payment\",\"it''s\"}'::text[], to_jsonb(v.c1)) END FROM (SELECT "
            "unnest($1::bigint[]) AS row_id, unnest($2::text[]) AS c0, unnest($3::text[]) AS o0, "
            "unnest($4::text[]) AS c1, unnest($5::text[]) AS o1) AS v WHERE t.\"id\" = v.row_id "
            "AND t.\"token\" IS NOT DISTINCT FROM v.o0 AND ((t.\"doc\" #>> "
            "E'{\"payment\",\"it''s\"}'::text[]) IS NOT DISTINCT FROM v.o1 AND (v.o1 IS NULL OR "
            "CASE WHEN t.\"doc\" IS NOT NULL THEN coalesce(jsonb_typeof(t.\"doc\" #> "
            "E'{\"payment\",\"it''s\"}'::text[]), 'missing') END = 'string')) RETURNING "
            "t.\"id\"::text AS row_id")
      << "a JSON column is compared by the string at its path, not by the document";
}

// Fernet tokens name no key: every value is selected, and the rewriter leaves those under a
// target key alone.
TEST(BatchStatementsTest, FernetSelectsEveryValue) {
  const jobs::JobDefinition job =
      Job("bigint", {Stored("token", CodecKind::kFernet, crypto::TextEncoding::kBase64Url)});
  const std::string select = BatchStatements(job).Select(kNoBounds);
  EXPECT_NE(select.find("WHERE ((\"token\" IS NOT NULL))"), std::string::npos) << select;
}

}  // namespace
}  // namespace rekey::rotation
