#pragma once
// Text helpers for the chat template engine: UTF-8 code points, Python-compatible whitespace,
// case mapping, float/string repr and JSON string escaping.

#include <cstdint>
#include <string>
#include <string_view>

namespace dpserve::jinja {

// Decodes UTF-8 into code points; an invalid byte b becomes U+DC00+b so encoding restores it.
std::u32string utf8_decode(std::string_view s);

// Encodes code points as UTF-8 (U+DC80..U+DCFF written back as the raw byte they stood for).
std::string utf8_encode(std::u32string_view s);

// Number of code points in a UTF-8 string (Python len()).
int64_t utf8_length(std::string_view s);

// True for the characters Python's str.isspace() accepts.
bool is_py_space(char32_t c);

// Upper/lower case of one code point (ASCII, Latin-1, Latin Extended-A, Greek, Cyrillic).
char32_t to_upper_cp(char32_t c);
char32_t to_lower_cp(char32_t c);

// True if the code point has case (used for str.title word boundaries).
bool is_cased_cp(char32_t c);

// Python str.upper()/lower()/title()/capitalize() over UTF-8.
std::string py_upper(std::string_view s);
std::string py_lower(std::string_view s);
std::string py_title(std::string_view s);
std::string py_capitalize(std::string_view s);

// Python str.strip/lstrip/rstrip: chars == nullptr strips whitespace, else any of `chars`.
std::string py_strip(std::string_view s, const std::string* chars, bool left, bool right);

// Python repr(float): shortest round-trip digits, ".0" on integral values, e+XX past 1e16.
std::string py_float_repr(double d);

// Python repr(str): single quotes unless the text has ' and no ".
std::string py_string_repr(std::string_view s);

// JSON string literal as Python json.dumps writes it (ensure_ascii escapes non-ASCII as \uXXXX).
std::string json_quote(std::string_view s, bool ensure_ascii);

}  // namespace dpserve::jinja
