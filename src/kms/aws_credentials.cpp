#include "kms/aws_credentials.h"

#include <cstdio>
#include <ctime>
#include <fstream>
#include <iterator>

#include "common/error.h"

namespace rekey::kms {

std::chrono::system_clock::time_point SystemNow() {
  return std::chrono::system_clock::now();
}

namespace {

std::string FormEscape(const std::string& s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string XmlUnescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] != '&') {
      out += s[i];
      continue;
    }
    size_t semi = s.find(';', i);
    std::string entity = semi == std::string::npos ? "" : s.substr(i + 1, semi - i - 1);
    if (entity == "amp") {
      out += '&';
    } else if (entity == "lt") {
      out += '<';
    } else if (entity == "gt") {
      out += '>';
    } else if (entity == "quot") {
      out += '"';
    } else if (entity == "apos") {
      out += '\'';
    } else {
      out += '&';
      continue;
    }
    i = semi;
  }
  return out;
}

// The text of the first <tag>...</tag> in `xml`, or nullopt iff there is none. STS responses are
// flat and unambiguous enough that this suffices; no DTDs or CDATA are expected.
std::optional<std::string> XmlText(const std::string& xml, const std::string& tag) {
  size_t open = xml.find("<" + tag + ">");
  if (open == std::string::npos) return std::nullopt;
  size_t begin = open + tag.size() + 2;
  size_t close = xml.find("</" + tag + ">", begin);
  if (close == std::string::npos) return std::nullopt;
  return XmlUnescape(xml.substr(begin, close - begin));
}

}  // namespace

std::optional<std::chrono::system_clock::time_point> ParseIso8601Utc(const std::string& text) {
  std::tm tm{};
  int consumed = 0;
  if (std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &consumed) != 6) {
    return std::nullopt;
  }
  std::string rest = text.substr(consumed);
  if (!rest.empty() && rest[0] == '.') {
    size_t digits = rest.find_first_not_of("0123456789", 1);
    rest = digits == std::string::npos ? "" : rest.substr(digits);
  }
  if (rest != "Z" && rest != "+00:00") return std::nullopt;
  if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 ||
      tm.tm_min > 59 || tm.tm_sec > 60) {
    return std::nullopt;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  // system_clock counts nanoseconds in 64 bits: it ends in 2262. A later (or pre-1970) date is
  // not a credential expiry, and converting it would overflow.
  const std::time_t seconds = timegm(&tm);
  const auto last = std::chrono::duration_cast<std::chrono::seconds>(
      std::chrono::system_clock::time_point::max().time_since_epoch());
  if (seconds < 0 || seconds >= last.count()) return std::nullopt;
  return std::chrono::system_clock::from_time_t(seconds);
}

AwsCredentials ParseAssumeRoleWithWebIdentityResponse(const std::string& xml) {
  if (xml.find("<ErrorResponse") != std::string::npos) {
    std::string code = XmlText(xml, "Code").value_or("unknown error");
    std::string message = XmlText(xml, "Message").value_or("");
    throw ConfigError("STS AssumeRoleWithWebIdentity failed: " + code +
                      (message.empty() ? "" : " (" + message + ")") +
                      "; check AWS_ROLE_ARN, the role's trust policy and the token file");
  }
  AwsCredentials c;
  // Only a complete <Credentials> element counts: a truncated body must not yield half of one.
  size_t open = xml.find("<Credentials>");
  size_t close = open == std::string::npos ? open : xml.find("</Credentials>", open);
  const std::string block = close == std::string::npos ? "" : xml.substr(open, close - open);
  std::optional<std::string> id = XmlText(block, "AccessKeyId");
  std::optional<std::string> secret = XmlText(block, "SecretAccessKey");
  std::optional<std::string> token = XmlText(block, "SessionToken");
  std::optional<std::string> expiration = XmlText(block, "Expiration");
  if (!id || !secret || !token || !expiration || id->empty() || secret->empty()) {
    throw PermanentError(
        "STS AssumeRoleWithWebIdentity returned a response without complete credentials");
  }
  c.expiration = ParseIso8601Utc(*expiration);
  if (!c.expiration) {
    throw PermanentError("STS returned an unparseable credential Expiration '" + *expiration + "'");
  }
  c.access_key_id = *id;
  c.secret_access_key = *secret;
  c.session_token = *token;
  return c;
}

