// The vault-transit codec's pure pieces (transit_rewriter.h): which Transit keys fit a job, the
// derivation context of a value, and opening values without Vault (OpenBatch); and the aws-kms
// codec's opening without KMS (aws_kms_rewriter.h). The Vault and database parts are in
// tests/vault_codec_kms_test.cpp.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/error.h"
#include "rotation/aws_kms_rewriter.h"
#include "rotation/transit_rewriter.h"

namespace rekey::rotation {
namespace {

TEST(TransitCodecTest, KeyFitsOnlyWhenDerivationMatchesTheContext) {
  struct Case {
    bool derived;
    bool has_context;
    const char* error;  // nullptr: fits
  };
  const Case cases[] = {
      {true, true, nullptr},
      {false, false, nullptr},
      {true, false, "is derived"},
      {false, true, "is not derived"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "derived=" << c.derived << " context=" << c.has_context);
    if (!c.error) {
      EXPECT_NO_THROW(RequireTransitKeyFits("transit/keys/app", c.derived, c.has_context));
      continue;
    }
    try {
      RequireTransitKeyFits("transit/keys/app", c.derived, c.has_context);
      ADD_FAILURE() << "no error";
    } catch (const KeyError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(c.error), std::string::npos) << what;
      EXPECT_NE(what.find("transit/keys/app"), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
  }
}

TEST(TransitCodecTest, DerivationContextIsTheRenderedTemplateInBase64) {
  struct Case {
    const char* tmpl;  // "" = no template
    const char* pk;
    const char* rendered;  // "" = no context
  };
  const Case cases[] = {
      {"", "7", ""},
      {"{table}:{pk}", "7", "secrets:7"},
      {"{schema}.{table}.{column}/{pk}", "a b", "public.secrets.payload/a b"},
      {"{{fixed}}", "9", "{fixed}"},
  };
  for (const Case& c : cases) {
    jobs::JobDefinition job;
    job.schema_name = "public";
    job.table_name = "secrets";
    if (*c.tmpl) job.associated_data = crypto::AssociatedDataTemplate::Compile(c.tmpl);
    const std::string expected = *c.rendered
                                     ? Base64Encode(reinterpret_cast<const uint8_t*>(c.rendered),
                                                    std::string(c.rendered).size())
                                     : "";
    EXPECT_EQ(TransitDerivationContext(job, "payload", c.pk), expected) << c.tmpl;
  }
}

std::vector<crypto::StoredValue> TextValues(const std::vector<std::string>& texts) {
  std::vector<crypto::StoredValue> values;
  for (const std::string& t : texts) {
    values.push_back({reinterpret_cast<const uint8_t*>(t.data()), t.size(), "payload", "1", {}});
  }
  return values;
}

TEST(TransitCodecTest, OpeningReportsEachValuesVersionAndNoPlaintext) {
  jobs::JobDefinition job;
  job.transit_min_version = 3;
  TransitRewriter rewriter(job, []() -> TransitService& {
    throw std::logic_error("opening a value must not ask Vault");
  });
  EXPECT_TRUE(rewriter.reads_stored_text());
  // Vault's own ciphertext form: vault:v<version>:<base64 of nonce, ciphertext and tag>.
  const std::vector<std::string> texts = {"vault:v3:Sm9oYW5uZXM=", "vault:v12:Sm9oYW5uZXM=",
                                          "vault:v2:Sm9oYW5uZXM=", "vault:Sm9oYW5uZXM=", ""};
  const std::vector<crypto::StoredValue> values = TextValues(texts);
  std::vector<crypto::OpenedValue> out(values.size());
  rewriter.OpenBatch(values.data(), values.size(), out.data());
  for (size_t i : {0, 1}) {
    ASSERT_EQ(out[i].outcome, crypto::OpenOutcome::kOpened) << i;
    EXPECT_FALSE(out[i].has_plaintext);
  }
  EXPECT_EQ(out[0].key, 3u);
  EXPECT_EQ(out[1].key, 12u);
  EXPECT_EQ(out[2].outcome, crypto::OpenOutcome::kKeyMissing);
  EXPECT_EQ(out[2].error_class, "below_target_version");
  EXPECT_EQ(out[2].failed_key, 2u);
  for (size_t i : {3, 4}) {
    EXPECT_EQ(out[i].outcome, crypto::OpenOutcome::kPoison) << i;
    EXPECT_EQ(out[i].error_class, "bad_prefix") << i;
  }
}

TEST(AwsKmsCodecTest, OpeningLeavesABlobsKeyUnprovenWithoutAskingKms) {
  jobs::JobDefinition job;
  job.aws_kms_key_arn = "arn:aws:kms:eu-west-1:111122223333:key/target";
  AwsKmsRewriter rewriter(
      job, []() -> AwsKmsService& { throw std::logic_error("opening a value must not ask KMS"); },
      /*rollback=*/false);
  EXPECT_FALSE(rewriter.reads_stored_text());
  const std::vector<std::string> blobs = {std::string("\x01\x02\x02\x00x", 5), ""};
  const std::vector<crypto::StoredValue> values = TextValues(blobs);
  std::vector<crypto::OpenedValue> out(values.size());
  rewriter.OpenBatch(values.data(), values.size(), out.data());
  EXPECT_EQ(out[0].outcome, crypto::OpenOutcome::kUnproven);
  EXPECT_EQ(out[0].key_name, "") << "a blob names its key only to KMS";
  EXPECT_FALSE(out[0].has_plaintext);
  EXPECT_EQ(out[1].outcome, crypto::OpenOutcome::kPoison);
  EXPECT_EQ(out[1].error_class, "empty");
}

}  // namespace
}  // namespace rekey::rotation
