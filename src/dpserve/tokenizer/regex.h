#pragma once
// A compiled PCRE2 regular expression (UTF + Unicode properties, JIT when available).

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace dpserve {

class Regex {
 public:
  // Compiles `pattern`; throws dpserve::Error starting with `context` if it does not compile.
  Regex(const std::string& pattern, const std::string& context);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls fn(begin, end) for each non-overlapping match in valid UTF-8 `text`, left to right.
  void for_each_match(std::string_view text, const std::function<void(size_t, size_t)>& fn) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;      // JIT compilation succeeded
};

}  // namespace dpserve
