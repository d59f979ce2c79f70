#include "common/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <ctime>

namespace rekey::log {
namespace {

std::atomic<bool> g_json{true};
std::atomic<int> g_min_level{static_cast<int>(Level::kInfo)};

spdlog::logger& Logger() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = std::make_shared<spdlog::logger>("rekey",
                                              std::make_shared<spdlog::sinks::stderr_sink_mt>());
    l->set_pattern("%v");
    l->set_level(spdlog::level::trace);
    l->flush_on(spdlog::level::trace);
    return l;
  }();
  return *logger;
}

std::string Now() {
  auto now = std::chrono::system_clock::now();
  std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  auto millis =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char out[48];
  std::snprintf(out, sizeof out, "%s.%03dZ", buf, static_cast<int>(millis));
  return out;
}

const char* LevelName(Level level) {
  switch (level) {
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarn:
      return "warn";
    case Level::kError:
      return "error";
  }
  return "info";
}

}  // namespace

void SetFormat(bool json) {
  g_json = json;
}
void SetMinLevel(Level level) {
  g_min_level = static_cast<int>(level);
}

void Write(Level level, std::string_view message, const nlohmann::json& fields) {
  if (static_cast<int>(level) < g_min_level) return;
  if (g_json) {
    nlohmann::json line = {{"time", Now()}, {"level", LevelName(level)}, {"message", message}};
    if (fields.is_object()) {
      for (auto it = fields.begin(); it != fields.end(); ++it) line[it.key()] = it.value();
    }
    Logger().info(line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  } else {
    std::string text = Now() + " " + LevelName(level) + " " + std::string(message);
    if (fields.is_object() && !fields.empty()) {
      text += " " + fields.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    Logger().info(text);
  }
}

void Debug(std::string_view message) {
  Write(Level::kDebug, message, nlohmann::json::object());
}
void Info(std::string_view message) {
  Write(Level::kInfo, message, nlohmann::json::object());
}
void Info(std::string_view message, const nlohmann::json& fields) {
  Write(Level::kInfo, message, fields);
}
void Warn(std::string_view message, const nlohmann::json& fields) {
  Write(Level::kWarn, message, fields);
}
void Error(std::string_view message, const nlohmann::json& fields) {
  Write(Level::kError, message, fields);
}

void Audit(std::string_view action, std::string_view outcome, const nlohmann::json& fields) {
  nlohmann::json f = fields.is_object() ? fields : nlohmann::json::object();
  f["type"] = "audit";
  f["action"] = action;
  f["outcome"] = outcome;
  Write(Level::kInfo, action, f);
}

}  // namespace rekey::log
