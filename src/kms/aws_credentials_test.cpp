#include "kms/aws_credentials.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "common/error.h"

namespace rekey::kms {
namespace {

constexpr char kGood[] =
    R"(<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult><Credentials>
    <SessionToken>tok&amp;en/+=</SessionToken><SecretAccessKey>sec</SecretAccessKey>
    <Expiration>2030-01-02T03:04:05Z</Expiration><AccessKeyId>ASIAX</AccessKeyId>
  </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>)";

TEST(StsResponse, ParsesCredentials) {
  AwsCredentials c = ParseAssumeRoleWithWebIdentityResponse(kGood);
  EXPECT_EQ(c.access_key_id, "ASIAX");
  EXPECT_EQ(c.secret_access_key, "sec");
  EXPECT_EQ(c.session_token, "tok&en/+=");
  ASSERT_TRUE(c.expiration);
  EXPECT_EQ(std::chrono::system_clock::to_time_t(*c.expiration), 1893553445);
}

TEST(StsResponse, EveryTruncationIsRefusedCleanly) {
  const std::string good = kGood;
  size_t last = good.rfind("</Credentials>");
  for (size_t n = 0; n < last; n++) {
    EXPECT_THROW(ParseAssumeRoleWithWebIdentityResponse(good.substr(0, n)), PermanentError) << n;
  }
}

TEST(StsResponse, ErrorResponseNamesTheCode) {
  try {
    ParseAssumeRoleWithWebIdentityResponse(
        "<ErrorResponse><Error><Code>InvalidIdentityToken</Code><Message>no</Message></Error>"
        "</ErrorResponse>");
    ADD_FAILURE();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("InvalidIdentityToken"), std::string::npos);
  }
}

TEST(Iso8601, Table) {
  struct Case {
    const char* text;
    int64_t epoch;  // -1: malformed
  };
  const Case cases[] = {{"1970-01-01T00:00:00Z", 0},
                        {"2030-01-02T03:04:05Z", 1893553445},
                        {"2030-01-02T03:04:05.123Z", 1893553445},
                        {"2030-01-02T03:04:05+00:00", 1893553445},
                        {"2030-01-02T03:04:05", -1},
                        {"2030-13-02T03:04:05Z", -1},
                        {"2030-01-02 03:04:05Z", -1},
                        {"", -1},
                        {"garbage", -1},
                        {"2262-01-01T00:00:00Z", 9214646400},
                        // Found by tests/fuzz/aws_kms_fuzz: beyond system_clock's range the
                        // conversion overflowed (undefined behaviour) instead of failing.
                        {"4198-05-01T12:00:00.123Z", -1},
                        {"9999-12-31T23:59:59Z", -1},
                        {"-999-01-01T00:00:00Z", -1},
                        {"1969-12-31T23:59:59Z", -1}};
  for (const Case& c : cases) {
    auto t = ParseIso8601Utc(c.text);
    if (c.epoch < 0) {
      EXPECT_FALSE(t) << c.text;
    } else {
      ASSERT_TRUE(t) << c.text;
      EXPECT_EQ(std::chrono::system_clock::to_time_t(*t), c.epoch) << c.text;
    }
  }
}

class StsFake : public HttpTransport {
 public:
  HttpResponse Post(const HttpRequest& request) override {
    bodies.push_back(request.body);
    char expiry[32];
    std::time_t t = std::chrono::system_clock::to_time_t(expires);
    std::strftime(expiry, sizeof expiry, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    std::string n = std::to_string(bodies.size());
    return HttpResponse{200,
                        {},
                        "<X><Credentials><AccessKeyId>ASIA" + n +
                            "</AccessKeyId><SecretAccessKey>s" + n +
                            "</SecretAccessKey><SessionToken>t</SessionToken><Expiration>" +
                            expiry + "</Expiration></Credentials></X>"};
  }
  std::vector<std::string> bodies;
  std::chrono::system_clock::time_point expires;
};

TEST(WebIdentity, RefreshesFiveMinutesBeforeExpiryAndRereadsTheToken) {
  std::string file = ::testing::TempDir() + "/rekey-web-identity-token";
  std::ofstream(file) << "jwt-one\n";
  StsFake sts;
  auto now = std::chrono::system_clock::from_time_t(1700000000);
  sts.expires = now + std::chrono::hours(1);
  WebIdentityCredentialsProvider p("arn:aws:iam::1:role/r", file, "rekey", "http://sts", sts, "",
                                   [&] { return now; });
  EXPECT_EQ(p.Get().access_key_id, "ASIA1");
  now += std::chrono::minutes(54);  // 6 minutes left: still good
  EXPECT_EQ(p.Get().access_key_id, "ASIA1");
  std::ofstream(file) << "jwt-two\n";
  now += std::chrono::minutes(2);  // 4 minutes left: refresh
  sts.expires = now + std::chrono::hours(1);
  EXPECT_EQ(p.Get().access_key_id, "ASIA2");
  ASSERT_EQ(sts.bodies.size(), 2u);
  EXPECT_NE(sts.bodies[0].find("WebIdentityToken=jwt-one"), std::string::npos) << sts.bodies[0];
  EXPECT_NE(sts.bodies[1].find("WebIdentityToken=jwt-two"), std::string::npos) << sts.bodies[1];
  EXPECT_NE(sts.bodies[1].find("RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr"), std::string::npos);
  p.Invalidate();
  EXPECT_EQ(p.Get().access_key_id, "ASIA3");
  std::remove(file.c_str());
  p.Invalidate();
  EXPECT_THROW(p.Get(), ConfigError);
}

TEST(CredentialsFromEnv, Choices) {
  std::map<std::string, std::string> env;
  GetenvFn getenv = [&](const char* n) -> std::optional<std::string> {
    auto it = env.find(n);
    return it == env.end() ? std::nullopt : std::optional<std::string>(it->second);
  };
  StsFake sts;
  EXPECT_THROW(MakeAwsCredentialsProvider(getenv, sts, "us-east-1"), ConfigError);
  env["AWS_ACCESS_KEY_ID"] = "AKID";
  EXPECT_THROW(MakeAwsCredentialsProvider(getenv, sts, "us-east-1"), ConfigError);
  env["AWS_SECRET_ACCESS_KEY"] = "s";
  env["AWS_SESSION_TOKEN"] = "tok";
  auto p = MakeAwsCredentialsProvider(getenv, sts, "us-east-1");
  EXPECT_EQ(p->Get().session_token, "tok");
  env.clear();
  env["AWS_ROLE_ARN"] = "arn:aws:iam::1:role/r";
  env["AWS_WEB_IDENTITY_TOKEN_FILE"] = "/nonexistent";
  auto w = MakeAwsCredentialsProvider(getenv, sts, "us-east-1");
  EXPECT_NE(w->Source().find("web identity"), std::string::npos);
}

}  // namespace
}  // namespace rekey::kms
