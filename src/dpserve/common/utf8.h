#pragma once
// UTF-8 helpers shared by the tokenizers, the chat template engine and request validation.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dpserve {

// Length in bytes of a UTF-8 sequence from its lead byte (1 for invalid lead bytes).
inline size_t utf8_seq_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;
}

// Appends the UTF-8 encoding of code point `cp` to `out`.
void append_utf8(std::string& out, char32_t cp);

// Decodes the code point at s[pos] and advances pos; invalid bytes yield U+FFFD and advance by one
// (or by the length of the maximal invalid subpart).
char32_t next_code_point(std::string_view s, size_t& pos);

// True when `s` is well-formed UTF-8.
bool is_valid_utf8(std::string_view s);

// `s` with every maximal ill-formed subsequence replaced by U+FFFD (like a lossy UTF-8 decoder).
std::string sanitize_utf8(std::string_view s);

// Number of trailing bytes of `s` that start a UTF-8 sequence that is not complete yet (0..3).
size_t incomplete_utf8_suffix(std::string_view s);

// True when `s` ends with U+FFFD (what lossy decoding makes of a cut-off multi-byte character).
bool ends_with_replacement_char(std::string_view s);

}  // namespace dpserve
