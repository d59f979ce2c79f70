#include "kms/http_transport.h"

#include <curl/curl.h>
#include <openssl/crypto.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <mutex>

#include "common/error.h"

namespace rekey::kms {

namespace {

size_t OnBody(char* data, size_t size, size_t count, void* user) {
  static_cast<std::string*>(user)->append(data, size * count);
  return size * count;
}

size_t OnHeader(char* data, size_t size, size_t count, void* user) {
  std::string line(data, size * count);
  size_t colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(),
                   [](unsigned char c) { return std::tolower(c); });
    std::string value = line.substr(colon + 1);
    size_t begin = value.find_first_not_of(" \t");
    size_t end = value.find_last_not_of(" \t\r\n");
    value = begin == std::string::npos ? "" : value.substr(begin, end - begin + 1);
    static_cast<HttpResponse*>(user)->headers.emplace_back(std::move(name), std::move(value));
  }
  return size * count;
}

// Owns what a transfer allocates, so every exit path frees it and wipes the credentials.
struct Transfer {
  CURL* curl = nullptr;
  curl_slist* headers = nullptr;
  std::string userpwd;
  ~Transfer() {
    if (headers != nullptr) curl_slist_free_all(headers);
    if (curl != nullptr) curl_easy_cleanup(curl);
    if (!userpwd.empty()) OPENSSL_cleanse(userpwd.data(), userpwd.size());
  }
};

}  // namespace

std::string HttpResponse::Header(const std::string& lowercase_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lowercase_name) return value;
  }
  return "";
}

// The connections, DNS answers and TLS sessions the transport's transfers share. A KMS call per
// value (aws-kms ReEncrypt, Vault Transit) on a new connection each time costs the KMS a TCP
// (and TLS) handshake per call: 2.7 x the server CPU of a call on a kept-alive connection
// against the test server (bench/README.md, aws-kms). libcurl calls Lock/Unlock around its use of
// each kind of shared data, from whichever thread runs the transfer.
struct CurlTransport::Shared {
  CURLSH* share = nullptr;
  std::array<std::mutex, CURL_LOCK_DATA_LAST> locks;

  static void Lock(CURL*, curl_lock_data data, curl_lock_access, void* self) {
    static_cast<Shared*>(self)->locks.at(size_t(data)).lock();
  }
  static void Unlock(CURL*, curl_lock_data data, void* self) {
    static_cast<Shared*>(self)->locks.at(size_t(data)).unlock();
  }

  Shared() : share(curl_share_init()) {
    if (share == nullptr) throw TransientError("libcurl: cannot create a share handle");
    curl_share_setopt(share, CURLSHOPT_LOCKFUNC, &Shared::Lock);
    curl_share_setopt(share, CURLSHOPT_UNLOCKFUNC, &Shared::Unlock);
    curl_share_setopt(share, CURLSHOPT_USERDATA, this);
    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  }
  ~Shared() { curl_share_cleanup(share); }  // every transfer using it has ended
  Shared(const Shared&) = delete;
  Shared& operator=(const Shared&) = delete;
};

CurlTransport::CurlTransport() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  shared_ = std::make_unique<Shared>();
}

CurlTransport::~CurlTransport() = default;

HttpResponse CurlTransport::Post(const HttpRequest& request) {
  Transfer t;
  t.curl = curl_easy_init();
  if (t.curl == nullptr) throw TransientError("libcurl: cannot create a transfer handle");
  CURL* c = t.curl;
  curl_easy_setopt(c, CURLOPT_SHARE, shared_->share);
  HttpResponse response;
  char error[CURL_ERROR_SIZE] = {0};

  curl_easy_setopt(c, CURLOPT_URL, request.url.c_str());
  if (request.method == "GET") {
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  } else if (request.method == "POST") {
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, request.body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(request.body.size()));
  } else {
    throw ConfigError("HTTP method " + request.method + " is not supported (only GET and POST)");
  }
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);  // worker threads: no SIGALRM for DNS timeouts
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(request.timeout.count()));
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(std::min<int64_t>(request.timeout.count(), 5000)));
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);  // a redirect would re-send signed bodies
  if (!request.ca_bundle.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, request.ca_bundle.c_str());
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &response.body);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &response);

  bool has_content_type = false;
  for (const auto& [name, value] : request.headers) {
    std::string lower = name;
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char ch) { return std::tolower(ch); });
    if (lower == "content-type") has_content_type = true;
    t.headers = curl_slist_append(t.headers, (name + ": " + value).c_str());
  }
  // libcurl would otherwise add "Expect: 100-continue" and a form content type.
  t.headers = curl_slist_append(t.headers, "Expect:");
  if (!has_content_type) t.headers = curl_slist_append(t.headers, "Content-Type:");
  if (request.sigv4) {
    const SigV4Signing& s = *request.sigv4;
    if (!s.session_token.empty()) {
      t.headers =
          curl_slist_append(t.headers, ("x-amz-security-token: " + s.session_token).c_str());
    }
    // The provider is named explicitly: libcurl's guess from the host name fails for custom
    // endpoints (VPC endpoints, test servers).
    std::string provider = "aws:amz:" + s.region + ":" + s.service;
    curl_easy_setopt(c, CURLOPT_AWS_SIGV4, provider.c_str());
    t.userpwd = s.access_key_id + ":" + s.secret_access_key;
    curl_easy_setopt(c, CURLOPT_USERPWD, t.userpwd.c_str());
  }
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, t.headers);

  CURLcode rc = curl_easy_perform(c);
  if (rc != CURLE_OK) {
    std::string detail = error[0] != '\0' ? error : curl_easy_strerror(rc);
    switch (rc) {
      case CURLE_URL_MALFORMAT:
      case CURLE_UNSUPPORTED_PROTOCOL:
      case CURLE_SSL_CACERT_BADFILE:
      case CURLE_SSL_CERTPROBLEM:
      case CURLE_PEER_FAILED_VERIFICATION:  // an untrusted certificate: no retry will fix it
        throw ConfigError("cannot " + request.method + " " + request.url + ": " + detail +
                          "; check the endpoint URL and CA bundle settings");
      default:
        throw TransientError("cannot reach " + request.url + ": " + detail);
    }
  }
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &response.status);
  return response;
}

}  // namespace rekey::kms
