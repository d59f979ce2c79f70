// Talking to Vault: where it is (VaultConnection) and the token that authenticates rekey to it
// (VaultAuth), with the token's lifecycle.
//
// Token sources (VaultAuthConfig, chosen by VaultTransitConfigFromEnv, see vault_transit.h):
//   kToken       VAULT_TOKEN. Looked up once (GET auth/token/lookup-self) for its TTL.
//   kTokenFile   VAULT_TOKEN_FILE (e.g. written by Vault Agent). Read, then looked up; re-read
//                when Vault rejects the token, because an agent may have replaced it.
//   kKubernetes  POST auth/<mount>/login {"role", "jwt"} with the service-account JWT file, re-read
//                at every login because the kubelet rotates it. The login's lease_duration is the
//                TTL.
//
// Renewal: a token with a TTL is renewed (POST auth/token/renew-self) once 2/3 of its TTL has
// passed, before any call that needs it. If the renewal is refused or the token is not renewable,
// a Kubernetes login or a token-file re-read replaces it; a VAULT_TOKEN is used until Vault rejects
// it. A token with TTL 0 (a root token, or any token without expiry) is never renewed; a TTL over
// ten years counts as ten years.
//
// Rejection: after a 403 the caller asks Refresh(rejected) for another token and retries once.
//
// Thread-safety: all methods are thread-safe. A mutex is held across the login/renew/lookup call,
// so concurrent callers wait for one refresh rather than each logging in.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "kms/http_transport.h"

namespace rekey::kms {

struct VaultConnection {
  std::string addr;        // scheme://host[:port], no trailing slash (VAULT_ADDR)
  std::string name_space;  // sent as X-Vault-Namespace iff not empty (VAULT_NAMESPACE)
  std::string ca_cert;     // PEM bundle (VAULT_CACERT); empty = system store
  std::chrono::milliseconds timeout{10000};
};

// A Vault API request: <addr>/v1/<path>, X-Vault-Request, the namespace header, and the token
// header iff `token` is not empty. `body` is sent iff method is POST.
HttpRequest VaultRequest(const VaultConnection& connection, const std::string& method,
                         const std::string& path, const std::string& body,
                         const std::string& token);

enum class VaultAuthMethod { kToken, kTokenFile, kKubernetes };

struct VaultAuthConfig {
  VaultAuthMethod method = VaultAuthMethod::kToken;
  std::string token;       // kToken; credential material, never logged
  std::string token_file;  // kTokenFile
  std::string k8s_role;    // kKubernetes
  std::string k8s_mount = "kubernetes";
  std::string k8s_jwt_file = "/var/run/secrets/kubernetes.io/serviceaccount/token";
};

using VaultClock = std::function<std::chrono::steady_clock::time_point()>;

class VaultAuth {
 public:
  VaultAuth(VaultConnection connection, VaultAuthConfig config,
            std::shared_ptr<HttpTransport> transport,
            VaultClock clock = std::chrono::steady_clock::now);
  ~VaultAuth();
  VaultAuth(const VaultAuth&) = delete;
  VaultAuth& operator=(const VaultAuth&) = delete;

  // A token to send now: obtained on first use, renewed or replaced when 2/3 of its TTL has passed.
  // Throws ConfigError for an unreadable token or JWT file, KeyError when Vault refuses the login
  // or the token, TransientError when Vault cannot be reached (or answers 429/5xx).
  std::string Token();
  // Vault answered 403 to a request sent with `rejected`. Returns true iff a retry with Token() is
  // worthwhile: another thread already replaced the token, or a new one was obtained (Kubernetes
  // login; a token file whose content changed). A VAULT_TOKEN cannot be replaced: false.
  bool Refresh(const std::string& rejected);

  // "token from VAULT_TOKEN", "token file <path>", "kubernetes auth (role <r>)": no secrets.
  std::string Source() const;
  // Counters for tests and metrics: Kubernetes logins and token renewals so far.
  int logins() const;
  int renewals() const;
  // How long the current token remains valid as far as rekey knows (for metrics): nullopt iff no
  // token was obtained yet or it does not expire; zero once expired.
  std::optional<std::chrono::seconds> TokenExpiresIn() const;

 private:
  struct Lease {
    std::string token;
    std::chrono::seconds ttl{0};  // 0 = does not expire
    bool renewable = false;
  };
  Lease Obtain();                          // a token from the configured source, with its TTL
  Lease Lookup(const std::string& token);  // lookup-self: the token's remaining TTL
  bool Renew();                            // mu_ held: true iff renew-self extended token_
  void Adopt(Lease lease);                 // mu_ held
  std::string ReadFile(const std::string& path, const char* variable) const;

  const VaultConnection connection_;
  const VaultAuthConfig config_;
  std::shared_ptr<HttpTransport> transport_;
  VaultClock clock_;
  mutable std::mutex mu_;
  std::string token_;  // empty until acquired
  std::chrono::seconds ttl_{0};
  bool renewable_ = false;
  std::chrono::steady_clock::time_point obtained_{};
  int logins_ = 0;
  int renewals_ = 0;
};

}  // namespace rekey::kms
