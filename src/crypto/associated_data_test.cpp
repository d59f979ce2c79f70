#include "crypto/associated_data.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "common/bytes.h"
#include "common/error.h"

namespace rekey::crypto {
namespace {

using nlohmann::json;

json LoadVectors() {
  std::ifstream in(REKEY_SOURCE_DIR "/tests/vectors/associated_data.json");
  EXPECT_TRUE(in.good()) << "run /usr/bin/python3 tests/vectors/generate.py";
  return json::parse(in);
}

TEST(AssociatedDataTest, DefaultIsEmpty) {
  AssociatedDataTemplate t;
  EXPECT_TRUE(t.empty());
  EXPECT_FALSE(t.uses_pk());
  EXPECT_EQ(t.text(), "");
  std::string out = "stale";
  t.Render("public", "t", "c", "1", &out);
  EXPECT_EQ(out, "");
}

TEST(AssociatedDataTest, VectorsRender) {
  const json doc = LoadVectors();
  ASSERT_GE(doc.at("valid").size(), 10u);
  for (const json& v : doc.at("valid")) {
    SCOPED_TRACE(v.at("name").get<std::string>());
    const std::string text = v.at("template").get<std::string>();
    AssociatedDataTemplate t = AssociatedDataTemplate::Compile(text);
    EXPECT_EQ(t.text(), text);
    EXPECT_EQ(t.uses_pk(), v.at("uses_pk").get<bool>());
    EXPECT_EQ(t.empty(), text.empty());
    std::string out = "previous contents are replaced";
    t.Render(v.at("schema").get<std::string>(), v.at("table").get<std::string>(),
             v.at("column").get<std::string>(), v.at("pk").get<std::string>(), &out);
    EXPECT_EQ(out, v.at("expected").get<std::string>());
    EXPECT_EQ(HexEncode(ToBytes(out)), v.at("expected_hex").get<std::string>());
  }
}

TEST(AssociatedDataTest, VectorsRejectInvalidTemplates) {
  const json doc = LoadVectors();
  ASSERT_GE(doc.at("invalid").size(), 10u);
  for (const json& v : doc.at("invalid")) {
    const std::string text = v.at("template").get<std::string>();
    SCOPED_TRACE(v.at("name").get<std::string>() + ": " + text);
    try {
      AssociatedDataTemplate::Compile(text);
      ADD_FAILURE() << "compiled";
    } catch (const ConfigError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(text), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
  }
}

TEST(AssociatedDataTest, ErrorNamesTheBadPlaceholder) {
  try {
    AssociatedDataTemplate::Compile("{schema}.{tabel}:{pk}");
    FAIL() << "compiled";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown placeholder {tabel}"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("offset 9"), std::string::npos) << e.what();
  }
}

// Every template over a small alphabet: compiling either succeeds or throws ConfigError, and a
// successful template renders without any unescaped brace left over from the grammar.
TEST(AssociatedDataTest, ExhaustiveSmallTemplatesNeverCrash) {
  const std::vector<std::string> atoms = {"{", "}", "x", "{pk}", "{table}"};
  std::vector<std::string> layer = {""};
  size_t compiled = 0, rejected = 0;
  for (int depth = 0; depth < 5; ++depth) {
    std::vector<std::string> next;
    for (const std::string& prefix : layer) {
      for (const std::string& a : atoms) next.push_back(prefix + a);
    }
    for (const std::string& text : next) {
      try {
        AssociatedDataTemplate t = AssociatedDataTemplate::Compile(text);
        ++compiled;
        std::string out;
        t.Render("S", "T", "C", "P", &out);
        // Rendered length: every "{{"/"}}" shrinks by one, placeholders become one letter.
        EXPECT_LE(out.size(), text.size()) << text;
        EXPECT_EQ(t.uses_pk(), out.find('P') != std::string::npos) << text;
      } catch (const ConfigError&) {
        ++rejected;
      }
    }
    layer = std::move(next);
  }
  EXPECT_GT(compiled, 0u);
  EXPECT_GT(rejected, 0u);
}

TEST(AssociatedDataTest, RenderDoesNotAllocateWithCapacity) {
  AssociatedDataTemplate t = AssociatedDataTemplate::Compile("{schema}.{table}.{column}:{pk}");
  std::string out;
  out.reserve(256);
  const char* data = out.data();
  const size_t capacity = out.capacity();
  for (int i = 0; i < 100; ++i) {
    t.Render("public", "payment_methods", "token", std::to_string(i), &out);
    EXPECT_EQ(out, "public.payment_methods.token:" + std::to_string(i));
  }
  EXPECT_EQ(out.data(), data);
  EXPECT_EQ(out.capacity(), capacity);
}

TEST(AssociatedDataTest, ConcurrentRender) {
  const AssociatedDataTemplate t = AssociatedDataTemplate::Compile("{table}:{pk}");
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int th = 0; th < 4; ++th) {
    threads.emplace_back([&t, &failures, th] {
      std::string out;
      for (int i = 0; i < 2000; ++i) {
        const std::string pk = std::to_string(th * 100000 + i);
        t.Render("s", "tbl", "c", pk, &out);
        if (out != "tbl:" + pk) ++failures[th];
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (int f : failures) EXPECT_EQ(f, 0);
}

TEST(AssociatedDataTest, CopiesAreIndependent) {
  AssociatedDataTemplate a = AssociatedDataTemplate::Compile("{pk}");
  AssociatedDataTemplate b = a;
  a = AssociatedDataTemplate::Compile("{table}");
  std::string out;
  b.Render("s", "t", "c", "9", &out);
  EXPECT_EQ(out, "9");
  EXPECT_TRUE(b.uses_pk());
  EXPECT_FALSE(a.uses_pk());
}

}  // namespace
}  // namespace rekey::crypto
