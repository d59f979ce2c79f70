#include "keyring/tink_keyset.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "common/error.h"

namespace rekey::keyring::tink {

namespace {

constexpr size_t kAesGcmKeySize = 32;
constexpr char kWhatToDo[] =
    "rekey adopts AES-256-GCM keys with output prefix TINK only; rotate the keyset to such a key "
    "in Tink (or remove this key if no value needs it) and import again";

// A malformed message; the caller turns it into a KeyError naming the form it expected.
struct Malformed {
  std::string what;
};

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

struct Field {
  uint32_t number = 0;
  WireType type = kVarint;
  uint64_t varint = 0;
  std::string_view bytes;  // kLengthDelimited only
};

// Reads the fields of one message in order; skips nothing itself (callers ignore unknown numbers).
class ProtoReader {
 public:
  explicit ProtoReader(std::string_view data) : data_(data) {}

  bool Next(Field* f) {
    if (at_ == data_.size()) return false;
    uint64_t tag = Varint();
    f->number = static_cast<uint32_t>(tag >> 3);
    f->type = static_cast<WireType>(tag & 7);
    if (f->number == 0) throw Malformed{"field number 0"};
    switch (f->type) {
      case kVarint:
        f->varint = Varint();
        break;
      case kLengthDelimited: {
        uint64_t size = Varint();
        if (size > data_.size() - at_) throw Malformed{"a field runs past the end"};
        f->bytes = data_.substr(at_, size);
        at_ += size;
        break;
      }
      case kFixed64:
      case kFixed32: {
        size_t size = f->type == kFixed64 ? 8 : 4;
        if (size > data_.size() - at_) throw Malformed{"a field runs past the end"};
        at_ += size;
        break;
      }
      default:
        throw Malformed{"wire type " + std::to_string(f->type) + " (groups are not used by Tink)"};
    }
    return true;
  }

 private:
  uint64_t Varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (at_ == data_.size()) throw Malformed{"a varint runs past the end"};
      uint8_t byte = static_cast<uint8_t>(data_[at_++]);
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) return value;
    }
    throw Malformed{"a varint longer than 10 bytes"};
  }

  std::string_view data_;
  size_t at_ = 0;
};

uint32_t Uint32(const Field& f, const char* name) {
  if (f.type != kVarint) throw Malformed{std::string(name) + " is not a varint"};
  // uint32 fields are varints of at most 32 bits; enums too (negative values are not Tink's).
  if (f.varint > 0xffffffffULL) throw Malformed{std::string(name) + " exceeds 32 bits"};
  return static_cast<uint32_t>(f.varint);
}

std::string_view Delimited(const Field& f, const char* name) {
  if (f.type != kLengthDelimited) throw Malformed{std::string(name) + " is not length-delimited"};
  return f.bytes;
}

// Appends to a buffer that may hold key material; the owner wipes it (WipeAndClear).
class ProtoWriter {
 public:
  void Uint(uint32_t number, uint64_t value) {
    if (value == 0) return;  // proto3: a zero scalar is not written
    Tag(number, kVarint);
    Varint(value);
  }
  void Delimited(uint32_t number, const uint8_t* data, size_t size) {
    Tag(number, kLengthDelimited);
    Varint(size);
    out_.insert(out_.end(), data, data + size);
  }
  void Delimited(uint32_t number, std::string_view s) {
    Delimited(number, reinterpret_cast<const uint8_t*>(s.data()), s.size());
  }
  void Delimited(uint32_t number, const Bytes& b) { Delimited(number, b.data(), b.size()); }
  Bytes& out() { return out_; }

 private:
  void Tag(uint32_t number, WireType type) { Varint((static_cast<uint64_t>(number) << 3) | type); }
  void Varint(uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<uint8_t>(v | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<uint8_t>(v));
  }
  Bytes out_;
};

