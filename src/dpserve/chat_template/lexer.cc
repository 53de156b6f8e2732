// Jinja lexer: text/tag splitting with -/+ whitespace control, trim_blocks, lstrip_blocks and raw.

#include "dpserve/chat_template/lexer.h"

#include <algorithm>
#include <cctype>

#include "dpserve/common/errors.h"

namespace dpserve::jinja {

namespace {

bool is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool is_name_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }

bool is_name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

class Lexer {
 public:
  Lexer(std::string source, const LexOptions& options) : src_(std::move(source)), opt_(options) {
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  std::vector<Token> run() {
    while (pos_ < src_.size()) {
      const size_t tag = find_tag(pos_);
      std::string text = src_.substr(pos_, tag - pos_);
      const size_t text_start = pos_;
      if (tag == src_.size()) {
        emit_text(std::move(text), text_start, false, false);
        pos_ = tag;
        break;
      }
      const char kind = src_[tag + 1];
      const char modifier = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
      const bool strip_before = modifier == '-';
      const bool lstrip = opt_.lstrip_blocks && kind != '{' && modifier != '+';
      emit_text(std::move(text), text_start, strip_before, lstrip);
      pos_ = tag + 2 + ((modifier == '-' || (modifier == '+' && kind != '{')) ? 1 : 0);
      if (kind == '#') {
        lex_comment(tag);
      } else {
        lex_tag(tag, kind == '{');
      }
    }
    tokens_.push_back(Token{TokenType::End, "", line_of(src_.size()), column_of(src_.size())});
    return std::move(tokens_);
  }

 private:
  int line_of(size_t pos) const {
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), pos);
    return static_cast<int>(it - line_starts_.begin());
  }

  int column_of(size_t pos) const {
    return static_cast<int>(pos - line_starts_[line_of(pos) - 1]) + 1;
  }

  [[noreturn]] void error_at(size_t pos, const std::string& what) const {
    throw_error("chat template syntax error at line {}, column {}: {}", line_of(pos),
                column_of(pos), what);
  }

