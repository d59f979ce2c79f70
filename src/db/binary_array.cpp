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

pqxx::binarystring BinaryArray::Finish() const {
  // The header: one dimension, whether any element is NULL, the element type, then the
  // dimension's length and lower bound (1).
  std::string out;
  out.reserve(20 + body_.size());
  PutInt32(1, &out);
  PutInt32(has_null_ ? 1 : 0, &out);
  PutInt32(element_oid_, &out);
  PutInt32(count_, &out);
  PutInt32(1, &out);
  out += body_;
  return pqxx::binarystring(out.data(), out.size());
}

}  // namespace rekey::db
