#pragma once
// Splits a Jinja template into text and tag tokens, applying whitespace control.

#include <string>
#include <string_view>
#include <vector>

namespace dpserve::jinja {

// Token types: template text, tag delimiters, and the tokens inside tags.
enum class TokenType {
  Text,
  VarBegin,
  VarEnd,
  BlockBegin,
  BlockEnd,
  Name,
  String,
  Int,
  Float,
  Op,
  End
};

// One token with its 1-based source position.
struct Token {
  TokenType type;
  std::string text;  // text, name, unescaped string literal, number spelling or operator
  int line = 1;      // 1-based line of the token start
  int column = 1;    // 1-based column (in bytes) of the token start
};

// Whitespace options as Jinja names them (transformers turns both block options on).
struct LexOptions {
  bool trim_blocks = true;    // drop the first newline after a block or comment tag
  bool lstrip_blocks = true;  // strip spaces/tabs before a block or comment tag on its line
  bool keep_trailing_newline = false;  // keep a single newline at the end of the template
};

// Tokenizes `source`; throws dpserve::Error naming the line on malformed input.
std::vector<Token> tokenize(std::string_view source, const LexOptions& options);

}  // namespace dpserve::jinja
