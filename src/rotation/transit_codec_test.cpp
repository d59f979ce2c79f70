// The vault-transit codec's pure pieces (transit_rewriter.h): which Transit keys fit a job, and the
// derivation context of a value. The Vault and database parts are in
// tests/vault_codec_kms_test.cpp.
#include <gtest/gtest.h>

#include "common/bytes.h"
#include "common/error.h"
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

}  // namespace
}  // namespace rekey::rotation
