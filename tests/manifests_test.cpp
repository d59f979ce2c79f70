// The Kubernetes manifests, alert rules and Dockerfile in jobs/ pass validation
// (scripts/validate-manifests.sh: Kubernetes API schemas from the npm package kubernetes-models,
// rekey's pod contract, `promtool check rules` and `promtool test rules`), and the validation
// catches broken ones. Needs the npm registry on first run (the packages are cached in the build
// directory afterwards) and Debian's prometheus package (installed by the script if missing).
// Hence its ctest label network, not unit (REKEY_NETWORK_TESTS in CMakeLists.txt, docs/testing.md).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "harness/process.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;

ProcessResult Validate(const std::string& dir) {
  const std::string tools = std::filesystem::current_path().string() + "/k8s-tools";
  return RunProcess({std::string(REKEY_SOURCE_DIR) + "/scripts/validate-manifests.sh", dir},
                    {{"REKEY_K8S_TOOLS", tools}}, "", 600);
}

void Write(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

TEST(Manifests, TheShippedManifestsRulesAndDockerfileAreValid) {
  ProcessResult r = Validate(std::string(REKEY_SOURCE_DIR) + "/jobs");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  for (const char* line : {"ok: batch/v1 Job rekey-rotate", "ok: batch/v1 CronJob rekey-rotate-due",
                           "ok: batch/v1 CronJob rekey-work", "ok: v1 ServiceAccount rekey",
                           "ok: apps/v1 Deployment rekey-exporter", "0 problems",
                           "SUCCESS: 10 rules found", "ok: Dockerfile"}) {
    EXPECT_THAT(r.out + r.err, HasSubstr(line));
  }
}

TEST(Manifests, BrokenManifestsAndRulesAreRejected) {
  const std::string dir = MakeTempDir("rekey-bad-manifests-");
  // A schema violation, and a worker Job that breaks rekey's pod contract.
  Write(dir + "/job.yaml", R"(apiVersion: batch/v1
kind: Job
metadata:
  name: bad-type
spec:
  parallelism: four
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: rekey
          image: rekey:1
---
apiVersion: batch/v1
kind: Job
metadata:
  name: bad-contract
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 5
      containers:
        - name: rekey
          image: registry.example.com/rekey:1
          args: ["work", "--all", "--listen", "0.0.0.0:9090"]
          readinessProbe:
            httpGet: {path: /metrics, port: 9090}
)");
  Write(dir + "/alerts.yaml", R"(groups:
  - name: broken
    rules:
      - alert: Broken
        expr: sum(rate(rekey_rows_reencrypted_total[5m]) > 
)");
  ProcessResult r = Validate(dir);
  std::filesystem::remove_all(dir);
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  const std::string out = r.out + r.err;
  EXPECT_THAT(out, HasSubstr("Job bad-type: schema: data/spec/parallelism must be integer"));
  EXPECT_THAT(out, HasSubstr("Job bad-contract: set activeDeadlineSeconds"));
  EXPECT_THAT(out, HasSubstr("livenessProbe must GET /healthz"));
  EXPECT_THAT(out, HasSubstr("readinessProbe must GET /readyz"));
  EXPECT_THAT(out, HasSubstr("terminationGracePeriodSeconds must be at least 15"));
  EXPECT_THAT(out, HasSubstr("set resources.requests and resources.limits"));
  EXPECT_THAT(out, HasSubstr("FAILED"));  // promtool on the broken rule
}

}  // namespace
}  // namespace rekey::testing
