#include "ops/http_server.h"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <atomic>
#include <chrono>
#include <thread>

#include "common/error.h"

namespace rekey::ops {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

ListenAddress ParseListenAddress(const std::string& text) {
  const std::string usage = "--listen '" + text + "' is not ADDR:PORT (e.g. 0.0.0.0:9090, :9090)";
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos) throw ConfigError(usage);
  ListenAddress out;
  out.host = text.substr(0, colon);
  if (out.host.size() >= 2 && out.host.front() == '[' && out.host.back() == ']') {
    out.host = out.host.substr(1, out.host.size() - 2);
  }
  if (out.host.empty()) out.host = "0.0.0.0";
  const std::string port = text.substr(colon + 1);
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
    throw ConfigError(usage);
  out.port = std::stoi(port);
  if (out.port > 65535) throw ConfigError(usage);
  return out;
}

namespace {

constexpr auto kIdleTimeout = std::chrono::seconds(10);

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, const std::map<std::string, HttpHandler>& routes)
      : stream_(std::move(socket)), routes_(routes) {}

  void Start() { Read(); }

 private:
  void Read() {
    request_ = {};
    stream_.expires_after(kIdleTimeout);
    http::async_read(stream_, buffer_, request_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       if (ec) return self->Close();
                       self->Respond();
                     });
  }

  void Respond() {
    HttpResponse out = Handle();
    response_ = {};
    response_.version(request_.version());
    response_.result(static_cast<http::status>(out.status));
    response_.set(http::field::server, "rekey");
    response_.set(http::field::content_type, out.content_type);
    response_.set(http::field::cache_control, "no-store");
    response_.keep_alive(request_.keep_alive());
    if (request_.method() != http::verb::head) response_.body() = std::move(out.body);
    response_.prepare_payload();
    stream_.expires_after(kIdleTimeout);
    http::async_write(stream_, response_,
                      [self = shared_from_this()](beast::error_code ec, size_t) {
                        if (ec || !self->response_.keep_alive()) return self->Close();
                        self->Read();
                      });
  }

  HttpResponse Handle() {
    if (request_.method() != http::verb::get && request_.method() != http::verb::head) {
      return {405, "text/plain; charset=utf-8", "only GET and HEAD are served here\n"};
    }
    std::string path(request_.target());
    if (size_t q = path.find('?'); q != std::string::npos) path.resize(q);
    auto it = routes_.find(path);
    if (it == routes_.end()) {
      std::string known;
      for (const auto& [p, h] : routes_) known += (known.empty() ? "" : ", ") + p;
      return {404, "text/plain; charset=utf-8", "no such endpoint; try " + known + "\n"};
    }
    try {
      return it->second(path);
    } catch (const std::exception& e) {
      return {500, "text/plain; charset=utf-8", std::string(e.what()) + "\n"};
    }
  }

  void Close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  http::request<http::string_body> request_;
  http::response<http::string_body> response_;
  const std::map<std::string, HttpHandler>& routes_;
};

}  // namespace

struct HttpServer::Impl {
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  std::map<std::string, HttpHandler> routes;
  std::atomic<int> port{0};
  std::thread thread;

  void Accept() {
    acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted) return;
      if (!ec) std::make_shared<Session>(std::move(socket), routes)->Start();
      Accept();
    });
  }
};

HttpServer::HttpServer(const ListenAddress& address, std::map<std::string, HttpHandler> routes)
    : impl_(std::make_unique<Impl>()) {
  impl_->routes = std::move(routes);
  beast::error_code ec;
  const std::string where = address.host + ":" + std::to_string(address.port);
  auto ip = asio::ip::make_address(address.host, ec);
  if (ec)
    throw ConfigError("cannot listen on " + where + ": not an IP address (" + ec.message() + ")");
  tcp::endpoint endpoint(ip, static_cast<unsigned short>(address.port));
  impl_->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(endpoint, ec);
  if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    throw ConfigError("cannot listen on " + where + ": " + ec.message() +
                      "; choose another --listen address or port");
  }
  impl_->port = impl_->acceptor.local_endpoint().port();
  impl_->Accept();
  impl_->thread = std::thread([impl = impl_.get()] { impl->io.run(); });
}

HttpServer::~HttpServer() {
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int HttpServer::port() const {
  return impl_->port.load();
}

}  // namespace rekey::ops
