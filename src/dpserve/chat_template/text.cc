// Text helpers: UTF-8, Python-compatible whitespace and case mapping, repr, JSON quoting.

#include "dpserve/chat_template/text.h"

#include <charconv>
#include <cmath>
#include <cstdlib>

#include "dpserve/common/utf8.h"

namespace dpserve::jinja {

std::u32string utf8_decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    int len = 0;
    char32_t cp = 0;
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    } else if ((b0 & 0xe0) == 0xc0) {
      len = 2;
      cp = b0 & 0x1f;
    } else if ((b0 & 0xf0) == 0xe0) {
      len = 3;
      cp = b0 & 0x0f;
    } else if ((b0 & 0xf8) == 0xf0) {
      len = 4;
      cp = b0 & 0x07;
    }
    bool ok = len > 0 && i + len <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xc0) != 0x80) {
        ok = false;
      } else {
        cp = (cp << 6) | (b & 0x3f);
      }
    }
    // Reject overlong forms, surrogates and out-of-range values.
    if (ok && ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
               cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))) {
      ok = false;
    }
    if (ok) {
      out.push_back(cp);
      i += len;
    } else {
      out.push_back(0xdc00 + b0);
      ++i;
    }
  }
  return out;
}

std::string utf8_encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) {
    if (c >= 0xdc80 && c <= 0xdcff) {
      out.push_back(static_cast<char>(c - 0xdc00));  // an undecodable byte kept by utf8_decode
    } else {
      append_utf8(out, c);
    }
  }
  return out;
}

int64_t utf8_length(std::string_view s) {
  bool ascii = true;
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  }
  return ascii ? static_cast<int64_t>(s.size()) : static_cast<int64_t>(utf8_decode(s).size());
}

bool is_py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
         c == 0x205f || c == 0x3000;
}

namespace {

// Pairs of ranges where lower = upper + offset, one code point at a time.
struct CaseRange {
  char32_t upper_first, upper_last;
  int32_t offset;  // lower - upper
};

constexpr CaseRange kOffsetRanges[] = {
    {0x41, 0x5a, 32},   {0xc0, 0xd6, 32},     {0xd8, 0xde, 32},   {0x391, 0x3a1, 32},
    {0x3a3, 0x3ab, 32}, {0x388, 0x38a, 37},   {0x410, 0x42f, 32}, {0x400, 0x40f, 80},
    {0x531, 0x556, 48}, {0xff21, 0xff3a, 32}, {0x386, 0x386, 38}, {0x38c, 0x38c, 64},
    {0x38e, 0x38f, 63},
};

// Ranges of alternating pairs: even (or odd) code point upper, the next one lower.
struct PairRange {
  char32_t first, last;  // first is an upper-case letter
};

constexpr PairRange kPairRanges[] = {
    {0x100, 0x12f}, {0x132, 0x137}, {0x139, 0x148}, {0x14a, 0x177},
    {0x179, 0x17e}, {0x460, 0x481}, {0x48a, 0x4bf}, {0x4d0, 0x52f},
};

}  // namespace

char32_t to_lower_cp(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  for (const auto& r : kOffsetRanges) {
    if (c >= r.upper_first && c <= r.upper_last) return c + r.offset;
  }
  for (const auto& r : kPairRanges) {
    if (c >= r.first && c <= r.last && ((c - r.first) % 2 == 0)) return c + 1;
  }
  if (c == 0x178) return 0xff;
  return c;
}

char32_t to_upper_cp(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') ? c - 32 : c;
  if (c == 0x3c2) return 0x3a3;  // final sigma
  if (c == 0xff) return 0x178;
  if (c == 0xb5) return 0x39c;
  for (const auto& r : kOffsetRanges) {
    if (c >= r.upper_first + r.offset && c <= r.upper_last + r.offset) return c - r.offset;
  }
  for (const auto& r : kPairRanges) {
    if (c > r.first && c <= r.last && ((c - r.first) % 2 == 1)) return c - 1;
  }
  return c;
}

bool is_cased_cp(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
  return to_upper_cp(c) != c || to_lower_cp(c) != c || c == 0xdf;
}

namespace {

template <typename F>
std::string map_cps(std::string_view s, F f) {
  std::u32string cps = utf8_decode(s);
  for (auto& c : cps) c = f(c);
  return utf8_encode(cps);
}

}  // namespace

