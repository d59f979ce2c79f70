#include "kms/vault_auth.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/log.h"
#include "common/secret.h"
#include "kms/vault_errors.h"

namespace rekey::kms {

namespace {

using nlohmann::json;

json ParseBody(const std::string& what, const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) {
    throw PermanentError("Vault " + what +
                         " returned a malformed response (not a JSON object); check VAULT_ADDR "
                         "points at Vault");
  }
  return j;
}

// The server's errors, flattened to one line, for auth messages.
std::string ServerText(const std::string& body) {
  std::string out;
  for (const std::string& e : VaultErrors(body)) out += (out.empty() ? "" : "; ") + e;
  for (char& c : out) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  if (out.size() > 300) out = out.substr(0, 300) + "...";
  return out;
}

[[noreturn]] void ThrowAuthError(long status, const std::string& body, const std::string& what,
                                 const std::string& fix) {
  std::string text = ServerText(body);
  std::string message = "Vault " + what + " failed (HTTP " + std::to_string(status) +
                        (text.empty() ? "" : ": \"" + text + "\"") + ")";
  if (ClassifyVaultError(status) == VaultErrorClass::kTransient) {
    throw TransientError(message + "; will retry");
  }
  if (status == 404) {
    throw KeyError(message +
                   ": Vault has no such path here; check VAULT_ADDR, VAULT_NAMESPACE and "
                   "REKEY_VAULT_K8S_MOUNT");
  }
  throw KeyError(message + ": " + fix);
}

// Longer TTLs are treated as this long: steady_clock counts nanoseconds in 64 bits (292 years),
// and `obtained_ + ttl_` must not overflow; a token renewed after ten years loses nothing.
constexpr std::chrono::seconds kMaxTtl = std::chrono::hours(24 * 366 * 10);

std::chrono::seconds Seconds(const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end() || !it->is_number_integer()) return std::chrono::seconds(0);
  if (it->is_number_unsigned()) {  // JSON parsing makes every non-negative integer unsigned
    const uint64_t ttl = it->get<uint64_t>();
    return ttl > static_cast<uint64_t>(kMaxTtl.count()) ? kMaxTtl : std::chrono::seconds(ttl);
  }
  return std::chrono::seconds(std::clamp<int64_t>(it->get<int64_t>(), 0, kMaxTtl.count()));
}

bool Flag(const json& j, const char* field) {
  auto it = j.find(field);
  return it != j.end() && it->is_boolean() && it->get<bool>();
}

}  // namespace

HttpRequest VaultRequest(const VaultConnection& connection, const std::string& method,
                         const std::string& path, const std::string& body,
                         const std::string& token) {
  HttpRequest r;
  r.method = method;
  r.url = connection.addr + "/v1/" + path;
  r.headers.emplace_back("X-Vault-Request", "true");
  if (!connection.name_space.empty())
    r.headers.emplace_back("X-Vault-Namespace", connection.name_space);
  if (!token.empty()) r.headers.emplace_back("X-Vault-Token", token);
  if (method == "POST") {
    r.headers.emplace_back("Content-Type", "application/json");
    r.body = body;
  }
  r.timeout = connection.timeout;
  r.ca_bundle = connection.ca_cert;
  return r;
}

VaultAuth::VaultAuth(VaultConnection connection, VaultAuthConfig config,
                     std::shared_ptr<HttpTransport> transport, VaultClock clock)
    : connection_(std::move(connection)),
      config_(std::move(config)),
      transport_(std::move(transport)),
      clock_(std::move(clock)) {}

VaultAuth::~VaultAuth() {
  WipeAndClear(&token_);
}

std::string VaultAuth::Source() const {
  switch (config_.method) {
    case VaultAuthMethod::kToken:
      return "token from VAULT_TOKEN";
    case VaultAuthMethod::kTokenFile:
      return "token file " + config_.token_file;
    case VaultAuthMethod::kKubernetes:
      return "kubernetes auth (role " + config_.k8s_role + " at auth/" + config_.k8s_mount + ")";
  }
  return "";
}

int VaultAuth::logins() const {
  std::lock_guard<std::mutex> lock(mu_);
  return logins_;
}

int VaultAuth::renewals() const {
  std::lock_guard<std::mutex> lock(mu_);
  return renewals_;
}

std::optional<std::chrono::seconds> VaultAuth::TokenExpiresIn() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (token_.empty() || ttl_.count() == 0) return std::nullopt;
  auto left = std::chrono::duration_cast<std::chrono::seconds>(obtained_ + ttl_ - clock_());
  return std::max(left, std::chrono::seconds(0));
}

std::string VaultAuth::ReadFile(const std::string& path, const char* variable) const {
  std::ifstream in(path, std::ios::binary);
  std::string text;
  if (in) text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  size_t begin = text.find_first_not_of(" \t\r\n");
  size_t end = text.find_last_not_of(" \t\r\n");
  std::string value = begin == std::string::npos ? "" : text.substr(begin, end - begin + 1);
  WipeAndClear(&text);
  if (!in || value.empty()) {
    throw ConfigError(std::string("cannot read ") + variable + " " + path +
                      " (missing, unreadable or empty); check " + variable);
  }
  return value;
}

VaultAuth::Lease VaultAuth::Lookup(const std::string& token) {
  HttpResponse r =
      transport_->Post(VaultRequest(connection_, "GET", "auth/token/lookup-self", "", token));
  if (r.status != 200) {
    ThrowAuthError(r.status, r.body, "token lookup (auth/token/lookup-self, " + Source() + ")",
                   "the token is expired, revoked or wrong; provide a valid token (" +
                       std::string(config_.method == VaultAuthMethod::kToken ? "VAULT_TOKEN"
                                                                             : "VAULT_TOKEN_FILE") +
                       ")");
  }
  json j = ParseBody("token lookup", r.body);
  auto data = j.find("data");
  if (data == j.end() || !data->is_object()) {
    throw PermanentError("Vault token lookup returned no data; check VAULT_ADDR points at Vault");
  }
  return Lease{token, Seconds(*data, "ttl"), Flag(*data, "renewable")};
}

