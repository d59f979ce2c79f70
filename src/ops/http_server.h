// HttpServer: a small HTTP/1.1 server (Boost.Beast) for the operations endpoints of a worker
// process: /metrics, /healthz, /readyz. GET and HEAD only; every other method gets 405, unknown
// paths 404. Connections are kept alive; an idle or slow client is dropped after 10 s.
//
// Handlers run on the server's single thread, one request at a time, so a handler may use
// state it alone touches (e.g. its own database connection) without locking. A handler that
// throws yields a 500 with a one-line message.
//
// This is the only translation unit that includes Beast (it is heavy to compile).
// Thread-safety: construct and destroy from one thread; port() is safe from any thread.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

namespace rekey::ops {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

// Receives the request target's path (the query string cut off).
using HttpHandler = std::function<HttpResponse(const std::string& path)>;

struct ListenAddress {
  std::string host;
  int port = 0;  // 0: any free port (HttpServer::port() says which)
};

// Parses "ADDR:PORT", "[v6addr]:PORT" or ":PORT" (all interfaces). Throws ConfigError naming the
// expected form.
ListenAddress ParseListenAddress(const std::string& text);

class HttpServer {
 public:
  // Binds and starts serving on its own thread before returning. Throws ConfigError if the
  // address cannot be bound (in use, not local, permission).
  HttpServer(const ListenAddress& address, std::map<std::string, HttpHandler> routes);
  // Stops accepting, closes open connections and joins the thread.
  ~HttpServer();

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rekey::ops