std::string_view View(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

Secret ToSecret(Bytes* buffer) {
  Secret s(buffer->data(), buffer->size());
  WipeAndClear(buffer);
  return s;
}

// Keyset.Key, its key_data included.
Key ParseKey(std::string_view data) {
  Key key;
  ProtoReader r(data);
  for (Field f; r.Next(&f);) {
    switch (f.number) {
      case 1: {
        ProtoReader kd(Delimited(f, "key_data"));
        for (Field g; kd.Next(&g);) {
          if (g.number == 1) key.type_url = std::string(Delimited(g, "type_url"));
          if (g.number == 2) {
            std::string_view v = Delimited(g, "key_data.value");
            key.value = Secret(reinterpret_cast<const uint8_t*>(v.data()), v.size());
          }
          if (g.number == 3)
            key.material = static_cast<KeyMaterial>(Uint32(g, "key_material_type"));
        }
        break;
      }
      case 2:
        key.status = static_cast<KeyStatus>(Uint32(f, "status"));
        break;
      case 3:
        key.key_id = Uint32(f, "key_id");
        break;
      case 4:
        key.prefix = static_cast<OutputPrefix>(Uint32(f, "output_prefix_type"));
        break;
      default:
        break;
    }
  }
  return key;
}

// KeysetInfo.KeyInfo: the key's fields without key_data, its type URL at field 1.
Key ParseKeyInfo(std::string_view data) {
  Key key;
  ProtoReader r(data);
  for (Field f; r.Next(&f);) {
    if (f.number == 1) key.type_url = std::string(Delimited(f, "type_url"));
    if (f.number == 2) key.status = static_cast<KeyStatus>(Uint32(f, "status"));
    if (f.number == 3) key.key_id = Uint32(f, "key_id");
    if (f.number == 4) key.prefix = static_cast<OutputPrefix>(Uint32(f, "output_prefix_type"));
  }
  return key;
}

// Keyset and KeysetInfo share their shape: primary id at 1, repeated keys at 2.
template <typename ParseOne>
Keyset ParseKeysetShape(std::string_view data, ParseOne parse_one) {
  Keyset keyset;
  ProtoReader r(data);
  for (Field f; r.Next(&f);) {
    if (f.number == 1) keyset.primary_key_id = Uint32(f, "primary_key_id");
    if (f.number == 2) keyset.keys.push_back(parse_one(Delimited(f, "key")));
  }
  return keyset;
}

Keyset ParseKeysetBinary(std::string_view data) {
  Keyset keyset = ParseKeysetShape(data, ParseKey);
  if (keyset.keys.empty()) throw Malformed{"no key"};
  return keyset;
}

EncryptedKeyset ParseEncryptedBinary(std::string_view data) {
  EncryptedKeyset e;
  bool sealed = false;
  ProtoReader r(data);
  for (Field f; r.Next(&f);) {
    if (f.number == 2) {
      std::string_view v = Delimited(f, "encrypted_keyset");
      e.encrypted_keyset.assign(v.begin(), v.end());
      sealed = true;
    }
    if (f.number == 3) e.info = ParseKeysetShape(Delimited(f, "keyset_info"), ParseKeyInfo);
  }
  if (!sealed) throw Malformed{"no encrypted_keyset"};
  return e;
}

bool HasField(std::string_view data, uint32_t number) {
  ProtoReader r(data);
  for (Field f; r.Next(&f);) {
    if (f.number == number) return true;
  }
  return false;
}

// A Keyset whose every key has a type URL: what a cleartext keyset looks like, and what the
// sealed bytes of an EncryptedKeyset (random-looking) practically never do.
bool ReadsAsKeyset(std::string_view data) {
  try {
    Keyset k = ParseKeysetBinary(data);
    return std::all_of(k.keys.begin(), k.keys.end(),
                       [](const Key& key) { return !key.type_url.empty(); });
  } catch (const Malformed&) {
    return false;
  }
}

// --- JSON ---

template <typename Enum, size_t N>
struct EnumNames {
  std::array<std::pair<Enum, const char*>, N> names;
  const char* Name(Enum e) const {
    for (const auto& [value, name] : names) {
      if (value == e) return name;
    }
    return names[0].second;
  }
  Enum Parse(const nlohmann::json& j, const char* field) const {
    if (j.is_number_unsigned()) return static_cast<Enum>(j.get<uint32_t>());
    if (j.is_string()) {
      for (const auto& [value, name] : names) {
        if (j.get<std::string>() == name) return value;
      }
    }
    throw Malformed{std::string(field) + " is not one of Tink's names"};
  }
};

const EnumNames<KeyStatus, 4> kStatusNames{{{{KeyStatus::kUnknown, "UNKNOWN_STATUS"},
                                             {KeyStatus::kEnabled, "ENABLED"},
                                             {KeyStatus::kDisabled, "DISABLED"},
                                             {KeyStatus::kDestroyed, "DESTROYED"}}}};
const EnumNames<OutputPrefix, 5> kPrefixNames{{{{OutputPrefix::kUnknown, "UNKNOWN_PREFIX"},
                                                {OutputPrefix::kTink, "TINK"},
                                                {OutputPrefix::kLegacy, "LEGACY"},
                                                {OutputPrefix::kRaw, "RAW"},
                                                {OutputPrefix::kCrunchy, "CRUNCHY"}}}};
const EnumNames<KeyMaterial, 5> kMaterialNames{
    {{{KeyMaterial::kUnknown, "UNKNOWN_KEYMATERIAL"},
      {KeyMaterial::kSymmetric, "SYMMETRIC"},
      {KeyMaterial::kAsymmetricPrivate, "ASYMMETRIC_PRIVATE"},
      {KeyMaterial::kAsymmetricPublic, "ASYMMETRIC_PUBLIC"},
      {KeyMaterial::kRemote, "REMOTE"}}}};

// A uint32 of the proto3 JSON mapping: a number, or its decimal text.
uint32_t JsonUint32(const nlohmann::json& object, const char* field) {
  auto it = object.find(field);
  if (it == object.end() || it->is_null()) return 0;
  if (it->is_number_unsigned() && it->get<uint64_t>() <= 0xffffffffULL) return it->get<uint32_t>();
  if (it->is_string()) {
    const std::string& s = it->get_ref<const std::string&>();
    if (!s.empty() && s.size() <= 10 &&
        std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit(c); }) &&
        std::stoull(s) <= 0xffffffffULL) {
      return static_cast<uint32_t>(std::stoull(s));
    }
  }
  throw Malformed{std::string(field) + " is not a uint32"};
}

