#pragma once
// Unicode NFC normalization used by the tokenizers (UTF-8 helpers live in common/utf8.h).

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "dpserve/common/utf8.h"

namespace dpserve {

// Unicode Normalization Form C of valid UTF-8 `s` (canonical decomposition, canonical ordering,
// canonical composition; data from gen_unicode_tables.py).
std::string nfc_normalize(std::string_view s);

namespace unicode_tables {
// A canonical decomposition: cp -> first [second] (second 0 for singletons).
struct DecompEntry {
  char32_t cp, first, second;
};
// A run of code points sharing a non-zero canonical combining class.
struct CccRange {
  char32_t first, last;
  uint8_t ccc;
};
// A primary composite: first + second -> composite.
struct ComposeEntry {
  char32_t first, second, composite;
};
extern const DecompEntry kDecomp[];
extern const size_t kDecomp_size;
extern const CccRange kCcc[];
extern const size_t kCcc_size;
extern const ComposeEntry kCompose[];
extern const size_t kCompose_size;
}  // namespace unicode_tables

}  // namespace dpserve
