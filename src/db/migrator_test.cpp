// The rules sql/README.md sets for the embedded schema, checked over the files the binary carries:
// every function, view and trigger of the rekey schema is defined in exactly one file, never in a
// migration, and re-runnably, so `rekey migrate` can apply a definition file again.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "db/embedded_sql.h"

namespace rekey::db {
namespace {

struct Definition {
  std::string kind;  // FUNCTION, VIEW or TRIGGER
  std::string name;  // "rekey.claim_batch", or "audit_seal ON rekey.audit" for a trigger
  std::string file;
  std::string statement;  // from CREATE to the name
};

// Comment lines removed, so a contract that mentions "CREATE FUNCTION" is not a definition.
std::string WithoutComments(std::string_view text) {
  static const std::regex kComment("--[^\n]*");
  return std::regex_replace(std::string(text), kComment, "");
}

std::vector<Definition> DefinitionsIn(const std::string& file, std::string_view text) {
  static const std::regex kCreate(
      "^[ \t]*CREATE[ \t\n]+(OR[ \t\n]+REPLACE[ \t\n]+)?(CONSTRAINT[ \t\n]+)?(FUNCTION|VIEW|"
      "TRIGGER)[ \t\n]+([A-Za-z0-9_.\"]+)([^;]*?[ \t\n]ON[ \t\n]+([A-Za-z0-9_.\"]+))?",
      std::regex::icase | std::regex::multiline);
  std::vector<Definition> found;
  std::string body = WithoutComments(text);
  for (std::sregex_iterator it(body.begin(), body.end(), kCreate), end; it != end; ++it) {
    const std::smatch& m = *it;
    std::string kind = m[3].str();
    for (char& c : kind) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    std::string name = m[4].str();
    if (kind == "TRIGGER") name += " ON " + m[6].str();
    found.push_back({kind, name, file, m[0].str().substr(0, m[0].str().find(m[4].str()))});
  }
  return found;
}

std::string ReadSourceFile(const std::string& path) {
  std::ifstream in(std::string(REKEY_SOURCE_DIR) + "/" + path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(EmbeddedSchemaTest, NoMigrationDefinesAFunctionViewOrTrigger) {
  for (const EmbeddedFile& f : EmbeddedMigrations()) {
    for (const Definition& d : DefinitionsIn(std::string(f.name), f.content)) {
      ADD_FAILURE() << "migrations/" << f.name << " defines " << d.kind << " " << d.name
                    << "; it belongs in sql/schema (sql/README.md)";
    }
  }
}

TEST(EmbeddedSchemaTest, EachNameIsDefinedInExactlyOneFile) {
  std::vector<Definition> all;
  for (const EmbeddedFile& f : EmbeddedDefinitions()) {
    for (Definition& d : DefinitionsIn("sql/schema/" + std::string(f.name), f.content)) {
      all.push_back(std::move(d));
    }
  }
  // Operators run sql/roles.sql themselves; a function it defines must not be restated either.
  std::string roles = ReadSourceFile("sql/roles.sql");
  ASSERT_FALSE(roles.empty()) << "cannot read sql/roles.sql under " << REKEY_SOURCE_DIR;
  for (Definition& d : DefinitionsIn("sql/roles.sql", roles)) all.push_back(std::move(d));
  // About a hundred objects: a parser that finds none would pass the check below vacuously.
  EXPECT_GT(all.size(), 90u);
  std::map<std::string, std::string> where;
  for (const Definition& d : all) {
    auto [it, inserted] = where.emplace(d.kind + " " + d.name, d.file);
    EXPECT_TRUE(inserted) << d.kind << " " << d.name << " is defined in " << it->second
                          << " and again in " << d.file << "; keep its one current definition";
  }
}

TEST(EmbeddedSchemaTest, DefinitionsAreReRunnable) {
  for (const EmbeddedFile& f : EmbeddedDefinitions()) {
    std::string text = WithoutComments(f.content);
    for (const Definition& d : DefinitionsIn(std::string(f.name), f.content)) {
      bool replaces =
          std::regex_search(d.statement, std::regex("OR[ \t\n]+REPLACE", std::regex::icase));
      if (std::regex_search(d.statement, std::regex("CONSTRAINT", std::regex::icase))) {
        // PostgreSQL has no CREATE OR REPLACE CONSTRAINT TRIGGER: the file drops it first.
        std::string trigger = d.name.substr(0, d.name.find(' '));
        EXPECT_TRUE(std::regex_search(text, std::regex("DROP[ \t\n]+TRIGGER[ \t\n]+IF[ \t\n]+"
                                                       "EXISTS[ \t\n]+" +
                                                           trigger + "[ \t\n]",
                                                       std::regex::icase)))
            << f.name << ": constraint trigger " << d.name << " needs DROP TRIGGER IF EXISTS";
      } else {
        EXPECT_TRUE(replaces) << f.name << ": " << d.kind << " " << d.name
                              << " must be CREATE OR REPLACE (the file is applied again when it "
                                 "changes, and a DROP would lose the object's grants)";
      }
    }
  }
}

TEST(EmbeddedSchemaTest, DefinitionFilesAreNumberedSubsystems) {
  static const std::regex kName("^[0-9]{2}_[a-z0-9_]+\\.sql$");
  ASSERT_FALSE(EmbeddedDefinitions().empty());
  for (const EmbeddedFile& f : EmbeddedDefinitions()) {
    EXPECT_TRUE(std::regex_match(std::string(f.name), kName)) << f.name;
  }
}

}  // namespace
}  // namespace rekey::db
