// AWS credentials for signing KMS requests: from the environment, or from a web identity
// (EKS IRSA: a projected service-account token exchanged at STS for temporary credentials).
//
// Sources, first match wins (MakeAwsCredentialsProvider):
//   AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY [+ AWS_SESSION_TOKEN]   static
//   AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE [+ AWS_ROLE_SESSION_NAME]
//       STS AssumeRoleWithWebIdentity at AWS_ENDPOINT_URL_STS or https://sts.<region>.amazonaws.com
//
// Web identity credentials are refreshed kRefreshMargin before they expire; the token file is
// re-read on every refresh because the kubelet rotates it.
//
// Thread-safety: Get() and Invalidate() may be called from several threads.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "kms/http_transport.h"
#include "kms/kms_client.h"

namespace rekey::kms {

using WallClock = std::function<std::chrono::system_clock::time_point()>;
std::chrono::system_clock::time_point SystemNow();

struct AwsCredentials {
  std::string access_key_id;
  std::string secret_access_key;                                    // never logged
  std::string session_token;                                        // empty for long-term keys
  std::optional<std::chrono::system_clock::time_point> expiration;  // nullopt = never
};

class AwsCredentialsProvider {
 public:
  virtual ~AwsCredentialsProvider() = default;
  // Current credentials. Throws ConfigError if the source is misconfigured (unreadable token
  // file, STS refused the token), TransientError if STS cannot be reached.
  virtual AwsCredentials Get() = 0;
  // Forgets cached credentials (e.g. after the server said they expired); the next Get() refreshes.
  virtual void Invalidate() {}
  // "environment" or "web identity (role <arn>)": for Describe() and error messages.
  virtual std::string Source() const = 0;
  // True iff Invalidate() + Get() can yield new credentials (web identity); false for fixed ones,
  // whose expiry no retry can cure.
  virtual bool Refreshable() const { return false; }
};

class StaticCredentialsProvider : public AwsCredentialsProvider {
 public:
  explicit StaticCredentialsProvider(AwsCredentials credentials, std::string source = "environment")
      : credentials_(std::move(credentials)), source_(std::move(source)) {}
  AwsCredentials Get() override { return credentials_; }
  std::string Source() const override { return source_; }

 private:
  AwsCredentials credentials_;
  std::string source_;
};

constexpr std::chrono::minutes kRefreshMargin{5};

class WebIdentityCredentialsProvider : public AwsCredentialsProvider {
 public:
  // `transport` must outlive the provider. `sts_url` is the STS endpoint (no path).
  WebIdentityCredentialsProvider(std::string role_arn, std::string token_file,
                                 std::string session_name, std::string sts_url,
                                 HttpTransport& transport, std::string ca_bundle = "",
                                 WallClock clock = SystemNow);
  AwsCredentials Get() override;
  void Invalidate() override;
  std::string Source() const override { return "web identity (role " + role_arn_ + ")"; }
  bool Refreshable() const override { return true; }
  // How many times STS was called (for tests).
  int refreshes() const;

 private:
  AwsCredentials Refresh();

  const std::string role_arn_, token_file_, session_name_, sts_url_, ca_bundle_;
  HttpTransport& transport_;
  WallClock clock_;
  mutable std::mutex mu_;  // guards cached_, refreshes_; held across the STS call (one refresh)
  std::optional<AwsCredentials> cached_;
  int refreshes_ = 0;
};

// Parses an STS AssumeRoleWithWebIdentity XML response body. Throws ConfigError naming the STS
// error code for an <ErrorResponse>, PermanentError for a body without complete credentials.
AwsCredentials ParseAssumeRoleWithWebIdentityResponse(const std::string& xml);

// "2024-05-01T12:00:00Z" (fractional seconds allowed) -> time point; nullopt iff malformed or
// outside what system_clock represents from 1970 on (it ends in 2262).
std::optional<std::chrono::system_clock::time_point> ParseIso8601Utc(const std::string& text);

// Chooses a provider from the environment (see the file comment). `region` picks the default STS
// endpoint. Throws ConfigError naming the variables to set iff no source is configured.
std::unique_ptr<AwsCredentialsProvider> MakeAwsCredentialsProvider(const GetenvFn& getenv,
                                                                   HttpTransport& transport,
                                                                   const std::string& region,
                                                                   WallClock clock = SystemNow);

}  // namespace rekey::kms
