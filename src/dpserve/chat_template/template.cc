// jinja::Template: parse once, render with fresh scopes per call.

#include "dpserve/chat_template/template.h"

#include <memory>

#include "dpserve/chat_template/interpreter.h"
#include "dpserve/chat_template/parser.h"

namespace dpserve::jinja {

Template::Template(std::string_view source, const LexOptions& options)
    : program_(parse(tokenize(source, options))) {}

std::string Template::render(const Dict& vars) const {
  auto globals = std::make_shared<Scope>();
  add_default_globals(*globals);
  for (const auto& [k, v] : vars.items()) globals->vars[k] = v;
  return render_program(program_, globals);
}

}  // namespace dpserve::jinja
