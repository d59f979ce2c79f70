// `rekey keys ...`: the keyring from the command line. Each subcommand is one transaction and
// prints one confirmation line (`export` on stderr: its stdout is the key file). Key material is
// only ever read from a file or stdin, never from a flag (flags end up in shell history and `ps`).
#include <openssl/crypto.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "cli_support.h"
#include "commands.h"
#include "common/bytes.h"
#include "common/duration.h"
#include "common/error.h"
#include "common/secret.h"
#include "db/connection.h"
#include "db/conninfo.h"
#include "keyring/census.h"
#include "keyring/key_exchange.h"
#include "keyring/key_formats/cloak_keys.h"
#include "keyring/key_formats/fernet_keys.h"
#include "keyring/key_formats/lockbox_keys.h"
#include "keyring/key_formats/rails_keys.h"
#include "keyring/keyring.h"
#include "keyring/rewrap.h"
#include "keyring/tink_keyset.h"
#include "keyring/trial_census.h"
#include "kms/kms_factory.h"
#include "ops/atomic_output.h"

namespace rekey::cli {

namespace {

using keyring::KeyRecord;
using keyring::KeyStatus;

// Options are stored here rather than on the stack: CLI11 fills them during parse and the
// callbacks run later.
struct KeysOptions {
  std::string scope = keyring::kDefaultScope;
  int64_t key_id = -1;
  std::string max_age;
  std::string kms = "local";
  std::string file;
  bool use_stdin = false;
  bool json = false;
  bool yes = false;
  std::string to_kms;
  std::string to_kms_key;
  std::vector<int64_t> key_ids;
  std::vector<std::string> accept_unknown;
  std::string reason;
  std::string format = "raw";  // import and export: a name of KeyFormats()
  bool promote = false;        // import: the file's primary becomes primary even over another
  bool cleartext = false;      // export: key material in the clear
  bool binary = false;         // export: the format's binary form instead of JSON
  std::string output;          // export: a file instead of stdout
  std::string kms_key;         // tink-keyset: the KMS key of an encrypted keyset (default: --kms's)
};

// The KMS key that encrypts or decrypts a Tink keyset: --kms-key under --kms, or that provider's
// default key.
keyring::tink::KeysetKek KeysetKekOf(const KeysOptions& o) {
  keyring::tink::KeysetKek kek;
  kek.kms = kms::MakeKmsClient(o.kms);
  kek.key_ref = o.kms_key.empty() ? kek.kms->default_key_ref() : o.kms_key;
  return kek;
}

uint32_t CheckedKeyId(int64_t id) {
  if (id < 0 || id > 4294967295LL) {
    throw ConfigError("key id " + std::to_string(id) +
                      " is out of range; key ids are 0..4294967295");
  }
  return static_cast<uint32_t>(id);
}

std::string FormatDuration(std::chrono::seconds d) {
  int64_t s = d.count();
  if (s >= 86400 && s % 86400 == 0) return std::to_string(s / 86400) + "d";
  if (s >= 86400) return std::to_string(s / 86400) + "d" + std::to_string((s % 86400) / 3600) + "h";
  if (s >= 3600) return std::to_string(s / 3600) + "h";
  if (s >= 60) return std::to_string(s / 60) + "m";
  return std::to_string(s) + "s";
}

// Runs `fn(txn)` in one transaction on a fresh connection and commits it.
template <typename Fn>
void InTransaction(const GlobalOptions& global, Fn&& fn) {
  std::unique_ptr<pqxx::connection> conn =
      db::Connect(db::ResolveConnInfo(global.db), "rekey-keys");
  db::Classified("opening a transaction", [&] {
    pqxx::work txn(*conn);
    fn(txn);
    txn.commit();
  });
}

// Prints the server's NOTICEs (the census's progress, one per table) on stderr, as they arrive.
class NoticePrinter : public pqxx::errorhandler {
 public:
  explicit NoticePrinter(pqxx::connection_base& conn) : pqxx::errorhandler(conn) {}
  bool operator()(const char msg[]) noexcept override {
    std::fputs(msg, stderr);
    return true;
  }
};

// Runs `fn(txn)` in one READ COMMITTED transaction (whatever default_transaction_isolation says:
// the lifecycle trigger counts the key's values after taking its lock, which only a read-committed
// statement sees) and commits it. The census's progress is shown on a terminal only.
template <typename Fn>
void InCensusTransaction(const GlobalOptions& global, Fn&& fn) {
  std::unique_ptr<pqxx::connection> conn =
      db::Connect(db::ResolveConnInfo(global.db), "rekey-keys");
  const bool terminal = isatty(STDERR_FILENO) == 1;
  std::optional<NoticePrinter> progress;
  if (terminal) progress.emplace(*conn);
  db::Classified("opening a transaction", [&] {
    pqxx::work txn(*conn);
    keyring::UseReadCommitted(txn);
    if (!terminal) txn.exec0("SET LOCAL client_min_messages = warning");
    fn(txn);
    txn.commit();
  });
}

std::string Plural(int64_t n, const std::string& one, const std::string& many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

nlohmann::json CensusJson(const keyring::CensusColumn& c) {
  return {{"schema", c.schema},
          {"table", c.table},
          {"column", c.column},
          {"ref", c.ref},
          {"target_id", c.target_id ? nlohmann::json(*c.target_id) : nlohmann::json(nullptr)},
          {"formats", c.formats},
          {"values", c.values ? nlohmann::json(*c.values) : nlohmann::json(nullptr)},
          {"status", c.status},
          {"unknown", c.unknown ? nlohmann::json(*c.unknown) : nlohmann::json(nullptr)}};
}

// Key material for the census by trial decryption (keyring/trial_census.h), through the KMS: made
// only when a column needs it.
std::function<keyring::TrialKeySource()> TrialKeys(const GlobalOptions& global) {
  return [&global] {
    auto services = std::make_shared<KeyServices>(ConnInfo(global));
    return keyring::TrialKeySource([services](uint32_t id) { return services->Source()(id); });
  };
}

// Before a retire or destroy of `key_id`: the columns SQL cannot count by key, counted by trial
// decryption. One holding values under the key refuses the transition here, naming the count;
// those proven to hold none (and no value that opens under no key) are accepted, audited as
// key.unknown_accepted; the others stay unknown for the lifecycle trigger to refuse.
void AcceptTrialCounted(const GlobalOptions& global, pqxx::transaction_base& txn, uint32_t key_id,
                        std::vector<std::string> accepted) {
  std::string in_use;
  const std::vector<std::string> proven = keyring::KeyCensusByTrial(
      txn, key_id, TrialKeys(global), [&](const keyring::CensusColumn& c) {
        if (c.status == "in_use" && c.formats.size() == 1 && keyring::IsTrialCodec(c.formats[0])) {
          in_use += (in_use.empty() ? "" : "; ") + c.ref + " holds " +
                    std::to_string(c.values.value_or(0)) + " values under it";
        }
      });
  if (!in_use.empty()) {
    throw StateError("key " + std::to_string(key_id) +
                     " is in use (counted by trial decryption): " + in_use);
  }
  accepted.insert(accepted.end(), proven.begin(), proven.end());
  keyring::AcceptUnknownColumns(txn, accepted);
}

// `rekey keys usage K`: every column of the database holding values under K, or that could not
// be read; exit 0 whatever it finds (retire and destroy are where it refuses).
void Usage(const GlobalOptions& global, const KeysOptions& o) {
  uint32_t key_id = CheckedKeyId(o.key_id);
  std::vector<keyring::CensusColumn> listed;
  int64_t values = 0, unknown = 0, unresolved = 0;
  nlohmann::json columns = nlohmann::json::array();
  InCensusTransaction(global, [&](pqxx::transaction_base& txn) {
    keyring::KeyCensusByTrial(txn, key_id, TrialKeys(global), [&](const keyring::CensusColumn& c) {
      values += c.values.value_or(0);
      unknown += c.status == "unknown";
      unresolved += c.status == "unresolved";
      if (o.json) {
        columns.push_back(CensusJson(c));
      } else {
        listed.push_back(c);
      }
    });
  });
  if (o.json) {
    nlohmann::json j = {{"key_id", key_id},
                        {"values", values},
                        {"unknown_columns", unknown},
                        {"unresolved_targets", unresolved},
                        {"clear", values == 0 && unknown == 0 && unresolved == 0},
                        {"columns", std::move(columns)}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf(
      "key %u: %s in %s; %s unknown; %s unresolved\n", key_id,
      Plural(values, "value", "values").c_str(),
      Plural(static_cast<int64_t>(listed.size()) - unknown - unresolved, "column", "columns")
          .c_str(),
      Plural(unknown, "column", "columns").c_str(),
      Plural(unresolved, "registered target", "registered targets").c_str());
  for (const keyring::CensusColumn& c : listed) {
    std::string formats;
    for (const std::string& f : c.formats) formats += (formats.empty() ? "" : ",") + f;
    std::string values_text = c.values ? std::to_string(*c.values) : "-";
    std::string target = c.target_id ? "target " + std::to_string(*c.target_id) : "unregistered";
    std::printf("%-40s %10s  %-10s %-16s %-13s%s%s\n", c.ref.c_str(), values_text.c_str(),
                c.status.c_str(), formats.c_str(), target.c_str(), c.unknown ? "  " : "",
                c.unknown ? c.unknown->c_str() : "");
  }
}

// The whole of --file, or of stdin with --stdin. The caller wipes it (it may hold key material).
std::string ReadInput(const KeysOptions& o) {
  std::string data;
  if (o.use_stdin) {
    data.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    std::ifstream in(o.file, std::ios::binary);
    if (!in) throw ConfigError("cannot read --file " + o.file);
    data.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return data;
}

// A raw data key: exactly 32 raw bytes, or the base64 of 32 bytes (any other length is taken as
// text). `data` is wiped.
Secret ParseRawKey(std::string& data) {
  size_t read = data.size();
  if (read == kms::kDataKeySize) {
    Secret key(reinterpret_cast<const uint8_t*>(data.data()), data.size());
    WipeAndClear(&data);
    return key;
  }
  std::optional<Bytes> decoded = Base64Decode(data);
  WipeAndClear(&data);
  if (!decoded || decoded->size() != kms::kDataKeySize) {
    size_t decoded_size = decoded ? decoded->size() : 0;
    if (decoded && !decoded->empty()) OPENSSL_cleanse(decoded->data(), decoded->size());
    throw KeyError("the key to import must be 32 raw bytes or their base64; read " +
                   std::to_string(read) + " bytes" +
                   (decoded ? " decoding to " + std::to_string(decoded_size) + " bytes"
                            : " that are not base64"));
  }
  Secret key(decoded->data(), decoded->size());
  OPENSSL_cleanse(decoded->data(), decoded->size());
  return key;
}

// One Fernet key as Fernet.generate_key() writes it (keyring/key_formats/fernet_keys.h). `data`
// is wiped.
Secret ParseOneFernetKey(std::string& data) {
  std::vector<Secret> keys;
  try {
    keys = keyring::ParseFernetKeyList(data);
  } catch (...) {
    WipeAndClear(&data);
    throw;
  }
  WipeAndClear(&data);
  if (keys.size() != 1) {
    throw KeyError("--format fernet imports one key per --key-id; the file holds " +
                   std::to_string(keys.size()));
  }
  return std::move(keys[0]);
}

// Runs `parse` over `data`, which is wiped whether it succeeds or throws.
template <typename Parse>
Secret ParsedAndWiped(std::string& data, Parse parse) {
  try {
    Secret key = parse(data);
    WipeAndClear(&data);
    return key;
  } catch (...) {
    WipeAndClear(&data);
    throw;
  }
}

// Refuses an export in the clear without --cleartext; `what` names the file ("a Fernet key list").
void RequireCleartext(const KeysOptions& o, const std::string& what) {
  if (!o.cleartext) {
    throw ConfigError(what +
                      " is key material in the clear: pass --cleartext (and --output FILE) to "
                      "export it");
  }
}

// The scope's keys, the primary first (Fernet, Lockbox) or last (Rails encrypts with the last).
std::vector<const Secret*> PrimaryFirst(const std::vector<keyring::ExchangedKey>& keys,
                                        bool first = true) {
  std::vector<const Secret*> ordered;
  for (const keyring::ExchangedKey& k : keys) {
    if (!k.primary) ordered.push_back(&k.key);
  }
  for (const keyring::ExchangedKey& k : keys) {
    if (k.primary) ordered.insert(first ? ordered.begin() : ordered.end(), &k.key);
  }
  return ordered;
}

// `text` as a Secret; `text` is wiped.
Secret SecretOfText(std::string& text) {
  Secret file(reinterpret_cast<const uint8_t*>(text.data()), text.size());
  WipeAndClear(&text);
  return file;
}

// A key file format of `rekey keys import --format` and `export --format`. Its codec lives in
// keyring/ (worker only wires): `read` turns a file into the keys it hands over, `write` turns a
// scope's keys (one marked primary) into a file. Another format is one row of KeyFormats().
struct KeyFormat {
  const char* name;
  // A format that holds one key and no id (raw, fernet): imported under --key-id, left enabled.
  // `contents` is wiped.
  std::function<Secret(std::string& contents)> read_one;
  std::function<std::vector<keyring::ExchangedKey>(std::string_view contents,
                                                   const KeysOptions& o)>
      read;  // a file that names its keys and their primary (tink-keyset); else nullptr
  std::function<Secret(const std::vector<keyring::ExchangedKey>& keys, const KeysOptions& o)>
      write;                       // nullptr: cannot be exported
  bool read_takes_key_id = false;  // `read` numbers keys from --key-id N when given (cloak)
};

// "raw" is today's import: one 32-byte key (or its base64) under --key-id, left enabled.
const std::vector<KeyFormat>& KeyFormats() {
  static const std::vector<KeyFormat> formats = {
      {"raw", ParseRawKey, nullptr, nullptr},
      {"fernet", ParseOneFernetKey, nullptr,
       // The MultiFernet list applications configure, primary first.
       [](const std::vector<keyring::ExchangedKey>& keys, const KeysOptions& o) {
         RequireCleartext(o, "a Fernet key list");
         std::string list = keyring::FernetKeyList(PrimaryFirst(keys)) + "\n";
         return SecretOfText(list);
       }},
      {"rails",
       // One primary_key (or deterministic_key) of the credentials, with its salt and digest,
       // derived as Rails derives it (keyring/key_formats/rails_keys.h).
       [](std::string& data) { return ParsedAndWiped(data, keyring::ParseRailsKeyFile); }, nullptr,
       // The KeyProvider config, the primary last (Rails encrypts with the last key).
       [](const std::vector<keyring::ExchangedKey>& keys, const KeysOptions& o) {
         RequireCleartext(o, "a Rails key provider config");
         std::string config =
             keyring::RailsKeyProviderConfig(PrimaryFirst(keys, /*first=*/false)) + "\n";
         return SecretOfText(config);
       }},
      {"lockbox",
       // One master key as Lockbox.generate_key writes it (keyring/key_formats/lockbox_keys.h).
       [](std::string& data) { return ParsedAndWiped(data, keyring::ParseLockboxMasterKey); },
       nullptr,
       // The initializer Lockbox reads: the primary as master_key, the others as previous_versions.
       [](const std::vector<keyring::ExchangedKey>& keys, const KeysOptions& o) {
         RequireCleartext(o, "a Lockbox master key");
         std::string text = keyring::LockboxInitializer(PrimaryFirst(keys));
         return SecretOfText(text);
       }},
      {"cloak", nullptr,
       // keyring/key_formats/cloak_keys.h: ids from --key-id N upward, else the fingerprints.
       [](std::string_view contents, const KeysOptions& o) {
         if (!o.kms_key.empty()) {
           throw ConfigError(
               "--kms-key names the KMS key of an encrypted key file (--format "
               "tink-keyset); cloak keys are wrapped by --kms's own key");
         }
         return keyring::ParseCloakKeyFile(
             contents,
             o.key_id >= 0 ? std::optional<uint32_t>(CheckedKeyId(o.key_id)) : std::nullopt);
       },
       [](const std::vector<keyring::ExchangedKey>& keys, const KeysOptions& o) {
         RequireCleartext(o, "a cloak keychain");
         std::string file = keyring::CloakKeyFile(keys);
         return SecretOfText(file);
       },
       true},
      {"tink-keyset", nullptr,
       [](std::string_view contents, const KeysOptions& o) {
         return keyring::tink::KeysOfKeysetFile(contents, [&] { return KeysetKekOf(o); });
       },
       [](const std::vector<keyring::ExchangedKey>& keys, const KeysOptions& o) {
         return keyring::tink::KeysetFileOf(keys, o.cleartext,
                                            o.binary ? keyring::tink::KeysetEncoding::kBinary
                                                     : keyring::tink::KeysetEncoding::kJson,
                                            [&] { return KeysetKekOf(o); });
       }},
  };
  return formats;
}

// The formats `import` reads (all), or those `export` writes.
std::vector<std::string> KeyFormatNames(bool exportable) {
  std::vector<std::string> names;
  for (const KeyFormat& f : KeyFormats()) {
    if (!exportable || f.write) names.push_back(f.name);
  }
  return names;
}

const KeyFormat& FindKeyFormat(const std::string& name) {
  for (const KeyFormat& f : KeyFormats()) {
    if (name == f.name) return f;
  }
  throw ConfigError("unknown key format " + name);  // CLI11 checks the name first
}

std::string IdList(const std::vector<uint32_t>& ids) {
  std::string out;
  for (uint32_t id : ids) out += (out.empty() ? "" : ",") + std::to_string(id);
  return out;
}

// `rekey keys import --format F`: every key the file hands over, adopted in one transaction
// (keyring/key_exchange.h says how statuses map).
void ImportKeyFile(const GlobalOptions& global, const KeysOptions& o, const KeyFormat& format) {
  if (o.key_id >= 0 && !format.read_takes_key_id) {
    throw ConfigError("--key-id is for --format raw; a " + std::string(format.name) +
                      " file names its own key ids");
  }
  std::string contents = ReadInput(o);
  std::vector<keyring::ExchangedKey> keys;
  try {
    keys = format.read(contents, o);
  } catch (...) {
    WipeAndClear(&contents);
    throw;
  }
  WipeAndClear(&contents);
  std::unique_ptr<kms::KmsClient> wrap = kms::MakeKmsClient(o.kms);
  keyring::EnvironmentKmsClients kms_for;
  keyring::AdoptOptions options;
  options.scope = o.scope;
  options.promote_primary = o.promote;
  keyring::AdoptResult result;
  InTransaction(global, [&](pqxx::transaction_base& txn) {
    result = keyring::AdoptKeys(txn, *wrap, std::ref(kms_for), keys, options);
  });
  std::vector<uint32_t> adopted, kept;
  std::string statuses;
  for (const keyring::AdoptedKey& k : result.keys) {
    (k.already_there ? kept : adopted).push_back(k.key_id);
    if (!k.already_there) {
      statuses += std::string(statuses.empty() ? "" : ", ") + std::to_string(k.key_id) + " " +
                  keyring::KeyStatusName(k.status);
    }
  }
  std::string note;
  if (!kept.empty()) note += "; already in the keyring, unchanged: " + IdList(kept);
  if (result.demoted) note += "; key " + std::to_string(*result.demoted) + " is now decrypt_only";
  if (result.unpromoted) {
    note += "; scope " + o.scope + " keeps its primary: `rekey keys promote " +
            std::to_string(*result.unpromoted) + "` (or import with --promote) makes the " +
            format.name + "'s primary rekey's";
  }
  std::printf("imported %zu key(s) from the %s into scope %s (wrapped by %s)%s%s%s\n",
              adopted.size(), format.name, o.scope.c_str(), wrap->default_key_ref().c_str(),
              statuses.empty() ? "" : ": ", statuses.c_str(), note.c_str());
}

// `rekey keys export --format F`: the scope's decryptable keys, its primary the file's primary.
void ExportKeyFile(const GlobalOptions& global, const KeysOptions& o, const KeyFormat& format) {
  // A terminal keeps what it shows (scrollback, screen sharing, recordings); key files go to a
  // file or a pipe.
  if (o.output.empty() && isatty(STDOUT_FILENO) == 1) {
    throw ConfigError(
        "refusing to write a key file to a terminal; pass --output FILE or redirect "
        "stdout");
  }
  if (o.cleartext && !o.kms_key.empty()) {
    throw ConfigError(
        "--kms-key names the KMS key that encrypts the file; drop it with --cleartext");
  }
  if (o.cleartext) {
    std::fprintf(stderr,
                 "WARNING: exporting the key material of scope %s in the CLEARTEXT: anyone who "
                 "reads the file can decrypt every value under these keys; keep it out of version "
                 "control, logs and backups, and delete it once loaded\n",
                 o.scope.c_str());
  }
  std::vector<keyring::ExchangedKey> keys;
  keyring::EnvironmentKmsClients kms_for;
  InTransaction(global, [&](pqxx::transaction_base& txn) {
    keys = keyring::DecryptableKeys(txn, o.scope, std::ref(kms_for));
  });
  Secret file = format.write(keys, o);
  std::optional<ops::AtomicOutputFile> out;
  if (!o.output.empty()) out.emplace(o.output);  // created 0600, renamed into place when whole
  std::FILE* stream = out ? out->stream() : stdout;
  if (std::fwrite(file.data(), 1, file.size(), stream) != file.size() || std::fflush(stream) != 0) {
    throw ConfigError("cannot write the key file to " + (out ? o.output : std::string("stdout")));
  }
  if (out) out->Commit();
  uint32_t primary = 0;
  std::vector<uint32_t> ids;
  for (const keyring::ExchangedKey& k : keys) {
    ids.push_back(k.key_id);
    if (k.primary) primary = k.key_id;
  }
  std::fprintf(stderr, "exported %zu key(s) of scope %s (%s; primary %u) as a %s %s to %s\n",
               keys.size(), o.scope.c_str(), IdList(ids).c_str(), primary,
               o.cleartext ? "CLEARTEXT"
                           : ("encrypted (" + o.kms +
                              (o.kms_key.empty() ? " default key" : " key " + o.kms_key) + ")")
                                 .c_str(),
               format.name, o.output.empty() ? "stdout" : o.output.c_str());
}

nlohmann::json OptionalJson(const std::optional<std::string>& s) {
  return s ? nlohmann::json(*s) : nlohmann::json(nullptr);
}

nlohmann::json KeyJson(const KeyRecord& k) {
  nlohmann::json j;
  j["key_id"] = k.key_id;
  j["scope"] = k.scope;
  j["status"] = keyring::KeyStatusName(k.status);
  j["kms_provider"] = k.kms_provider;
  j["kms_key_ref"] = k.kms_key_ref;
  j["algorithm"] = k.algorithm;
  j["origin"] = k.origin;
  j["age_seconds"] = k.age.count();
  j["max_age_seconds"] = k.max_age ? nlohmann::json(k.max_age->count()) : nlohmann::json(nullptr);
  j["max_age_exceeded"] = k.max_age.has_value() && k.age > *k.max_age;
  j["created_at"] = k.created_at;
  j["created_by"] = k.created_by;
  j["enabled_at"] = OptionalJson(k.enabled_at);
  j["primary_at"] = OptionalJson(k.primary_at);
  j["decrypt_only_at"] = OptionalJson(k.decrypt_only_at);
  j["retired_at"] = OptionalJson(k.retired_at);
  j["destroyed_at"] = OptionalJson(k.destroyed_at);
  return j;
}

void PrintKeyTable(const std::vector<KeyRecord>& keys) {
  if (keys.empty()) {
    std::printf("the keyring is empty; create a key with `rekey keys create`\n");
    return;
  }
  std::printf("%-10s %-16s %-12s %-8s %-24s %-10s %-8s %s\n", "ID", "SCOPE", "STATUS", "PROVIDER",
              "KMS KEY REF", "AGE", "MAX AGE", "CREATED");
  for (const KeyRecord& k : keys) {
    std::string age = FormatDuration(k.age);
    if (k.max_age && k.age > *k.max_age) age += " (!)";
    std::printf("%-10u %-16s %-12s %-8s %-24s %-10s %-8s %s\n", k.key_id, k.scope.c_str(),
                keyring::KeyStatusName(k.status), k.kms_provider.c_str(), k.kms_key_ref.c_str(),
                age.c_str(), k.max_age ? FormatDuration(*k.max_age).c_str() : "-",
                k.created_at.c_str());
  }
}

// `rekey keys rewrap`: see keyring/rewrap.h and docs/kms.md.
void Rewrap(const GlobalOptions& global, const KeysOptions& o) {
  std::vector<uint32_t> ids;
  for (int64_t id : o.key_ids) ids.push_back(CheckedKeyId(id));
  std::unique_ptr<pqxx::connection> conn =
      db::Connect(db::ResolveConnInfo(global.db), "rekey-keys");
  const std::string to_provider =
      o.to_kms.empty() ? keyring::CurrentProvider(*conn, ids) : o.to_kms;
  // Fails here, before any key is touched, if the destination key is unusable.
  const keyring::RewrapDestination destination =
      keyring::MakeRewrapDestination(to_provider, o.to_kms_key);
  keyring::SourceClients sources(destination);

  int rewrapped = 0, skipped = 0;
  keyring::RewrapKeys(
      *conn, *destination.client, destination.key_ref, std::ref(sources), ids,
      [&](const keyring::RewrapOutcome& r) {
        switch (r.what) {
          case keyring::RewrapOutcome::What::kRewrapped:
            rewrapped++;
            std::printf("key %u: re-wrapped %s -> %s\n", r.key_id, r.from.c_str(), r.to.c_str());
            break;
          case keyring::RewrapOutcome::What::kAlreadyThere:
            skipped++;
            std::printf("key %u: already under %s, skipped\n", r.key_id, r.to.c_str());
            break;
          case keyring::RewrapOutcome::What::kDestroyed:
            skipped++;
            std::printf("key %u: destroyed, skipped\n", r.key_id);
            break;
        }
        std::fflush(stdout);
      });
  std::printf("re-wrapped %d key(s) under %s:%s, %d skipped; no data row was touched\n", rewrapped,
              destination.client->provider().c_str(), destination.key_ref.c_str(), skipped);
}

}  // namespace

void AddKeysCommand(CLI::App& app, GlobalOptions& global) {
  auto o = std::make_shared<KeysOptions>();
  CLI::App* keys = app.add_subcommand(
      "keys", "Manage the keyring: data keys in rekey.keys and their lifecycle (docs/keyring.md)");
  keys->require_subcommand(1);

  CLI::App* create =
      keys->add_subcommand("create", "Generate a data key, wrap it with the KMS, status enabled");
  create->add_option("--scope", o->scope, "Tenant or purpose the key belongs to")
      ->capture_default_str();
  CLI::Option* create_key_id =
      create->add_option("--key-id", o->key_id, "Key id (default: one more than the largest)");
  create->add_option("--max-age", o->max_age, "Rotate after this long, e.g. 90d (s, m, h, d, w)");
  create->add_option("--kms", o->kms, "KMS provider that wraps the key")->capture_default_str();
  create->callback([o, &global, create_key_id] {
    keyring::CreateKeyOptions options;
    options.scope = o->scope;
    if (create_key_id->count() > 0) options.key_id = CheckedKeyId(o->key_id);
    if (!o->max_age.empty()) {
      options.max_age = std::chrono::duration_cast<std::chrono::seconds>(
          ParseDuration(o->max_age, "--max-age", KeyAgeRules()));
    }
    std::unique_ptr<kms::KmsClient> kms = kms::MakeKmsClient(o->kms);
    KeyRecord key;
    InTransaction(
        global, [&](pqxx::transaction_base& txn) { key = keyring::CreateKey(txn, *kms, options); });
    std::printf(
        "created key %u in scope %s (enabled, wrapped by %s); make it primary with "
        "`rekey keys promote %u`\n",
        key.key_id, key.scope.c_str(), key.kms_key_ref.c_str(), key.key_id);
  });

  CLI::App* import_cmd = keys->add_subcommand(
      "import",
      "Import data keys from a file or stdin: one key under --key-id (--format raw: 32 bytes or "
      "their base64; --format fernet: Fernet.generate_key()'s text; --format rails: one "
      "primary_key with key_derivation_salt and hash_digest_class; --format lockbox: "
      "Lockbox.generate_key()'s 64 hex digits) or every key of an "
      "application's key file (--format tink-keyset)");
  import_cmd->add_option("--key-id", o->key_id,
                         "--format raw: the key's id (as in its existing ciphertexts); --format "
                         "cloak: the first key's id (default: each key's fingerprint)");
  import_cmd->add_option("--scope", o->scope, "Tenant or purpose the keys belong to")
      ->capture_default_str();
  import_cmd->add_option("--kms", o->kms, "KMS provider that wraps the keys")
      ->capture_default_str();
  import_cmd->add_option("--kms-key", o->kms_key,
                         "--format tink-keyset: the --kms key an encrypted keyset was encrypted "
                         "under (default: the provider's key)");
  import_cmd->add_option("--format", o->format, "Key file format")
      ->capture_default_str()
      ->check(CLI::IsMember(KeyFormatNames(/*exportable=*/false)));
  import_cmd->add_flag("--promote", o->promote,
                       "Make the file's primary key the scope's primary even if the scope has one "
                       "(it becomes decrypt_only)");
  CLI::Option* file = import_cmd->add_option("--file", o->file, "File holding the key(s)");
  CLI::Option* from_stdin =
      import_cmd->add_flag("--stdin", o->use_stdin, "Read the key(s) from stdin");
  file->excludes(from_stdin);
  import_cmd->callback([o, &global] {
    if (o->file.empty() && !o->use_stdin) {
      throw ConfigError("rekey keys import needs --file PATH or --stdin (keys are never flags)");
    }
    const KeyFormat& format = FindKeyFormat(o->format);
    if (format.read) {
      ImportKeyFile(global, *o, format);
      return;
    }
    if (o->key_id < 0) {
      throw ConfigError("rekey keys import --format " + std::string(format.name) +
                        " needs --key-id N");
    }
    if (!o->kms_key.empty()) {
      throw ConfigError(
          "--kms-key names the KMS key of an encrypted key file (--format "
          "tink-keyset); a " +
          std::string(format.name) + " key is wrapped by --kms's own key");
    }
    uint32_t key_id = CheckedKeyId(o->key_id);
    std::unique_ptr<kms::KmsClient> kms = kms::MakeKmsClient(o->kms);
    std::string contents = ReadInput(*o);
    Secret raw = format.read_one(contents);
    KeyRecord key;
    InTransaction(global, [&](pqxx::transaction_base& txn) {
      key = keyring::ImportKey(txn, *kms, key_id, o->scope, raw);
    });
    std::printf("imported key %u in scope %s (enabled, wrapped by %s)\n", key.key_id,
                key.scope.c_str(), key.kms_key_ref.c_str());
  });

  CLI::App* export_cmd = keys->add_subcommand(
      "export",
      "Write a scope's decryptable keys as an application's key file, its primary the file's "
      "primary (encrypted under the KMS unless --cleartext)");
  export_cmd->add_option("--format", o->format, "Key file format")
      ->required()
      ->check(CLI::IsMember(KeyFormatNames(/*exportable=*/true)));
  export_cmd->add_option("--scope", o->scope, "The scope whose keys to export")
      ->capture_default_str();
  export_cmd->add_option("--kms", o->kms, "KMS whose key encrypts the file")->capture_default_str();
  export_cmd->add_option("--kms-key", o->kms_key,
                         "The --kms key that encrypts the file (AWS: key ARN or alias; Vault: "
                         "<mount>/keys/<name> of a non-derived key; default: the provider's key)");
  export_cmd->add_flag("--cleartext", o->cleartext,
                       "Write the key material in the clear (a warning on stderr)");
  export_cmd->add_flag("--binary", o->binary, "The format's binary form instead of JSON");
  export_cmd->add_option("--output", o->output,
                         "Write to this file (mode 0600, replaced whole) instead of stdout");
  export_cmd->callback([o, &global] { ExportKeyFile(global, *o, FindKeyFormat(o->format)); });

  CLI::App* list = keys->add_subcommand("list", "Show the keyring (never key material)");
  list->add_flag("--json", o->json, "One JSON array instead of a table");
  list->callback([o, &global] {
    std::vector<KeyRecord> all;
    InTransaction(global, [&](pqxx::transaction_base& txn) { all = keyring::ListKeys(txn); });
    if (o->json) {
      nlohmann::json j = nlohmann::json::array();
      for (const KeyRecord& k : all) j.push_back(KeyJson(k));
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      PrintKeyTable(all);
    }
  });

  CLI::App* promote = keys->add_subcommand(
      "promote",
      "Make a key its scope's primary (after checking it unwraps); the old primary becomes "
      "decrypt_only");
  promote->add_option("id", o->key_id, "Key id")->required();
  promote->callback([o, &global] {
    uint32_t key_id = CheckedKeyId(o->key_id);
    keyring::PromoteResult result;
    InTransaction(global, [&](pqxx::transaction_base& txn) {
      // New values will be encrypted under the primary, so it must unwrap here and now: a key
      // wrapped under another master key would otherwise stop every writer and worker.
      KeyRecord key = keyring::GetKey(txn, key_id);
      if (key.wrapped_key) {
        std::unique_ptr<kms::KmsClient> kms = kms::MakeKmsClient(key.kms_provider);
        kms->UnwrapDataKey(key.key_id, key.kms_key_ref, *key.wrapped_key);
      }
      result = keyring::PromoteKey(txn, key_id);
    });
    std::string demoted =
        result.demoted ? "; key " + std::to_string(*result.demoted) + " is now decrypt_only" : "";
    std::printf("promoted key %u to primary of scope %s%s\n", key_id, result.promoted.scope.c_str(),
                demoted.c_str());
  });

  CLI::App* rewrap = keys->add_subcommand(
      "rewrap",
      "Master-key rotation: re-wrap data keys under another KMS key or provider; no data row is "
      "touched; resumable (docs/kms.md)");
  rewrap
      ->add_option("--to-kms-key", o->to_kms_key,
                   "Destination KMS key (AWS: key ARN, key id or alias; local: the new master "
                   "key's ref)")
      ->required();
  rewrap
      ->add_option("--to-kms", o->to_kms,
                   "Destination provider (default: the provider the keys use now)")
      ->check(CLI::IsMember({"local", "aws-kms", "vault-transit"}));
  rewrap->add_option("--key-id", o->key_ids, "Only these keys (repeatable; default: every key)");
  rewrap->callback([o, &global] { Rewrap(global, *o); });

  CLI::App* usage = keys->add_subcommand(
      "usage",
      "Every column of the database holding values under a key, or that could not be read (one "
      "sequential scan of every table with a bytea or text column)");
  usage->add_option("id", o->key_id, "Key id")->required();
  usage->add_flag("--json", o->json, "One JSON object instead of a table");
  usage->callback([o, &global] { Usage(global, *o); });

  const std::string accept_help =
      "A column the census cannot read (no privilege, row-level security, foreign table) that "
      "holds no value under the key, as schema.table.column; repeatable; audited";

  CLI::App* retire = keys->add_subcommand(
      "retire",
      "Retire a key no column of the database uses any more (reversible until destroyed)");
  retire->add_option("id", o->key_id, "Key id")->required();
  retire->add_option("--accept-unknown", o->accept_unknown, accept_help);
  retire->callback([o, &global] {
    uint32_t key_id = CheckedKeyId(o->key_id);
    InCensusTransaction(global, [&](pqxx::transaction_base& txn) {
      AcceptTrialCounted(global, txn, key_id, o->accept_unknown);
      keyring::TransitionKey(txn, key_id, KeyStatus::kRetired);
    });
    std::printf("retired key %u\n", key_id);
  });

  CLI::App* forget = keys->add_subcommand(
      "forget-target",
      "Stop a registered target whose table or column was dropped from blocking retire and "
      "destroy (audited)");
  forget->add_option("id", o->key_id, "Target id (as retire, destroy and usage name it)")
      ->required();
  forget->add_option("--reason", o->reason, "Why its values are gone, for the audit log");
  forget->add_flag("--yes", o->yes, "Confirm: the target's values are truly gone");
  forget->callback([o, &global] {
    if (!o->yes) {
      throw ConfigError("forgetting target " + std::to_string(o->key_id) +
                        " stops it from blocking retire and destroy; re-run with --yes once "
                        "you are sure its values are gone");
    }
    std::string done;
    InTransaction(global, [&](pqxx::transaction_base& txn) {
      done = keyring::ForgetTarget(txn, o->key_id, o->reason);
    });
    std::printf("%s\n", done.c_str());
  });

  CLI::App* destroy = keys->add_subcommand(
      "destroy", "Erase a retired key's wrapped key for ever (crypto-shredding)");
  destroy->add_option("id", o->key_id, "Key id")->required();
  destroy->add_flag("--yes", o->yes,
                    "Confirm: values still encrypted under the key become unreadable");
  destroy->add_option("--accept-unknown", o->accept_unknown, accept_help);
  destroy->callback([o, &global] {
    uint32_t key_id = CheckedKeyId(o->key_id);
    if (!o->yes) {
      throw ConfigError("destroying key " + std::to_string(key_id) +
                        " erases it for ever; re-run with --yes to confirm");
    }
    KeyRecord before;
    InCensusTransaction(global, [&](pqxx::transaction_base& txn) {
      AcceptTrialCounted(global, txn, key_id, o->accept_unknown);
      before = keyring::GetKey(txn, key_id);
      keyring::TransitionKey(txn, key_id, KeyStatus::kDestroyed);
    });
    // Erasing the row does not erase its copies: say where the wrapped key still lives and what
    // completes the shredding (docs/keyring.md, "Destroy").
    std::printf(
        "destroyed key %u: its wrapped key is erased from rekey.keys, but copies survive in WAL, "
        "base backups, replicas and logical dumps until they age out; crypto-shredding is "
        "complete only once the %s master key that wrapped it (%s) is retired in the KMS, or "
        "every backup holding the wrapped key has expired\n",
        key_id, before.kms_provider.c_str(), before.kms_key_ref.c_str());
  });
}

}  // namespace rekey::cli