std::string JsonString(const nlohmann::json& object, const char* field) {
  auto it = object.find(field);
  if (it == object.end() || it->is_null()) return "";
  if (!it->is_string()) throw Malformed{std::string(field) + " is not a string"};
  return it->get<std::string>();
}

template <typename Enum, size_t N>
Enum JsonEnum(const nlohmann::json& object, const char* field, const EnumNames<Enum, N>& names) {
  auto it = object.find(field);
  if (it == object.end() || it->is_null()) return static_cast<Enum>(0);
  return names.Parse(*it, field);
}

// Fills the fields KeyInfo and Keyset.Key share.
void KeyFieldsFromJson(const nlohmann::json& j, Key* key) {
  if (!j.is_object()) throw Malformed{"a key is not an object"};
  key->status = JsonEnum(j, "status", kStatusNames);
  key->key_id = JsonUint32(j, "keyId");
  key->prefix = JsonEnum(j, "outputPrefixType", kPrefixNames);
}

// The base64 of key material, decoded into a Secret; the JSON's copy is wiped.
Secret TakeBase64(nlohmann::json& object, const char* field) {
  auto it = object.find(field);
  if (it == object.end() || !it->is_string()) throw Malformed{std::string(field) + " is missing"};
  std::string& text = it->get_ref<std::string&>();
  std::optional<Bytes> decoded = Base64Decode(text);
  WipeAndClear(&text);
  if (!decoded) throw Malformed{std::string(field) + " is not base64"};
  return ToSecret(&*decoded);
}

Keyset KeysetFromJson(nlohmann::json& j) {
  Keyset keyset;
  keyset.primary_key_id = JsonUint32(j, "primaryKeyId");
  auto keys = j.find("key");
  if (keys == j.end() || !keys->is_array() || keys->empty()) throw Malformed{"no key"};
  for (nlohmann::json& k : *keys) {
    Key key;
    KeyFieldsFromJson(k, &key);
    auto data = k.find("keyData");
    if (data != k.end() && !data->is_null()) {
      if (!data->is_object()) throw Malformed{"keyData is not an object"};
      key.type_url = JsonString(*data, "typeUrl");
      key.value = TakeBase64(*data, "value");
      key.material = JsonEnum(*data, "keyMaterialType", kMaterialNames);
    }
    keyset.keys.push_back(std::move(key));
  }
  return keyset;
}

EncryptedKeyset EncryptedFromJson(nlohmann::json& j) {
  EncryptedKeyset e;
  Secret sealed = TakeBase64(j, "encryptedKeyset");
  e.encrypted_keyset.assign(sealed.data(), sealed.data() + sealed.size());
  auto info = j.find("keysetInfo");
  if (info != j.end() && info->is_object()) {
    e.info.primary_key_id = JsonUint32(*info, "primaryKeyId");
    auto keys = info->find("keyInfo");
    if (keys != info->end() && keys->is_array()) {
      for (const nlohmann::json& k : *keys) {
        Key key;
        KeyFieldsFromJson(k, &key);
        key.type_url = JsonString(k, "typeUrl");
        e.info.keys.push_back(std::move(key));
      }
    }
  }
  return e;
}

