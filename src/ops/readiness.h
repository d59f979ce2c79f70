// Readiness of a worker process, in the shape of common health-check responses:
//
//   {"status":"UP","checks":[
//     {"name":"database","status":"UP","data":{"latency_ms":1.2}},
//     {"name":"kms","status":"UP","data":{"providers":[
//        {"provider":"aws-kms","key_ref":"arn:...","breaker":"closed"}]}}]}
//
// The process is ready (UP) iff the database answers `SELECT 1` within a few seconds and no KMS
// provider's circuit breaker is open (half-open is ready: it is probing). A provider not used yet
// has no client and is not listed. Nothing in the JSON is secret: no passwords (messages pass
// through db::RedactSecrets), no key material.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "ops/instrumented_kms.h"

namespace rekey::ops {

struct Readiness {
  bool up = false;
  nlohmann::json body;
};

// The kms check alone (pure function of the providers' states, for tests).
nlohmann::json KmsCheck(const std::vector<KmsStatus>& providers);

// Runs both checks. `conninfo` should carry a connect timeout (WithConnectTimeout).
Readiness CheckReadiness(const std::string& conninfo, const KmsWatch& kms);

}  // namespace rekey::ops
