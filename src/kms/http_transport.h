// The seam between KMS providers and the network: one HTTPS request (POST unless the request says
// GET), request in, response out.
//
// Providers build an HttpRequest and interpret the HttpResponse themselves; tests substitute a
// fake HttpTransport to drive every response a server could send. CurlTransport is the real one
// (libcurl): TLS peer and host verification are always on, AWS Signature Version 4 is computed by
// libcurl when `sigv4` is set.
//
// Errors: Post() returns any HTTP status as a response (a 4xx or 5xx is not an exception: the
// provider knows what it means). It throws TransientError iff no response arrived (cannot
// connect, DNS failure, TLS handshake failure, timeout, connection reset), with a one-line message
// naming the URL, and ConfigError for a request libcurl refuses outright (malformed URL, unusable
// CA bundle) or a server certificate the CA bundle does not trust.
//
// Thread-safety: CurlTransport::Post may be called from several threads at once (each call uses
// its own easy handle). A CurlTransport keeps the connections its calls opened and reuses them
// for later calls to the same host (HTTP keep-alive, TLS session resumption), whichever thread
// makes them: a connection is used by one call at a time.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace rekey::kms {

// What AWS Signature Version 4 needs. The secret is credential material: never logged.
struct SigV4Signing {
  std::string region;   // e.g. "eu-west-1"
  std::string service;  // e.g. "kms"
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // empty unless temporary credentials (sent as x-amz-security-token)
};

struct HttpRequest {
  std::string method = "POST";  // "POST" or "GET" (a GET sends no body)
  std::string url;
  std::vector<std::pair<std::string, std::string>> headers;  // name, value
  std::string body;
  std::chrono::milliseconds timeout{10000};  // the whole exchange, connect included
  std::optional<SigV4Signing> sigv4;
  std::string ca_bundle;  // PEM file of trusted CAs; empty = the system's store
};

struct HttpResponse {
  long status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // names lowercased
  std::string body;

  // The value of header `lowercase_name`, or empty iff absent.
  std::string Header(const std::string& lowercase_name) const;
};

class HttpTransport {
 public:
  virtual ~HttpTransport() = default;
  // Sends `request` (a POST unless request.method is "GET"); see the file comment for the error
  // contract. The name predates GET support.
  virtual HttpResponse Post(const HttpRequest& request) = 0;
};

class CurlTransport : public HttpTransport {
 public:
  CurlTransport();  // initialises libcurl once per process
  ~CurlTransport() override;
  CurlTransport(const CurlTransport&) = delete;
  CurlTransport& operator=(const CurlTransport&) = delete;

  HttpResponse Post(const HttpRequest& request) override;

 private:
  struct Shared;
  std::unique_ptr<Shared> shared_;
};

}  // namespace rekey::kms