nlohmann::json KeyInfoJson(const Key& key) {
  return {{"typeUrl", key.type_url},
          {"status", kStatusNames.Name(key.status)},
          {"keyId", key.key_id},
          {"outputPrefixType", kPrefixNames.Name(key.prefix)}};
}

Keyset InfoOf(const Keyset& keyset) {
  Keyset info;
  info.primary_key_id = keyset.primary_key_id;
  for (const Key& key : keyset.keys) {
    Key k;
    k.type_url = key.type_url;
    k.status = key.status;
    k.key_id = key.key_id;
    k.prefix = key.prefix;
    info.keys.push_back(std::move(k));
  }
  return info;
}

// Keyset.Key (with key_data) or KeysetInfo.KeyInfo (type URL at field 1).
void WriteKey(ProtoWriter* w, const Key& key, bool info) {
  ProtoWriter k;
  if (info) {
    k.Delimited(1, key.type_url);
  } else {
    ProtoWriter data;
    data.Delimited(1, key.type_url);
    data.Delimited(2, key.value.data(), key.value.size());
    data.Uint(3, static_cast<uint32_t>(key.material));
    k.Delimited(1, data.out());
    WipeAndClear(&data.out());
  }
  k.Uint(2, static_cast<uint32_t>(key.status));
  k.Uint(3, key.key_id);
  k.Uint(4, static_cast<uint32_t>(key.prefix));
  w->Delimited(2, k.out());
  WipeAndClear(&k.out());
}

Bytes WriteKeysetShape(const Keyset& keyset, bool info) {
  ProtoWriter w;
  w.Uint(1, keyset.primary_key_id);
  for (const Key& key : keyset.keys) WriteKey(&w, key, info);
  return std::move(w.out());
}

std::string KeyName(const Key& key) {
  return "keyset key " + std::to_string(key.key_id);
}

// The 32-byte key of an AesGcmKey proto of version 0. Throws KeyError otherwise.
Secret AesGcmKeyValue(const Key& key) {
  uint32_t version = 0;
  std::string_view value;
  try {
    ProtoReader r(View(key.value.data(), key.value.size()));
    for (Field f; r.Next(&f);) {
      if (f.number == 1) version = Uint32(f, "version");
      if (f.number == 3) value = Delimited(f, "key_value");
    }
  } catch (const Malformed& m) {
    throw KeyError(KeyName(key) + ": its AesGcmKey does not parse (" + m.what +
                   "); export the keyset again from Tink");
  }
  if (version != 0) {
    throw KeyError(KeyName(key) + ": AesGcmKey version " + std::to_string(version) +
                   " is unknown to rekey (Tink writes 0); " + kWhatToDo);
  }
  if (value.size() != kAesGcmKeySize) {
    throw KeyError(KeyName(key) + " is AES-" + std::to_string(value.size() * 8) + "-GCM (a " +
                   std::to_string(value.size()) + "-byte key); " + kWhatToDo);
  }
  return Secret(reinterpret_cast<const uint8_t*>(value.data()), value.size());
}

Secret AesGcmKeyProto(const Secret& raw32) {
  ProtoWriter w;
  w.Delimited(3, raw32.data(), raw32.size());  // version 0 and empty params are not written
  return ToSecret(&w.out());
}

}  // namespace

KeysetFile ReadKeysetFile(std::string_view contents) {
  size_t first = contents.find_first_not_of(" \t\r\n");
  KeysetFile file;
  if (first != std::string_view::npos && contents[first] == '{') {
    std::string form = "a Tink keyset in JSON";
    try {
      nlohmann::json j = nlohmann::json::parse(contents);
      if (!j.is_object()) throw Malformed{"not an object"};
      if (j.contains("encryptedKeyset")) {
        form = "an encrypted Tink keyset in JSON";
        file.encrypted = EncryptedFromJson(j);
      } else {
        file.cleartext = KeysetFromJson(j);
      }
    } catch (const nlohmann::json::exception&) {
      throw KeyError("the file starts like JSON but is not valid JSON; give " + form +
                     " as Tink's JsonKeysetWriter writes it, or the binary keyset");
    } catch (const Malformed& m) {
      throw KeyError("the file is not " + form + " (" + m.what +
                     "); give the keyset as Tink's JsonKeysetWriter or BinaryKeysetWriter "
                     "writes it");
    }
    return file;
  }
  try {
    if (!HasField(contents, 3) && ReadsAsKeyset(contents)) {
      file.cleartext = ParseKeysetBinary(contents);
    } else {
      file.encrypted = ParseEncryptedBinary(contents);
    }
  } catch (const Malformed& m) {
    throw KeyError("the file is neither a Tink keyset in JSON nor a binary Tink keyset (" + m.what +
                   "); give the keyset as Tink's JsonKeysetWriter or BinaryKeysetWriter writes it");
  }
  return file;
}

