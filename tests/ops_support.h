// Helpers for tests of the operations endpoints: an HTTP GET over libcurl, waiting for a log line
// of a background worker, and Prometheus text parsing.
#pragma once

#include <curl/curl.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include "harness/process.h"

namespace rekey::testing {

struct HttpResult {
  long status = 0;  // 0: no answer
  std::string body;
};

// GET (or, with a body, POST) http://127.0.0.1:<port><path>.
inline HttpResult HttpGet(int port, const std::string& path,
                          const std::optional<std::string>& post_body = std::nullopt) {
  HttpResult out;
  CURL* curl = curl_easy_init();
  const std::string url = "http://127.0.0.1:" + std::to_string(port) + path;
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  if (post_body) curl_easy_setopt(curl, CURLOPT_POSTFIELDS, post_body->c_str());
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 15L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(
      curl, CURLOPT_WRITEFUNCTION, +[](char* data, size_t size, size_t n, void* user) -> size_t {
        static_cast<std::string*>(user)->append(data, size * n);
        return size * n;
      });
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &out.body);
  if (curl_easy_perform(curl) == CURLE_OK) {
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &out.status);
  }
  curl_easy_cleanup(curl);
  return out;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Waits (up to `seconds`) until the child's stderr contains `needle`; returns the stderr so far.
inline std::optional<std::string> WaitForLog(ChildProcess& child, const std::string& needle,
                                             int seconds = 120) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < until) {
    std::string err = ReadFile(child.stderr_path());
    if (err.find(needle) != std::string::npos) return err;
    if (!child.Running()) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return std::nullopt;
}

// The port from the worker's "serving /metrics" log line ({"port":N}).
inline int ListenPort(const std::string& log) {
  size_t at = log.find("serving /metrics");
  if (at == std::string::npos) return 0;
  size_t p = log.find("\"port\":", at);
  if (p == std::string::npos) return 0;
  return std::stoi(log.substr(p + 7));
}

// The value of the sample `series` (name plus labels exactly as exposed, e.g.
// `rekey_batches_total{outcome="completed"}`), or nullopt.
inline std::optional<double> Sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return std::nullopt;
}

}  // namespace rekey::testing
