#include "harness/prometheus_server.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "ops_support.h"

namespace rekey::testing {

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return 0;
  }
  close(fd);
  return ntohs(addr.sin_port);
}

std::string UrlEncode(const std::string& s) {
  CURL* curl = curl_easy_init();
  char* escaped = curl_easy_escape(curl, s.data(), int(s.size()));
  std::string out = escaped;
  curl_free(escaped);
  curl_easy_cleanup(curl);
  return out;
}

PrometheusServer::PrometheusServer(const std::vector<ScrapeJob>& jobs) {
  dir_ = MakeTempDir("rekey-prometheus-");
  port_ = FreePort();
  std::ofstream config(dir_ + "/prometheus.yml");
  config << "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n";
  for (const auto& [name, targets] : jobs) {
    std::string list;
    for (const auto& t : targets) list += (list.empty() ? "'" : ", '") + t + "'";
    config << "  - job_name: " << name << "\n    static_configs:\n      - targets: [" << list
           << "]\n";
  }
  config.close();
  child_ = std::make_unique<ChildProcess>(std::vector<std::string>{
      kPrometheusBinary, "--config.file=" + dir_ + "/prometheus.yml",
      "--storage.tsdb.path=" + dir_ + "/data",
      "--web.listen-address=127.0.0.1:" + std::to_string(port_), "--log.level=warn"});
}

PrometheusServer::~PrometheusServer() {
  child_->Signal(SIGTERM);
  child_->Wait(30);
  RunProcess({"rm", "-rf", dir_});
}

bool PrometheusServer::WaitReady(int seconds) {
  for (int i = 0; i < seconds * 10; ++i) {
    if (HttpGet(port_, "/-/ready").status == 200) return true;
    if (!child_->Running()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

std::string PrometheusServer::Log() {
  return ReadFile(child_->stderr_path());
}

nlohmann::json PrometheusServer::Api(const std::string& path, const std::string& query) {
  HttpResult r = HttpGet(port_, path + "?" + query);
  nlohmann::json body = nlohmann::json::parse(r.body, nullptr, false);
  if (body.is_discarded()) {
    return {{"status", "error"}, {"error", "HTTP " + std::to_string(r.status) + ": " + r.body}};
  }
  return body;
}

}  // namespace rekey::testing