std::string py_upper(std::string_view s) { return map_cps(s, to_upper_cp); }

std::string py_lower(std::string_view s) { return map_cps(s, to_lower_cp); }

std::string py_title(std::string_view s) {
  std::u32string cps = utf8_decode(s);
  bool prev_cased = false;
  for (auto& c : cps) {
    c = prev_cased ? to_lower_cp(c) : to_upper_cp(c);
    prev_cased = is_cased_cp(c);
  }
  return utf8_encode(cps);
}

std::string py_capitalize(std::string_view s) {
  std::u32string cps = utf8_decode(s);
  for (size_t i = 0; i < cps.size(); ++i)
    cps[i] = i == 0 ? to_upper_cp(cps[i]) : to_lower_cp(cps[i]);
  return utf8_encode(cps);
}

std::string py_strip(std::string_view s, const std::string* chars, bool left, bool right) {
  std::u32string cps = utf8_decode(s);
  std::u32string set;
  if (chars) set = utf8_decode(*chars);
  auto strip_it = [&](char32_t c) {
    return chars ? set.find(c) != std::u32string::npos : is_py_space(c);
  };
  size_t b = 0, e = cps.size();
  if (left) {
    while (b < e && strip_it(cps[b])) ++b;
  }
  if (right) {
    while (e > b && strip_it(cps[e - 1])) --e;
  }
  return utf8_encode(std::u32string_view(cps).substr(b, e - b));
}

std::string py_float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  // sci looks like [-]D[.DDD]e[+-]XX
  std::string out;
  size_t i = 0;
  if (sci[0] == '-') {
    out.push_back('-');
    i = 1;
  }
  const size_t epos = sci.find('e');
  std::string digits;
  for (size_t k = i; k < epos; ++k) {
    if (sci[k] != '.') digits.push_back(sci[k]);
  }
  const int exp10 = std::atoi(sci.c_str() + epos + 1);
  const int decpt = exp10 + 1;  // position of the decimal point relative to the digits
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out += "0.";
      out.append(static_cast<size_t>(-decpt), '0');
      out += digits;
    } else if (static_cast<size_t>(decpt) >= digits.size()) {
      out += digits;
      out.append(decpt - digits.size(), '0');
      out += ".0";
    } else {
      out.append(digits, 0, decpt);
      out.push_back('.');
      out.append(digits, decpt, std::string::npos);
    }
  } else {
    out.push_back(digits[0]);
    if (digits.size() > 1) {
      out.push_back('.');
      out.append(digits, 1, std::string::npos);
    }
    char ebuf[16];
    std::snprintf(ebuf, sizeof(ebuf), "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    out += ebuf;
  }
  return out;
}

std::string py_string_repr(std::string_view s) {
  const bool has_single = s.find('\'') != std::string_view::npos;
  const bool has_double = s.find('"') != std::string_view::npos;
  const char q = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, q);
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (ch == q || ch == '\\') {
      out.push_back('\\');
      out.push_back(ch);
    } else if (ch == '\n') {
      out += "\\n";
    } else if (ch == '\r') {
      out += "\\r";
    } else if (ch == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out.push_back(ch);
    }
  }
  out.push_back(q);
  return out;
}

std::string json_quote(std::string_view s, bool ensure_ascii) {
  std::string out = "\"";
  auto hex4 = [&](unsigned v) {
    char buf[16];
    std::snprintf(buf, sizeof(buf), "\\u%04x", v & 0xffffu);
    out += buf;
  };
  auto escape_ascii = [&](char ch) {
    switch (ch) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(ch) < 0x20) {
          hex4(static_cast<unsigned char>(ch));
        } else {
          out.push_back(ch);
        }
    }
  };
  if (!ensure_ascii) {
    for (char ch : s) escape_ascii(ch);
  } else {
    for (char32_t c : utf8_decode(s)) {
      if (c < 0x80) {
        escape_ascii(static_cast<char>(c));
      } else if (c < 0x10000) {
        hex4(c);
      } else {
        const char32_t v = c - 0x10000;
        hex4(0xd800 + (v >> 10));
        hex4(0xdc00 + (v & 0x3ff));
      }
    }
  }
  out.push_back('"');
  return out;
}

}  // namespace dpserve::jinja