Secret SerializeKeyset(const Keyset& keyset) {
  Bytes out = WriteKeysetShape(keyset, /*info=*/false);
  return ToSecret(&out);
}

Secret KeysetJson(const Keyset& keyset) {
  nlohmann::json keys = nlohmann::json::array();
  for (const Key& key : keyset.keys) {
    nlohmann::json k = KeyInfoJson(key);
    k.erase("typeUrl");
    k["keyData"] = {{"typeUrl", key.type_url},
                    {"value", Base64Encode(key.value.data(), key.value.size())},
                    {"keyMaterialType", kMaterialNames.Name(key.material)}};
    keys.push_back(std::move(k));
  }
  nlohmann::json j = {{"primaryKeyId", keyset.primary_key_id}, {"key", std::move(keys)}};
  std::string text = j.dump(2) + "\n";
  for (nlohmann::json& k : j["key"]) WipeAndClear(&k["keyData"]["value"].get_ref<std::string&>());
  Secret out(reinterpret_cast<const uint8_t*>(text.data()), text.size());
  WipeAndClear(&text);
  return out;
}

EncryptedKeyset EncryptKeyset(const Keyset& keyset, crypto::AesGcmKey& kek) {
  EncryptedKeyset e;
  Secret serialized = SerializeKeyset(keyset);
  kek.Seal(serialized.data(), serialized.size(), nullptr, 0, &e.encrypted_keyset);
  e.info = InfoOf(keyset);
  return e;
}

namespace {

Keyset ParseOpenedKeyset(Secret serialized) {
  try {
    return ParseKeysetBinary(View(serialized.data(), serialized.size()));
  } catch (const Malformed& m) {
    throw KeyError("the encrypted keyset opened but holds no Tink keyset (" + m.what +
                   "); export it again from Tink");
  }
}

}  // namespace

Keyset DecryptKeyset(const EncryptedKeyset& encrypted, crypto::AesGcmKey& kek) {
  Bytes plaintext;
  if (!kek.Open(encrypted.encrypted_keyset.data(), encrypted.encrypted_keyset.size(), nullptr, 0,
                &plaintext)) {
    throw KeyError(
        "the encrypted keyset does not open under this key-encryption key (another master key, or "
        "the file was altered); point REKEY_MASTER_KEY_FILE (or REKEY_MASTER_KEY) at the master "
        "key the keyset was encrypted with");
  }
  return ParseOpenedKeyset(ToSecret(&plaintext));
}

EncryptedKeyset EncryptKeyset(const Keyset& keyset, const KeysetKek& kek) {
  EncryptedKeyset e;
  e.encrypted_keyset = kek.kms->EncryptBlob(kek.key_ref, SerializeKeyset(keyset), Bytes());
  e.info = InfoOf(keyset);
  return e;
}

Keyset DecryptKeyset(const EncryptedKeyset& encrypted, const KeysetKek& kek) {
  Secret serialized;
  try {
    serialized = kek.kms->DecryptBlob(kek.key_ref, encrypted.encrypted_keyset, Bytes());
  } catch (const KeyError& e) {
    throw KeyError("the encrypted keyset does not open under this key-encryption key (" +
                   kek.kms->provider() + " key " + kek.key_ref + "): " + e.what() +
                   "; pass the --kms and --kms-key it was encrypted under");
  }
  return ParseOpenedKeyset(std::move(serialized));
}

Bytes SerializeEncryptedKeyset(const EncryptedKeyset& encrypted) {
  ProtoWriter w;
  w.Delimited(2, encrypted.encrypted_keyset);
  w.Delimited(3, WriteKeysetShape(encrypted.info, /*info=*/true));
  return std::move(w.out());
}

