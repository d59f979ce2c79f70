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

  explicit BinaryArray(int32_t element_oid = kByteaOid) : element_oid_(element_oid) {}

  void Append(const uint8_t* data, size_t size);
  void Append(std::string_view value) {
    Append(reinterpret_cast<const uint8_t*>(value.data()), value.size());
  }
  void AppendNull();

  int32_t size() const { return count_; }

  // The parameter: usable as $n::bytea[] (or $n::text[]) with libpqxx's binary parameters.
  pqxx::binarystring Finish() const;

 private:
  int32_t element_oid_;
  std::string body_;  // the elements so far, each its length (-1 for NULL) and bytes
  int32_t count_ = 0;
  bool has_null_ = false;
};

}  // namespace rekey::db
