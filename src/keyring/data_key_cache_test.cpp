// The data-key cache's bounds from the environment (the cache itself: data_key_cache_pg_test).
#include <gtest/gtest.h>

#include <map>

#include "common/error.h"
#include "keyring/data_key_cache.h"

namespace rekey::keyring {
namespace {

TEST(CacheOptionsFromEnv, Table) {
  struct Case {
    std::map<std::string, std::string> env;
    std::optional<int64_t> ttl_seconds;  // nullopt: never expires
    size_t max_entries;
    bool config_error;
  };
  const std::vector<Case> cases = {
      {{}, 3600, 1000, false},
      {{{"REKEY_KEY_CACHE_TTL_SECONDS", "5"}}, 5, 1000, false},
      {{{"REKEY_KEY_CACHE_TTL_SECONDS", "0"}}, std::nullopt, 1000, false},
      {{{"REKEY_KEY_CACHE_MAX_ENTRIES", "1"}}, 3600, 1, false},
      {{{"REKEY_KEY_CACHE_MAX_ENTRIES", "0"}}, 3600, 0, false},
      {{{"REKEY_KEY_CACHE_TTL_SECONDS", ""}}, 3600, 1000, false},
      {{{"REKEY_KEY_CACHE_TTL_SECONDS", "-1"}}, 0, 0, true},
      {{{"REKEY_KEY_CACHE_TTL_SECONDS", "5s"}}, 0, 0, true},
      {{{"REKEY_KEY_CACHE_MAX_ENTRIES", "many"}}, 0, 0, true},
  };
  for (const Case& c : cases) {
    auto getenv = [&](const char* name) -> std::optional<std::string> {
      auto it = c.env.find(name);
      return it == c.env.end() ? std::nullopt : std::optional<std::string>(it->second);
    };
    std::string label =
        c.env.empty() ? "(empty)" : c.env.begin()->first + "=" + c.env.begin()->second;
    if (c.config_error) {
      EXPECT_THROW(CacheOptionsFromEnv(getenv), ConfigError) << label;
      continue;
    }
    CacheOptions o = CacheOptionsFromEnv(getenv);
    EXPECT_EQ(o.ttl.has_value(), c.ttl_seconds.has_value()) << label;
    if (o.ttl && c.ttl_seconds) {
      EXPECT_EQ(o.ttl->count(), *c.ttl_seconds) << label;
    }
    EXPECT_EQ(o.max_entries, c.max_entries) << label;
  }
}

}  // namespace
}  // namespace rekey::keyring
