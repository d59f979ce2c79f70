#include "db/bytea.h"

#include <array>

namespace rekey::db {

bool DecodeByteaHex(const pqxx::field& field, Bytes* out) {
  static const auto kValues = [] {
    std::array<int8_t, 256> v{};
    v.fill(-1);
    for (int c = 0; c < 10; ++c) v['0' + c] = int8_t(c);
    for (int c = 0; c < 6; ++c) v['a' + c] = v['A' + c] = int8_t(10 + c);
    return v;
  }();
  const char* text = field.c_str();
  const size_t size = field.size();
  if (size < 2 || text[0] != '\\' || text[1] != 'x' || size % 2 != 0) return false;
  const size_t n = (size - 2) / 2;
  out->resize(n);
  const auto* in = reinterpret_cast<const uint8_t*>(text + 2);
  for (size_t i = 0; i < n; ++i) {
    const int hi = kValues[in[2 * i]];
    const int lo = kValues[in[2 * i + 1]];
    if ((hi | lo) < 0) return false;
    (*out)[i] = uint8_t(hi << 4 | lo);
  }
  return true;
}

void ReadBytea(const pqxx::field& field, Bytes* out) {
  if (DecodeByteaHex(field, out)) return;
  const pqxx::binarystring escaped(field);
  out->assign(escaped.data(), escaped.data() + escaped.size());
}

}  // namespace rekey::db
