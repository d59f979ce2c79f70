// The HTTP server on loopback: routing, methods, errors; and the --listen address syntax.
#include "ops/http_server.h"

#include <curl/curl.h>
#include <gtest/gtest.h>

#include "common/error.h"

namespace rekey::ops {
namespace {

struct Reply {
  long status = 0;
  std::string body;
  std::string content_type;
};

Reply Request(int port, const std::string& path, const char* method = "GET") {
  Reply out;
  CURL* curl = curl_easy_init();
  const std::string url = "http://127.0.0.1:" + std::to_string(port) + path;
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  if (std::string(method) == "HEAD") {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  } else {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
  }
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 10L);
  curl_easy_setopt(
      curl, CURLOPT_WRITEFUNCTION, +[](char* d, size_t s, size_t n, void* u) -> size_t {
        static_cast<std::string*>(u)->append(d, s * n);
        return s * n;
      });
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &out.body);
  if (curl_easy_perform(curl) == CURLE_OK) {
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &out.status);
    char* ct = nullptr;
    curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &ct);
    if (ct) out.content_type = ct;
  }
  curl_easy_cleanup(curl);
  return out;
}

TEST(ParseListenAddress, AcceptsTheDocumentedFormsOnly) {
  struct Case {
    std::string text;
    std::string host;
    int port;
  };
  for (const Case& c : std::vector<Case>{{"0.0.0.0:9090", "0.0.0.0", 9090},
                                         {"127.0.0.1:0", "127.0.0.1", 0},
                                         {":9090", "0.0.0.0", 9090},
                                         {"[::1]:8080", "::1", 8080}}) {
    ListenAddress a = ParseListenAddress(c.text);
    EXPECT_EQ(a.host, c.host) << c.text;
    EXPECT_EQ(a.port, c.port) << c.text;
  }
  for (const char* bad : {"9090", "localhost:", "0.0.0.0:http", "0.0.0.0:70000", ""}) {
    EXPECT_THROW(ParseListenAddress(bad), ConfigError) << bad;
  }
}

TEST(HttpServer, RoutesGetAndHeadAndRefusesTheRest) {
  int calls = 0;
  HttpServer server({"127.0.0.1", 0},
                    {{"/ok",
                      [&calls](const std::string& path) {
                        ++calls;
                        return HttpResponse{200, "application/json", "{\"path\":\"" + path + "\"}"};
                      }},
                     {"/boom", [](const std::string&) -> HttpResponse {
                        throw std::runtime_error("handler failed");
                      }}});
  ASSERT_GT(server.port(), 0);
  Reply r = Request(server.port(), "/ok?verbose=1");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "{\"path\":\"/ok\"}") << "the query string is cut off";
  EXPECT_EQ(r.content_type, "application/json");
  Reply head = Request(server.port(), "/ok", "HEAD");
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.body, "");
  EXPECT_EQ(Request(server.port(), "/ok", "POST").status, 405);
  Reply missing = Request(server.port(), "/nope");
  EXPECT_EQ(missing.status, 404);
  EXPECT_NE(missing.body.find("/ok"), std::string::npos) << "404 lists the endpoints";
  Reply boom = Request(server.port(), "/boom");
  EXPECT_EQ(boom.status, 500);
  EXPECT_EQ(boom.body, "handler failed\n");
  EXPECT_GE(calls, 2);
}

TEST(HttpServer, ABusyPortIsAConfigError) {
  HttpServer first({"127.0.0.1", 0}, {});
  EXPECT_THROW(HttpServer({"127.0.0.1", first.port()}, {}), ConfigError);
}

}  // namespace
}  // namespace rekey::ops
