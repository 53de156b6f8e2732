// PCRE2 wrapper.

#define PCRE2_CODE_UNIT_WIDTH 8
#include "dpserve/tokenizer/regex.h"

#include <pcre2.h>

#include <memory>

#include "dpserve/common/errors.h"

namespace dpserve {

Regex::Regex(const std::string& pattern, const std::string& context) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                    PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &err_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof(buf));
    throw_error("{}: bad regex at offset {}: {}", context, err_offset,
                reinterpret_cast<char*>(buf));
  }
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::for_each_match(std::string_view text,
                           const std::function<void(size_t, size_t)>& fn) const {
  auto* code = static_cast<pcre2_code*>(code_);
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
      pcre2_match_data_create_from_pattern(code, nullptr), &pcre2_match_data_free);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t offset = 0;
  while (offset <= text.size()) {
    const int rc = jit_ ? pcre2_jit_match(code, subject, text.size(), offset, 0, md.get(), nullptr)
                        : pcre2_match(code, subject, text.size(), offset, PCRE2_NO_UTF_CHECK,
                                      md.get(), nullptr);
    if (rc < 0) break;  // PCRE2_ERROR_NOMATCH (or a resource limit): no further matches
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    const size_t begin = ov[0], end = ov[1];
    if (end == begin) {
      // Empty match: step over one character.
      if (begin >= text.size()) break;
      offset = begin + 1;
      while (offset < text.size() && (static_cast<unsigned char>(text[offset]) & 0xC0) == 0x80) {
        ++offset;
      }
      continue;
    }
    fn(begin, end);
    offset = end;
  }
}

}  // namespace dpserve
