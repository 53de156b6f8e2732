#pragma once
// Parses template tokens into a syntax tree; unsupported constructs are errors naming the line.

#include <vector>

#include "dpserve/chat_template/ast.h"
#include "dpserve/chat_template/lexer.h"

namespace dpserve::jinja {

// Parses `tokens` (from tokenize); throws dpserve::Error with line and column on bad syntax or an
// unsupported tag, filter or test.
Program parse(const std::vector<Token>& tokens);

}  // namespace dpserve::jinja