VaultAuth::Lease VaultAuth::Obtain() {
  switch (config_.method) {
    case VaultAuthMethod::kToken:
      return Lookup(config_.token);
    case VaultAuthMethod::kTokenFile:
      return Lookup(ReadFile(config_.token_file, "VAULT_TOKEN_FILE"));
    case VaultAuthMethod::kKubernetes:
      break;
  }
  std::string jwt = ReadFile(config_.k8s_jwt_file, "REKEY_VAULT_K8S_JWT_FILE");
  json request = {{"role", config_.k8s_role}, {"jwt", jwt}};
  std::string body = request.dump();
  WipeAndClear(&jwt);
  WipeAndClear(&request["jwt"].get_ref<std::string&>());
  const std::string path = "auth/" + config_.k8s_mount + "/login";
  HttpResponse r;
  try {
    r = transport_->Post(VaultRequest(connection_, "POST", path, body, ""));
  } catch (...) {
    WipeAndClear(&body);
    throw;
  }
  WipeAndClear(&body);
  if (r.status != 200) {
    ThrowAuthError(r.status, r.body,
                   "kubernetes login (" + path + ", role " + config_.k8s_role + ")",
                   "check REKEY_VAULT_K8S_ROLE and REKEY_VAULT_K8S_MOUNT, and that the role binds "
                   "this pod's service account and namespace");
  }
  json j = ParseBody("kubernetes login", r.body);
  WipeAndClear(&r.body);
  auto auth = j.find("auth");
  if (auth == j.end() || !auth->is_object() || !auth->contains("client_token") ||
      !(*auth)["client_token"].is_string() || (*auth)["client_token"].get<std::string>().empty()) {
    throw PermanentError(
        "Vault kubernetes login returned no auth.client_token; check VAULT_ADDR points at Vault");
  }
  Lease lease{(*auth)["client_token"].get<std::string>(), Seconds(*auth, "lease_duration"),
              Flag(*auth, "renewable")};
  WipeAndClear(&(*auth)["client_token"].get_ref<std::string&>());
  return lease;
}

void VaultAuth::Adopt(Lease lease) {
  WipeAndClear(&token_);
  token_ = std::move(lease.token);
  ttl_ = lease.ttl;
  renewable_ = lease.renewable;
  obtained_ = clock_();
  if (config_.method == VaultAuthMethod::kKubernetes) logins_++;
  log::Info("vault token obtained", {{"source", Source()},
                                     {"ttl_seconds", static_cast<int64_t>(ttl_.count())},
                                     {"renewable", renewable_}});
}

bool VaultAuth::Renew() {
  HttpResponse r =
      transport_->Post(VaultRequest(connection_, "POST", "auth/token/renew-self", "{}", token_));
  if (r.status != 200) {
    if (ClassifyVaultError(r.status) == VaultErrorClass::kTransient) {
      log::Warn("vault token renewal failed; will retry",
                {{"source", Source()}, {"http_status", r.status}});
      ThrowAuthError(r.status, r.body, "token renewal", "");
    }
    log::Warn("vault token renewal refused",
              {{"source", Source()}, {"http_status", r.status}, {"errors", ServerText(r.body)}});
    return false;  // refused: not renewable any more, past its max TTL, or revoked
  }
  json j = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  auto auth = j.is_object() ? j.find("auth") : j.end();
  if (auth == j.end() || !auth->is_object()) return false;
  std::chrono::seconds ttl = Seconds(*auth, "lease_duration");
  if (ttl.count() == 0) return false;
  ttl_ = ttl;
  renewable_ = Flag(*auth, "renewable");
  obtained_ = clock_();
  renewals_++;
  log::Info("vault token renewed",
            {{"source", Source()}, {"ttl_seconds", static_cast<int64_t>(ttl_.count())}});
  return true;
}

std::string VaultAuth::Token() {
  std::lock_guard<std::mutex> lock(mu_);
  if (token_.empty()) {
    Adopt(Obtain());
    return token_;
  }
  if (ttl_.count() == 0) return token_;
  const auto now = clock_();
  if (now < obtained_ + ttl_ * 2 / 3) return token_;
  const bool expired = now >= obtained_ + ttl_;
  try {
    if (renewable_ && Renew()) return token_;
    if (config_.method == VaultAuthMethod::kToken) {
      // Nothing can replace VAULT_TOKEN: use it until Vault rejects it (then KeyError).
      ttl_ = std::chrono::seconds(0);
      return token_;
    }
    Adopt(Obtain());
  } catch (const TransientError&) {
    if (expired) throw;  // the old token is useless: surface that Vault cannot be reached
  }
  return token_;
}

bool VaultAuth::Refresh(const std::string& rejected) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!token_.empty() && token_ != rejected) return true;
  log::Warn("vault rejected the token (403)", {{"source", Source()}});
  switch (config_.method) {
    case VaultAuthMethod::kToken:
      return false;
    case VaultAuthMethod::kTokenFile: {
      std::string fresh = ReadFile(config_.token_file, "VAULT_TOKEN_FILE");
      if (fresh == rejected) {
        WipeAndClear(&fresh);
        return false;
      }
      Adopt(Lookup(fresh));
      WipeAndClear(&fresh);
      return true;
    }
    case VaultAuthMethod::kKubernetes:
      Adopt(Obtain());
      return true;
  }
  return false;
}

}  // namespace rekey::kms
