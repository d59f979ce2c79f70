#include "db/binary_array.h"

#include "common/bytes.h"

namespace rekey::db {
namespace {

void PutInt32(int32_t v, std::string* out) {
  uint8_t be[4];
  PutUint32BigEndian(uint32_t(v), be);
  out->append(reinterpret_cast<const char*>(be), sizeof be);
}

}  // namespace

void BinaryArray::Append(const uint8_t* data, size_t size) {
  PutInt32(int32_t(size), &body_);
  body_.append(reinterpret_cast<const char*>(data), size);
  ++count_;
}

void BinaryArray::AppendNull() {
  PutInt32(-1, &body_);
  has_null_ = true;
  ++count_;
}

void BinaryArray::WriteHeader(uint8_t* out) const {
  // One dimension, whether any element is NULL, the element type, then the dimension's length
  // and lower bound (1).
  const int32_t fields[] = {1, has_null_ ? 1 : 0, element_oid_, count_, 1};
  for (int32_t field : fields) {
    PutUint32BigEndian(uint32_t(field), out);
    out += 4;
  }
}

pqxx::binarystring BinaryArray::Finish() const {
  std::string out = body_;
  WriteHeader(reinterpret_cast<uint8_t*>(out.data()));
  return pqxx::binarystring(out.data(), out.size());
}

std::string_view BinaryArray::Serialized() {
  WriteHeader(reinterpret_cast<uint8_t*>(body_.data()));
  return body_;
}

}  // namespace rekey::db