  size_t find_tag(size_t from) const {
    for (size_t i = from; i + 1 < src_.size(); ++i) {
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) {
        return i;
      }
    }
    return src_.size();
  }

  // Emits text before a tag; handles `-` of the previous tag's end and of this tag's start.
  void emit_text(std::string text, size_t start, bool strip_right, bool lstrip_block) {
    size_t begin = 0;
    if (strip_next_) {
      while (begin < text.size() && is_ws(text[begin])) ++begin;
      strip_next_ = false;
    }
    text = text.substr(begin);
    start += begin;
    if (strip_right) {
      while (!text.empty() && is_ws(text.back())) text.pop_back();
    } else if (lstrip_block) {
      // Strip spaces/tabs between the line start and the tag.
      const size_t nl = text.rfind('\n');
      const bool at_line_start = nl != std::string::npos || start == 0 || src_[start - 1] == '\n';
      const size_t from = nl == std::string::npos ? 0 : nl + 1;
      if (at_line_start && text.find_first_not_of(" \t", from) == std::string::npos) {
        text.resize(from);
      }
    }
    if (!text.empty())
      tokens_.push_back(Token{TokenType::Text, text, line_of(start), column_of(start)});
  }

  // After a block/comment end: `-` strips the next text, trim_blocks drops one newline.
  void after_tag_end(char modifier, bool is_block) {
    if (modifier == '-') {
      strip_next_ = true;
    } else if (is_block && opt_.trim_blocks && modifier != '+' && pos_ < src_.size() &&
               src_[pos_] == '\n') {
      ++pos_;
    }
  }

  void lex_comment(size_t tag) {
    const size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) error_at(tag, "unclosed comment");
    const char modifier = end > pos_ ? src_[end - 1] : '\0';
    pos_ = end + 2;
    after_tag_end(modifier, true);
  }

  void lex_tag(size_t tag, bool is_var) {
    const size_t first_token = tokens_.size();
    tokens_.push_back(Token{is_var ? TokenType::VarBegin : TokenType::BlockBegin, "", line_of(tag),
                            column_of(tag)});
    int depth = 0;
    while (true) {
      while (pos_ < src_.size() && is_ws(src_[pos_])) ++pos_;
      if (pos_ >= src_.size()) error_at(tag, is_var ? "unclosed '{{'" : "unclosed '{%'");
      const char c = src_[pos_];
      // Tag end, possibly with a whitespace modifier.
      const char closer = is_var ? '}' : '%';
      char modifier = '\0';
      size_t p = pos_;
      if ((c == '-' || (c == '+' && !is_var)) && p + 1 < src_.size()) {
        modifier = c;
        ++p;
      }
      if (depth == 0 && p + 1 < src_.size() && src_[p] == closer && src_[p + 1] == '}') {
        tokens_.push_back(Token{is_var ? TokenType::VarEnd : TokenType::BlockEnd, "", line_of(pos_),
                                column_of(pos_)});
        pos_ = p + 2;
        after_tag_end(modifier, !is_var);
        break;
      }
      if (!is_var && c == '%' && pos_ + 1 < src_.size() && src_[pos_ + 1] == '}') {
        error_at(pos_, "unexpected '%}'");
      }
      lex_inner_token(depth);
    }
    // {% raw %}: everything up to {% endraw %} is text.
    if (!is_var && tokens_.size() - first_token == 3 &&
        tokens_[first_token + 1].type == TokenType::Name &&
        tokens_[first_token + 1].text == "raw") {
      tokens_.resize(first_token);
      lex_raw(tag);
    }
  }

  void lex_raw(size_t tag) {
    size_t search = pos_;
    while (true) {
      const size_t open = src_.find("{%", search);
      if (open == std::string::npos) error_at(tag, "missing {% endraw %}");
      size_t p = open + 2;
      const char mod = p < src_.size() ? src_[p] : '\0';
      if (mod == '-' || mod == '+') ++p;
      while (p < src_.size() && is_ws(src_[p])) ++p;
      if (src_.compare(p, 6, "endraw") != 0) {
        search = open + 2;
        continue;
      }
      p += 6;
      while (p < src_.size() && is_ws(src_[p])) ++p;
      char end_mod = '\0';
      if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) end_mod = src_[p++];
      if (src_.compare(p, 2, "%}") != 0) error_at(open, "malformed {% endraw %}");
      emit_text(src_.substr(pos_, open - pos_), pos_, mod == '-', opt_.lstrip_blocks && mod != '+');
      pos_ = p + 2;
      after_tag_end(end_mod, true);
      return;
    }
  }

  void lex_inner_token(int& depth) {
    const size_t start = pos_;
    const char c = src_[pos_];
    auto push = [&](TokenType t, std::string text) {
      tokens_.push_back(Token{t, std::move(text), line_of(start), column_of(start)});
    };
    if (is_name_start(c)) {
      while (pos_ < src_.size() && is_name_char(src_[pos_])) ++pos_;
      push(TokenType::Name, src_.substr(start, pos_ - start));
      return;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {
      lex_number(start);
      return;
    }
    if (c == '\'' || c == '"') {
      push(TokenType::String, lex_string(start));
      return;
    }
    static const char* const kTwo[] = {"//", "**", "==", "!=", "<=", ">="};
    for (const char* op : kTwo) {
      if (src_.compare(pos_, 2, op) == 0) {
        pos_ += 2;
        push(TokenType::Op, op);
        return;
      }
    }
    if (std::string_view("+-*/%~<>=.,:|()[]{}").find(c) != std::string_view::npos) {
      if (c == '(' || c == '[' || c == '{') ++depth;
      if (c == ')' || c == ']' || c == '}') --depth;
      ++pos_;
      push(TokenType::Op, std::string(1, c));
      return;
    }
    error_at(start, std::string("unexpected character '") + c + "'");
  }

  void lex_number(size_t start) {
    auto digits = [&] {
      while (pos_ < src_.size() &&
             (std::isdigit(static_cast<unsigned char>(src_[pos_])) || src_[pos_] == '_')) {
        ++pos_;
      }
    };
    digits();
    bool is_float = false;
    if (pos_ + 1 < src_.size() && src_[pos_] == '.' &&
        std::isdigit(static_cast<unsigned char>(src_[pos_ + 1]))) {
      is_float = true;
      ++pos_;
      digits();
    }
    if (pos_ < src_.size() && (src_[pos_] == 'e' || src_[pos_] == 'E')) {
      size_t p = pos_ + 1;
      if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) ++p;
      if (p < src_.size() && std::isdigit(static_cast<unsigned char>(src_[p]))) {
        is_float = true;
        pos_ = p;
        digits();
      }
    }
    std::string text;
    for (size_t i = start; i < pos_; ++i) {
      if (src_[i] != '_') text.push_back(src_[i]);
    }
    tokens_.push_back(Token{is_float ? TokenType::Float : TokenType::Int, text, line_of(start),
                            column_of(start)});
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out.push_back(static_cast<char>(0xc0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
      out.push_back(static_cast<char>(0xe0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else {
      out.push_back(static_cast<char>(0xf0 | (cp >> 18)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    }
  }

  // Reads a quoted literal with Python escapes (unknown escapes are kept as written).
  std::string lex_string(size_t start) {
    const char quote = src_[pos_++];
    std::string out;
    while (true) {
      if (pos_ >= src_.size()) error_at(start, "unterminated string literal");
      const char c = src_[pos_++];
      if (c == quote) break;
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (pos_ >= src_.size()) error_at(start, "unterminated string literal");
      const char e = src_[pos_++];
      switch (e) {
        case 'n':
          out.push_back('\n');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'v':
          out.push_back('\v');
          break;
        case 'a':
          out.push_back('\a');
          break;
        case '0':
          out.push_back('\0');
          break;
        case '\\':
          out.push_back('\\');
          break;
        case '\'':
          out.push_back('\'');
          break;
        case '"':
          out.push_back('"');
          break;
        case '\n':
          break;  // line continuation
        case 'x':
        case 'u':
        case 'U': {
          const size_t n = e == 'x' ? 2 : (e == 'u' ? 4 : 8);
          if (pos_ + n > src_.size())
            error_at(start, "truncated \\" + std::string(1, e) + " escape");
          uint32_t cp = 0;
          for (size_t k = 0; k < n; ++k) {
            const char h = src_[pos_ + k];
            if (!std::isxdigit(static_cast<unsigned char>(h))) {
              error_at(start, "malformed \\" + std::string(1, e) + " escape");
            }
            cp = cp * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h))
                                                     ? h - '0'
                                                     : std::tolower(h) - 'a' + 10);
          }
          pos_ += n;
          append_utf8(out, cp);
          break;
        }
        default:
          out.push_back('\\');
          out.push_back(e);
      }
    }
    return out;
  }

  std::string src_;
  LexOptions opt_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;
  size_t pos_ = 0;
  bool strip_next_ = false;  // the previous tag ended with `-`
};

// Jinja normalizes \r\n and \r to \n and drops one trailing newline unless asked to keep it.
std::string normalize(std::string_view source, bool keep_trailing_newline) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(source[i]);
    }
  }
  if (!keep_trailing_newline && !out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

std::vector<Token> tokenize(std::string_view source, const LexOptions& options) {
  return Lexer(normalize(source, options.keep_trailing_newline), options).run();
}

}  // namespace dpserve::jinja
