// Structured logs: one JSON object per line on stderr, so `jq` works on them, e.g.
//   rekey work ... 2>&1 | jq 'select(.type=="audit")'
// Every line has time (RFC 3339, UTC, milliseconds), level and message, plus the caller's fields
// (job, batch, worker, action, outcome, ...). Audit events add "type":"audit".
// Never pass key material or connection strings with passwords: nothing here can tell.
// Thread-safe.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <string_view>

namespace rekey::log {

enum class Level { kDebug, kInfo, kWarn, kError };

// Selects JSON lines (default) or plain text for terminals ("text"). Safe to call once at start.
void SetFormat(bool json);
void SetMinLevel(Level level);

void Write(Level level, std::string_view message, const nlohmann::json& fields);
void Debug(std::string_view message);
void Info(std::string_view message);
void Info(std::string_view message, const nlohmann::json& fields);
void Warn(std::string_view message, const nlohmann::json& fields);
void Error(std::string_view message, const nlohmann::json& fields);
// An audit event, mirrored from rekey.audit: {"type":"audit","action":...,"outcome":...,...}.
void Audit(std::string_view action, std::string_view outcome, const nlohmann::json& fields);

}  // namespace rekey::log
