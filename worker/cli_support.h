// Plumbing shared by the subcommands: the database connection and the data-key source.
#pragma once

#include <pqxx/pqxx>

#include <functional>
#include <memory>
#include <string>

#include "commands.h"
#include "keyring/data_key_cache.h"
#include "kms/kms_client.h"
#include "kms/kms_registry.h"
#include "rotation/batch_rotator.h"

namespace rekey::cli {

// The resolved connection string (--db, DATABASE_URL, or libpq's PG* variables).
std::string ConnInfo(const GlobalOptions& global);
std::unique_ptr<pqxx::connection> OpenDatabase(const GlobalOptions& global,
                                               const std::string& application_name = "rekey");

// The KMS clients (one per provider named in rekey.keys, built on first use from the environment)
// and the process-wide data-key cache in front of them (bounds: keyring::CacheOptionsFromEnv).
class KeyServices {
 public:
  // Wraps each provider's client as it is built (e.g. to instrument it); identity if empty.
  using WrapClient =
      std::function<std::unique_ptr<kms::KmsClient>(std::unique_ptr<kms::KmsClient>)>;
  explicit KeyServices(const std::string& conninfo, WrapClient wrap = nullptr);
  rotation::DataKeySource Source();
  keyring::DataKeyCache& cache() { return *cache_; }
  kms::KmsRegistry& registry() { return *registry_; }
  // False while any KMS client in use has an open circuit breaker (WorkerOptions::kms_available).
  std::function<bool()> Availability();

 private:
  std::unique_ptr<kms::KmsRegistry> registry_;
  std::unique_ptr<keyring::DataKeyCache> cache_;
};

// The Vault Transit service of vault-transit column jobs (Vault's client behind rotation's narrow
// interface, rotation/transit_service.h), built on first call from the environment (VAULT_ADDR and
// the authentication variables of kms/vault_transit.h; REKEY_VAULT_TRANSIT_KEY is not needed) and
// shared by every caller. Throws ConfigError if Vault is not configured.
rotation::TransitClientSource LazyTransitClient();

// The AWS KMS service of aws-kms column jobs (AWS KMS's client, inside the resilient layer of
// kms/resilient_kms.h, behind rotation's narrow interface, rotation/aws_kms_rewriter.h), built on
// first call from the environment (AWS_REGION, credentials and AWS_ENDPOINT_URL_KMS as for the
// aws-kms provider, kms/aws_kms.h; REKEY_AWS_KMS_KEY_ID is not needed) and shared by every caller.
// Throws ConfigError if AWS KMS is not configured.
rotation::AwsKmsSource LazyAwsKmsService();

// Installs SIGTERM/SIGINT handlers that set the returned flag (for graceful stops).
const std::atomic<bool>& InstallStopSignals();

}  // namespace rekey::cli
