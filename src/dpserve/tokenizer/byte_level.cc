// Byte-level alphabet tables.

#include "dpserve/tokenizer/byte_level.h"

#include <array>

#include "dpserve/tokenizer/unicode.h"

namespace dpserve {
namespace {

struct ByteLevelTables {
  std::array<std::string, 256> byte_to_utf8;  // byte -> UTF-8 of its character
  std::array<int16_t, 512> char_to_byte;      // code point (< 512) -> byte, or -1

  ByteLevelTables() {
    char_to_byte.fill(-1);
    // Printable bytes stand for themselves; the rest get code points from 256 upwards in order.
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t cp = printable ? static_cast<char32_t>(b) : next++;
      append_utf8(byte_to_utf8[b], cp);
      char_to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelTables& tables() {
  static const ByteLevelTables t;
  return t;
}

}  // namespace

void byte_level_encode(std::string_view bytes, std::string& out) {
  const auto& t = tables();
  for (unsigned char b : bytes) out += t.byte_to_utf8[b];
}

std::optional<std::string> byte_level_decode(std::string_view token) {
  const auto& t = tables();
  std::string out;
  out.reserve(token.size());
  size_t pos = 0;
  while (pos < token.size()) {
    const char32_t cp = next_code_point(token, pos);
    if (cp >= 512 || t.char_to_byte[cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(t.char_to_byte[cp]));
  }
  return out;
}

}  // namespace dpserve
