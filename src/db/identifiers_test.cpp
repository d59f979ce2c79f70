#include "db/identifiers.h"

#include <gtest/gtest.h>

namespace rekey::db {
namespace {

TEST(QuoteIdent, AlwaysQuotesAndDoublesQuotes) {
  struct Case {
    std::string in, out;
  } cases[] = {
      {"token", "\"token\""}, {"Token", "\"Token\""},
      {"a\"b", "\"a\"\"b\""}, {"x\"; DROP TABLE t; --", "\"x\"\"; DROP TABLE t; --\""},
      {"", "\"\""},
  };
  for (const auto& c : cases) EXPECT_EQ(QuoteIdent(c.in), c.out);
}

TEST(TextArrayLiteral, EscapesQuotesAndBackslashes) {
  EXPECT_EQ(TextArrayLiteral({}), "{}");
  EXPECT_EQ(TextArrayLiteral({"a", "b c"}), "{\"a\",\"b c\"}");
  EXPECT_EQ(TextArrayLiteral({"q\"x", "back\\slash", "{}", "NULL"}),
            "{\"q\\\"x\",\"back\\\\slash\",\"{}\",\"NULL\"}");
}

}  // namespace
}  // namespace rekey::db
