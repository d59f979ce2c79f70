// One-dimensional bytea[] and text[] query parameters in PostgreSQL's binary array format (what
// array_send writes and array_recv reads). Sent as a binary parameter, the server copies each
// element where it would parse a text literal (array_in, and byteain's hex for bytea), and the
// client neither hex-encodes nor escapes: an element may hold any bytes.
#pragma once

#include <pqxx/pqxx>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace rekey::db {

class BinaryArray {
 public:
  // Element types, by OID. A text element's binary form is its bytes, so one format serves both.
  static constexpr int32_t kByteaOid = 17;
  static constexpr int32_t kTextOid = 25;

  explicit BinaryArray(int32_t element_oid = kByteaOid)
      : element_oid_(element_oid), body_(kHeaderSize, '\0') {}

  void Append(const uint8_t* data, size_t size);
  void Append(std::string_view value) {
    Append(reinterpret_cast<const uint8_t*>(value.data()), value.size());
  }
  void AppendNull();

  int32_t size() const { return count_; }

  // The parameter: usable as $n::bytea[] (or $n::text[]) with libpqxx's binary parameters.
  pqxx::binarystring Finish() const;
  // The same bytes without a copy (for db::ExecBinary's BinaryParam::Binary), valid until the
  // next Append; a value of hundreds of MiB is then held once, not three times.
  std::string_view Serialized();

 private:
  static constexpr size_t kHeaderSize = 20;
  void WriteHeader(uint8_t* out) const;

  int32_t element_oid_;
  // The header's room (written by Serialized), then the elements so far, each its length (-1 for
  // NULL) and bytes.
  std::string body_;
  int32_t count_ = 0;
  bool has_null_ = false;
};

}  // namespace rekey::db
