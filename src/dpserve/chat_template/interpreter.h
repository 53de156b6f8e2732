#pragma once
// Evaluates a parsed template against variables, writing the rendered text.

#include <memory>
#include <string>
#include <unordered_map>

#include "dpserve/chat_template/ast.h"
#include "dpserve/chat_template/value.h"

namespace dpserve::jinja {

// A variable scope; lookups fall back to the parent.
struct Scope {
  std::shared_ptr<Scope> parent;                // enclosing scope, or null for the globals
  std::unordered_map<std::string, Value> vars;  // names defined here
  // The value bound to `name` here or in an enclosing scope, or nullptr.
  const Value* lookup(const std::string& name) const;
};

using ScopePtr = std::shared_ptr<Scope>;

// Jinja's default globals: range, namespace, dict, raise_exception.
void add_default_globals(Scope& scope);

// Renders `program` with `globals` as the outermost scope; throws dpserve::Error naming the
// template line and column on any failure.
std::string render_program(const Program& program, const ScopePtr& globals);

}  // namespace dpserve::jinja