WebIdentityCredentialsProvider::WebIdentityCredentialsProvider(
    std::string role_arn, std::string token_file, std::string session_name, std::string sts_url,
    HttpTransport& transport, std::string ca_bundle, WallClock clock)
    : role_arn_(std::move(role_arn)),
      token_file_(std::move(token_file)),
      session_name_(std::move(session_name)),
      sts_url_(std::move(sts_url)),
      ca_bundle_(std::move(ca_bundle)),
      transport_(transport),
      clock_(std::move(clock)) {}

AwsCredentials WebIdentityCredentialsProvider::Get() {
  std::lock_guard<std::mutex> lock(mu_);
  if (cached_ && cached_->expiration && clock_() + kRefreshMargin < *cached_->expiration) {
    return *cached_;
  }
  cached_ = Refresh();
  return *cached_;
}

void WebIdentityCredentialsProvider::Invalidate() {
  std::lock_guard<std::mutex> lock(mu_);
  cached_.reset();
}

int WebIdentityCredentialsProvider::refreshes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return refreshes_;
}

AwsCredentials WebIdentityCredentialsProvider::Refresh() {
  std::ifstream in(token_file_);
  std::string token((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) {
    token.pop_back();
  }
  if (token.empty()) {
    throw ConfigError("cannot read a web identity token from AWS_WEB_IDENTITY_TOKEN_FILE " +
                      token_file_ + "; check the projected service-account token volume");
  }
  HttpRequest request;
  request.url = sts_url_ + "/";
  request.headers = {{"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"},
                     {"Accept", "application/xml"}};
  request.body =
      "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=" + FormEscape(role_arn_) +
      "&RoleSessionName=" + FormEscape(session_name_) + "&WebIdentityToken=" + FormEscape(token);
  request.ca_bundle = ca_bundle_;
  refreshes_++;
  HttpResponse response = transport_.Post(request);
  if (response.status >= 500 ||
      response.body.find("<Code>Throttling</Code>") != std::string::npos ||
      response.body.find("<Code>IDPCommunicationError</Code>") != std::string::npos) {
    throw TransientError("STS AssumeRoleWithWebIdentity at " + sts_url_ + " failed with HTTP " +
                         std::to_string(response.status) + "; retry later");
  }
  if (response.status != 200 && response.body.find("<ErrorResponse") == std::string::npos) {
    throw ConfigError("STS AssumeRoleWithWebIdentity at " + sts_url_ + " answered HTTP " +
                      std::to_string(response.status) + "; check AWS_ENDPOINT_URL_STS");
  }
  return ParseAssumeRoleWithWebIdentityResponse(response.body);
}

std::unique_ptr<AwsCredentialsProvider> MakeAwsCredentialsProvider(const GetenvFn& getenv,
                                                                   HttpTransport& transport,
                                                                   const std::string& region,
                                                                   WallClock clock) {
  auto env = [&](const char* name) {
    std::optional<std::string> v = getenv(name);
    return v && !v->empty() ? v : std::nullopt;
  };
  std::optional<std::string> id = env("AWS_ACCESS_KEY_ID");
  std::optional<std::string> secret = env("AWS_SECRET_ACCESS_KEY");
  if (id && secret) {
    AwsCredentials c;
    c.access_key_id = *id;
    c.secret_access_key = *secret;
    c.session_token = env("AWS_SESSION_TOKEN").value_or("");
    return std::make_unique<StaticCredentialsProvider>(std::move(c));
  }
  if (id || secret) {
    throw ConfigError(
        "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set; set both, or neither "
        "and use AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE");
  }
  std::optional<std::string> role = env("AWS_ROLE_ARN");
  std::optional<std::string> token_file = env("AWS_WEB_IDENTITY_TOKEN_FILE");
  if (role && token_file) {
    std::string sts =
        env("AWS_ENDPOINT_URL_STS").value_or("https://sts." + region + ".amazonaws.com");
    while (!sts.empty() && sts.back() == '/') sts.pop_back();
    std::string session = env("AWS_ROLE_SESSION_NAME").value_or("rekey");
    return std::make_unique<WebIdentityCredentialsProvider>(
        *role, *token_file, session, sts, transport, env("AWS_CA_BUNDLE").value_or(""),
        std::move(clock));
  }
  throw ConfigError(
      "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_ROLE_ARN and "
      "AWS_WEB_IDENTITY_TOKEN_FILE (EKS IRSA); see docs/kms.md");
}

}  // namespace rekey::kms
