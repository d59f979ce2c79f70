#include "db/conninfo.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <optional>
#include <string>

namespace rekey::db {
namespace {

struct RedactCase {
  std::string input;
  std::string want;
  std::string secret;  // must not survive redaction; empty if there is none
};

const RedactCase kRedactCases[] = {
    {"postgresql://alice:s3cret@db.example:5432/app", "postgresql://alice:***@db.example:5432/app",
     "s3cret"},
    {"postgres://alice:s3cret@db/app", "postgres://alice:***@db/app", "s3cret"},
    {"POSTGRESQL://alice:s3cret@db/app", "POSTGRESQL://alice:***@db/app", "s3cret"},
    {"postgresql://alice@db:5432/app", "postgresql://alice@db:5432/app", ""},
    {"postgresql://db/app", "postgresql://db/app", ""},
    {"postgresql://alice:@db/app", "postgresql://alice:***@db/app", ""},
    {"postgresql://alice:p%40ss%2Fw%3Ard@db/app", "postgresql://alice:***@db/app", "p%40ss"},
    // An unencoded '@' in the password: libpq would reject it, but it is still secret.
    {"postgresql://alice:p@ss@db/app", "postgresql://alice:***@db/app", "p@ss"},
    {"postgresql://alice@db/app?sslmode=require&password=hunter2",
     "postgresql://alice@db/app?sslmode=require&password=***", "hunter2"},
    {"postgresql://db/app?password=hunter2&sslmode=require",
     "postgresql://db/app?password=***&sslmode=require", "hunter2"},
    {"postgresql://u:one@db/app?password=two", "postgresql://u:***@db/app?password=***", "two"},
    {"postgresql://u:one@db/app?passwordx=visible", "postgresql://u:***@db/app?passwordx=visible",
     "one"},
    {"postgresql://u:one@h1:5432,h2:5433/app", "postgresql://u:***@h1:5432,h2:5433/app", "one"},
    {"host=db user=alice password=s3cret dbname=app", "host=db user=alice password=*** dbname=app",
     "s3cret"},
    {"host=db password = s3cret dbname=app", "host=db password = *** dbname=app", "s3cret"},
    {"password=s3cret", "password=***", "s3cret"},
    {"host=db password='with spaces' dbname=app", "host=db password=*** dbname=app", "with spaces"},
    {R"(host=db password='it\'s \\ secret' dbname=app)", "host=db password=*** dbname=app",
     "secret"},
    {R"(host=db password=back\ slash dbname=app)", "host=db password=*** dbname=app", "slash"},
    {"host=db password='' dbname=app", "host=db password=*** dbname=app", ""},
    {"host=db user=alice dbname=app", "host=db user=alice dbname=app", ""},
    {"host=db passfile=/home/a/.pgpass", "host=db passfile=/home/a/.pgpass", ""},
    {"", "", ""},
};

TEST(RedactConnInfoTest, Table) {
  for (const RedactCase& c : kRedactCases) {
    std::string got = RedactConnInfo(c.input);
    EXPECT_EQ(got, c.want) << "input: " << c.input;
    if (!c.secret.empty()) {
      EXPECT_EQ(got.find(c.secret), std::string::npos) << "input: " << c.input;
    }
  }
}

TEST(PasswordsInTest, DecodesEveryForm) {
  EXPECT_EQ(PasswordsIn("postgresql://u:p%40ss@h/d"), std::vector<std::string>{"p@ss"});
  EXPECT_EQ(PasswordsIn("postgresql://u@h/d?password=a%20b"), std::vector<std::string>{"a b"});
  EXPECT_EQ(PasswordsIn(R"(host=h password='it\'s')"), std::vector<std::string>{"it's"});
  EXPECT_TRUE(PasswordsIn("host=h user=u").empty());
  EXPECT_TRUE(PasswordsIn("postgresql://u@h/d").empty());
}

struct SecretsCase {
  std::string text;
  std::string conninfo;
  std::string want;
};

const SecretsCase kSecretsCases[] = {
    {"FATAL: password authentication failed for user \"s3cret\"", "postgresql://s3cret:s3cret@h/d",
     "FATAL: password authentication failed for user \"***\""},
    {"could not connect: postgresql://u:s3cret@h/d refused", "",
     "could not connect: postgresql://u:***@h/d refused"},
    // In free text an unquoted value runs to the next space: over-redacting is the safe side.
    {"bad option in 'host=h password=s3cret'", "", "bad option in 'host=h password=***"},
    {"echo p@ss and p%40ss", "postgresql://u:p%40ss@h/d", "echo *** and ***"},
    {"echo it's here", R"(password='it\'s')", "echo *** here"},
    {"nothing secret here", "host=h user=u", "nothing secret here"},
    {"a b c", "postgresql://u@h/d?password=a%20b", "*** c"},
};

TEST(RedactSecretsTest, Table) {
  for (const SecretsCase& c : kSecretsCases) {
    EXPECT_EQ(RedactSecrets(c.text, c.conninfo), c.want)
        << "text: " << c.text << " conninfo: " << c.conninfo;
  }
}

// Every password from 1 to 40 characters drawn from awkward characters, in every form, must
// vanish from a message that quotes the whole conninfo.
TEST(RedactSecretsTest, NoPasswordSurvivesInAnyForm) {
  const std::string alphabet = "aZ9 '\\@:/?&=%#\"";
  for (size_t len = 1; len <= 40; ++len) {
    std::string password;
    for (size_t i = 0; i < len; ++i) password.push_back(alphabet[(i * 7 + len) % alphabet.size()]);
    std::string quoted;
    for (char c : password) {
      if (c == '\'' || c == '\\') quoted.push_back('\\');
      quoted.push_back(c);
    }
    std::string kv = "host=h user=u password='" + quoted + "' dbname=d";
    ASSERT_EQ(PasswordsIn(kv), std::vector<std::string>{password}) << kv;
    std::string text = "error: " + password + " / " + kv;
    std::string redacted = RedactSecrets(text, kv);
    EXPECT_EQ(redacted.find(password), std::string::npos) << redacted;
    EXPECT_EQ(RedactConnInfo(kv), "host=h user=u password=*** dbname=d");
  }
}

// Found by tests/fuzz/job_fuzz (a timeout): each spelling of a password such as "*" used to be
// replaced in the output of the previous replacement, so every mask ("***") was split again and
// the text tripled per spelling -- exponential in the number of passwords.
TEST(RedactSecretsTest, MasksAreNeverRedactedAgain) {
  std::string kv = "host=h";
  for (int i = 0; i < 8; ++i) kv += " password=*";
  const std::string redacted = RedactSecrets("error: * and **", kv);
  EXPECT_EQ(redacted, "error: *** and ******");
  // The longest spelling wins where several match.
  EXPECT_EQ(RedactSecrets("pw=ab, then: ab", "password=ab password=b"), "pw=***, then: ***");
}

class ResolveConnInfoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* v = getenv("DATABASE_URL");
    if (v != nullptr) saved_ = v;
  }
  void TearDown() override {
    if (saved_) {
      setenv("DATABASE_URL", saved_->c_str(), 1);
    } else {
      unsetenv("DATABASE_URL");
    }
  }
  std::optional<std::string> saved_;
};

TEST_F(ResolveConnInfoTest, Precedence) {
  struct Case {
    std::string flag;
    std::optional<std::string> env;
    std::string want;
  };
  const Case cases[] = {
      {"postgresql://flag/db", "postgresql://env/db", "postgresql://flag/db"},
      {"host=flag", std::nullopt, "host=flag"},
      {"", "postgresql://env/db", "postgresql://env/db"},
      {"", std::nullopt, ""},
      {"", "", ""},
  };
  for (const Case& c : cases) {
    if (c.env) {
      setenv("DATABASE_URL", c.env->c_str(), 1);
    } else {
      unsetenv("DATABASE_URL");
    }
    EXPECT_EQ(ResolveConnInfo(c.flag), c.want) << "flag: " << c.flag;
  }
}

}  // namespace
}  // namespace rekey::db
