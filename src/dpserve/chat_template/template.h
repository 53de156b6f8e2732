#pragma once
// A parsed Jinja template (the engine's entry point): parse once, render many times.

#include <string>
#include <string_view>

#include "dpserve/chat_template/ast.h"
#include "dpserve/chat_template/lexer.h"
#include "dpserve/chat_template/value.h"

namespace dpserve::jinja {

class Template {
 public:
  // Parses `source`; throws dpserve::Error naming the line on syntax errors or unsupported
  // constructs. Defaults match how transformers renders chat templates.
  explicit Template(std::string_view source, const LexOptions& options = LexOptions{});

  // Renders with `vars` (plus the default globals); safe to call concurrently.
  std::string render(const Dict& vars) const;

 private:
  Program program_;
};

}  // namespace dpserve::jinja
