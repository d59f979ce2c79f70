// tests/kms/aws_kms_server.py as a child process of a test, and the environment that points the
// rekey binary at it.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "harness/process.h"
#include "kms/http_transport.h"

namespace rekey::testing {

constexpr char kAwsTestAccessKey[] = "AKIDREKEYTEST";
constexpr char kAwsTestSecretKey[] = "rekey/test/secret/key+0123456789";
constexpr char kAwsTestRegion[] = "us-east-1";

class AwsKmsTestServer {
 public:
  // Starts the server with `extra_args` (e.g. {"--key", "alias/rekey"}); throws if it does not
  // come up.
  explicit AwsKmsTestServer(const std::vector<std::string>& extra_args) {
    dir_ = MakeTempDir("rekey-awskms-");
    std::string port_file = dir_ + "/port";
    std::vector<std::string> argv = {"/usr/bin/python3",
                                     std::string(REKEY_SOURCE_DIR) + "/tests/kms/aws_kms_server.py",
                                     "--port-file", port_file};
    argv.insert(argv.end(), extra_args.begin(), extra_args.end());
    server_ = std::make_unique<ChildProcess>(argv);
    const int port = WaitForPortFile(port_file, 20000);
    if (port <= 0) throw std::runtime_error("aws_kms_server.py did not start");
    url_ = "http://127.0.0.1:" + std::to_string(port);
  }
  ~AwsKmsTestServer() {
    server_.reset();
    RunProcess({"rm", "-rf", dir_});
  }

  const std::string& url() const { return url_; }
  const std::string& dir() const { return dir_; }

  // POST /__control; returns the reply.
  nlohmann::json Control(const nlohmann::json& cmd) { return Call("/__control", cmd.dump()); }
  // {"calls": {op: n}, "errors": {type: n}, ...}
  nlohmann::json Stats() { return Call("/__stats", ""); }
  int64_t Calls(const std::string& op) { return Count(Stats(), "calls", op); }
  static int64_t Count(const nlohmann::json& stats, const char* group, const std::string& name) {
    return stats[group].contains(name) ? stats[group][name].get<int64_t>() : 0;
  }

  // The environment for a rekey process using this server with static credentials, and nothing
  // from the caller's environment that could change the outcome.
  EnvOverrides Env(const std::string& key = "alias/rekey") const {
    return {{"AWS_REGION", kAwsTestRegion},
            {"AWS_DEFAULT_REGION", std::nullopt},
            {"REKEY_AWS_KMS_KEY_ID", key},
            {"AWS_ENDPOINT_URL_KMS", url_},
            {"AWS_ENDPOINT_URL_STS", url_},
            {"AWS_ACCESS_KEY_ID", kAwsTestAccessKey},
            {"AWS_SECRET_ACCESS_KEY", kAwsTestSecretKey},
            {"AWS_SESSION_TOKEN", std::nullopt},
            {"AWS_ROLE_ARN", std::nullopt},
            {"AWS_WEB_IDENTITY_TOKEN_FILE", std::nullopt},
            {"AWS_PROFILE", std::nullopt},
            {"AWS_CA_BUNDLE", std::nullopt},
            {"REKEY_MASTER_KEY_FILE", std::nullopt},
            {"DATABASE_URL", std::nullopt}};
  }

 private:
  nlohmann::json Call(const std::string& path, const std::string& body) {
    kms::HttpRequest r;
    r.url = url_ + path;
    r.body = body;
    kms::HttpResponse resp = transport_.Post(r);
    EXPECT_EQ(resp.status, 200) << path << ": " << resp.body;
    return nlohmann::json::parse(resp.body);
  }

  std::string dir_;
  std::string url_;
  std::unique_ptr<ChildProcess> server_;
  kms::CurlTransport transport_;
};

// Applies `overrides` on top of `base`.
inline EnvOverrides With(EnvOverrides base, const EnvOverrides& overrides) {
  for (const auto& [k, v] : overrides) base[k] = v;
  return base;
}

}  // namespace rekey::testing