std::string EncryptedKeysetJson(const EncryptedKeyset& encrypted) {
  nlohmann::json keys = nlohmann::json::array();
  for (const Key& key : encrypted.info.keys) keys.push_back(KeyInfoJson(key));
  nlohmann::json j = {
      {"encryptedKeyset", Base64Encode(encrypted.encrypted_keyset)},
      {"keysetInfo", {{"primaryKeyId", encrypted.info.primary_key_id}, {"keyInfo", keys}}}};
  return j.dump(2) + "\n";
}

std::vector<ExchangedKey> AdoptableAesGcmKeys(const Keyset& keyset) {
  std::vector<ExchangedKey> adopted;
  std::set<uint32_t> seen;
  bool primary_found = false;
  for (const Key& key : keyset.keys) {
    if (!seen.insert(key.key_id).second) {
      throw KeyError(KeyName(key) +
                     " appears twice in the keyset; Tink key ids are unique: repair the keyset");
    }
    if (key.status == KeyStatus::kDestroyed) continue;  // no material left to adopt
    if (key.status != KeyStatus::kEnabled) {
      throw KeyError(KeyName(key) + " is " + kStatusNames.Name(key.status) +
                     ", and rekey has no such status; enable it in Tink if values under it must "
                     "stay readable, or remove it from the keyset, and import again");
    }
    if (key.type_url != kAesGcmTypeUrl) {
      throw KeyError(KeyName(key) + " is a " +
                     (key.type_url.empty() ? std::string("key without key data") : key.type_url) +
                     "; " + kWhatToDo);
    }
    if (key.prefix != OutputPrefix::kTink) {
      throw KeyError(KeyName(key) + " has output prefix " + kPrefixNames.Name(key.prefix) +
                     ", so its ciphertexts do not carry 0x01 || key id as rekey's do; " +
                     kWhatToDo);
    }
    ExchangedKey entry;
    entry.key_id = key.key_id;
    entry.key = AesGcmKeyValue(key);
    entry.primary = key.key_id == keyset.primary_key_id;
    primary_found = primary_found || entry.primary;
    adopted.push_back(std::move(entry));
  }
  if (adopted.empty()) {
    throw KeyError(
        "the keyset holds no key to adopt (every key is destroyed); export it again "
        "from Tink");
  }
  if (!primary_found) {
    throw KeyError("the keyset's primary key id " + std::to_string(keyset.primary_key_id) +
                   " names no enabled key of the keyset; set a primary in Tink and export again");
  }
  return adopted;
}

Keyset AesGcmKeyset(const std::vector<ExchangedKey>& keys) {
  Keyset keyset;
  int primaries = 0;
  for (const ExchangedKey& entry : keys) {
    if (entry.primary) {
      keyset.primary_key_id = entry.key_id;
      primaries++;
    }
    Key key;
    key.type_url = kAesGcmTypeUrl;
    key.value = AesGcmKeyProto(entry.key);
    key.material = KeyMaterial::kSymmetric;
    key.status = KeyStatus::kEnabled;
    key.key_id = entry.key_id;
    key.prefix = OutputPrefix::kTink;
    keyset.keys.push_back(std::move(key));
  }
  if (primaries != 1) {
    throw PermanentError("a Tink keyset needs exactly one primary key; got " +
                         std::to_string(primaries));
  }
  return keyset;
}

std::vector<ExchangedKey> KeysOfKeysetFile(std::string_view contents, const KekSource& kek) {
  KeysetFile file = ReadKeysetFile(contents);
  if (file.encrypted) {
    return AdoptableAesGcmKeys(DecryptKeyset(*file.encrypted, kek()));
  }
  return AdoptableAesGcmKeys(*file.cleartext);
}

Secret KeysetFileOf(const std::vector<ExchangedKey>& keys, bool cleartext, KeysetEncoding encoding,
                    const KekSource& kek) {
  Keyset keyset = AesGcmKeyset(keys);
  if (cleartext) {
    return encoding == KeysetEncoding::kJson ? KeysetJson(keyset) : SerializeKeyset(keyset);
  }
  EncryptedKeyset sealed = EncryptKeyset(keyset, kek());
  if (encoding == KeysetEncoding::kBinary) {
    Bytes out = SerializeEncryptedKeyset(sealed);
    return ToSecret(&out);
  }
  std::string text = EncryptedKeysetJson(sealed);
  return Secret(reinterpret_cast<const uint8_t*>(text.data()), text.size());
}

}  // namespace rekey::keyring::tink
